"""`dipm sweep RECIPE --grid NAME=… -o DIR`: the recipe for every point of a grid (or an Optuna
search), each point's adapter in `DIR/NAME=VALUE,…`, evaluated, tabled, plotted, the best picked
(SPEC §7.7). The flags and the sweep folder are `dipm_lang.sweeps`'; the compute step is the
API's (`api/sweeps.py`), shared with `dipm_lang.sweep`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dipm_lang.cli.options import (add_set_option, non_negative_number, parse_sets, positive_int, positive_number,
                                   sandbox_from, show_warnings, usable_path)
from dipm_lang.cli.run import add_compute_options, options_from as run_options_from
from dipm_lang.compiler import Template, source_of
from dipm_lang.errors import printable
from dipm_lang.sweeps import SweepOptions, expand, plan_sweep, run_sweep
from dipm_lang.sweeps.grid import MAX_POINTS

EXAMPLES = """\
examples:
  dipm sweep transfer.dipm --grid t=0:1:0.1 -o sweeps/t
  dipm sweep detox.dipm --grid t=0.2,0.4 --grid lam=0.5,1 -o sweeps/grid \\
      --eval "python examples/evaluate_adapter.py {adapter}" --maximize score
  dipm sweep transfer.dipm --grid t=0:1 --search optuna --trials 20 -o sweeps/search \\
      --eval "lm_eval --model hf --model_args pretrained=BASE,peft={adapter} --tasks arc_easy" --maximize acc

The swept names are the recipe's numbers: names it uses but never defines, or its own bindings
(t = 0.3), which each point overrides as --set does. Each point's adapter equals what
`dipm run RECIPE --set NAME=VALUE` writes; all points of a pass share one read of the inputs.
A re-run with the same recipe, inputs and settings resumes: written points are kept.
"""


def register(sub, commands) -> None:
    p = sub.add_parser("sweep", help="a recipe for every point of a grid or a search: adapters, evaluations, "
                                     "a table, a plot, the best point",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=usable_path, help="a .dipm script, or a YAML/TOML recipe")
    add_set_option(p)
    add_sweep_arguments(p)
    add_compute_options(p)
    p.add_argument("--force", action="store_true",
                   help="replace a sweep folder that holds another sweep (never a folder of other files)")
    p.add_argument("--dry-run", action="store_true", help="check the recipe, inputs and grid; list the points")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars over points and modules (default: when stderr is a terminal)")
    p.add_argument("-q", "--quiet", action="store_true", help="no table")
    commands["sweep"] = sweep


EVAL_HELP = (
    "run CMD once per written point, with {adapter} replaced by the point's folder (shell-quoted); "
    "CMD runs under /bin/sh, so pipes and redirections work; its last stdout line must be a JSON "
    "object of numbers, e.g. {\"acc\": 0.91}; a failing CMD fails only its point")


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say what to sweep and what to do with the points."""
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES", required=True,
                        help="a swept number: NAME=V1,V2,… or NAME=START:STOP:STEP (decimal steps, STOP "
                             "included when reached); NAME=LOW:HIGH for --search; repeat for a product, "
                             "the last --grid varying fastest")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="sweep folder: one adapter folder per point (NAME=VALUE,…), sweep.json, "
                             "sweep.csv, sweep.png; a re-run with the same recipe and inputs resumes")
    parser.add_argument("--eval", dest="eval_command", metavar="CMD", help=EVAL_HELP)
    parser.add_argument("--eval-timeout", type=positive_number, metavar="S",
                        help="fail an evaluation still running after S seconds (its process group is ended)")
    best = parser.add_mutually_exclusive_group()
    best.add_argument("--maximize", metavar="METRIC", help="pick (and search for) the point with the largest METRIC")
    best.add_argument("--minimize", metavar="METRIC", help="pick (and search for) the point with the smallest METRIC")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                        help="evaluations at once with the local executor, and points per search round (default 1)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where evaluations run: local processes, or Ray tasks (default local)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="an existing Ray cluster (as ray.init(address=…) takes it); default: start a local one")
    parser.add_argument("--eval-cpus", type=non_negative_number, metavar="C",
                        help="CPUs per Ray evaluation (default 1)")
    parser.add_argument("--eval-gpus", type=non_negative_number, metavar="G",
                        help="GPUs per Ray evaluation (default 0)")
    parser.add_argument("--search", choices=("optuna",),
                        help="sample points with Optuna's TPE instead of the whole grid (needs --eval, "
                             "--maximize/--minimize and --trials)")
    parser.add_argument("--trials", type=positive_int, metavar="N",
                        help="trials of the search in all, earlier runs' included (a point asked again is "
                             "not recomputed)")
    parser.add_argument("--seed", type=int, metavar="S", help="the search's seed (default 0)")
    parser.add_argument("--max-points", type=positive_int, default=MAX_POINTS, metavar="N",
                        help=f"refuse grids of more points (default {MAX_POINTS})")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not write sweep.png")


def options_from(args: argparse.Namespace) -> SweepOptions:
    return SweepOptions(
        grid=tuple(args.grid), output=args.output, eval_command=args.eval_command, eval_timeout=args.eval_timeout,
        maximize=args.maximize, minimize=args.minimize, jobs=args.jobs, executor=args.executor,
        ray_address=args.ray_address, eval_cpus=args.eval_cpus, eval_gpus=args.eval_gpus, search=args.search,
        trials=args.trials, seed=args.seed, max_points=args.max_points, force=getattr(args, "force", False),
        progress=getattr(args, "progress", None), quiet=getattr(args, "quiet", False),
        plot=getattr(args, "plot", True))


def sweep(args: argparse.Namespace) -> int:
    from dipm_lang.api.sweeps import PointCompute, first_point, output_layout, sweep_fingerprint
    from dipm_lang.frontend.lower import COMMAND_LINE

    sandbox = sandbox_from(args)
    sets = parse_sets(args.sets)
    template = Template(source_of(args.file), sets, level=args.level, sandbox=sandbox)
    output_layout(template)  # a recipe that saves nothing, or two saves one folder name: nothing to sweep
    plan = plan_sweep(options_from(args), parameters=template.numbers)
    if sandbox is not None:
        sandbox.check(args.output, "the sweep output", COMMAND_LINE)
    options = dataclasses.replace(run_options_from(args), force=False)  # points go to fresh staging folders
    first = first_point(plan.axes)
    show_warnings(template.bind(first).program)
    # checks every input before the sweep starts (a missing folder would fail every point)
    fingerprint = sweep_fingerprint(template, options, numbers=first, fixed=sets)
    if args.dry_run:
        what = f"{plan.options.trials} trials of an Optuna search" if plan.search else f"{plan.points} points"
        print(printable(f"dry run: {what} of {', '.join(a.name for a in plan.axes)} into {args.output}; "
                        f"{len(fingerprint.input_hashes)} inputs checked; nothing written"))
        if not plan.search:
            names = [point.name for point in expand(plan.axes)]
            shown = names if len(names) <= 12 else names[:10] + [f"… {len(names) - 11} more …", names[-1]]
            print(printable("  " + "\n  ".join(shown)))
        return 0
    shown: set = set()

    def warn_once(program) -> None:  # a point's numbers may draw a warning (t far outside [0, 1])
        fresh = [w for w in program.warnings if w not in shown]
        shown.update(fresh)
        if fresh:
            show_warnings(program.replace(warnings=fresh))

    shown.update(template.bind(first).program.warnings)
    compute = PointCompute(template, options, on_program=warn_once)
    return run_sweep(plan, compute, fingerprint, stdout=sys.stdout, stderr=sys.stderr)
