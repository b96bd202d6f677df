"""`dipm sweep RECIPE --grid NAME=… -o DIR …`: the flags, their checks, and the run.

The `dipm sweep` command (the lead's, next to `dipm run`) does three things:

    add_sweep_arguments(parser)               # with dipm run's --force, --progress, -q, …
    plan = plan_sweep(options_from(args), parameters=recipe_number_params)   # usage errors: exit 2
    return run_sweep(plan, compute, Fingerprint(recipe_hash, input_hashes, settings))

`plan_sweep` checks every flag and the grid before anything is computed; `run_sweep` opens the
folder (resume / --force rules), runs the grid or the search, prints the table and returns the
exit code (0, or 1 when some point failed).
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TextIO

from dipm_lang.errors import UsageError
from dipm_lang.sweep.executors import make_executor
from dipm_lang.sweep.folder import Fingerprint
from dipm_lang.sweep.grid import MAX_POINTS, Axis, count_points, parse_grid
from dipm_lang.sweep.progress import Progress
from dipm_lang.sweep.search import describe_search, run_search
from dipm_lang.sweep.sweep import Compute, EvalSpec, Objective, Sweep, SweepSummary
from dipm_lang.sweep.table import metric_names

EVAL_HELP = (
    "run CMD once per written point, with {adapter} replaced by the point's folder (shell-quoted); "
    "CMD runs under /bin/sh, so pipes and redirections work; its last stdout line must be a JSON "
    "object of numbers, e.g. {\"acc\": 0.91}; a failing CMD fails only its point")


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dipm sweep` beyond those it shares with `dipm run` (--force, --progress, -q)."""
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES", required=True,
                        help="a swept number: NAME=V1,V2,… or NAME=START:STOP:STEP (decimal steps, STOP "
                             "included when reached); NAME=LOW:HIGH for --search; repeat for a product, "
                             "the last --grid varying fastest")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="sweep folder: one adapter folder per point (NAME=VALUE,…), sweep.json, "
                             "sweep.csv, sweep.png; a re-run with the same recipe and inputs resumes")
    parser.add_argument("--eval", dest="eval_command", metavar="CMD", help=EVAL_HELP)
    parser.add_argument("--eval-timeout", type=_positive_float, metavar="S",
                        help="fail an evaluation still running after S seconds (its process group is ended)")
    best = parser.add_mutually_exclusive_group()
    best.add_argument("--maximize", metavar="METRIC", help="pick (and search for) the point with the largest METRIC")
    best.add_argument("--minimize", metavar="METRIC", help="pick (and search for) the point with the smallest METRIC")
    parser.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                        help="evaluations at once with the local executor, and points per search round (default 1)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where evaluations run: local processes, or Ray tasks (default local)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="an existing Ray cluster (as ray.init(address=…) takes it); default: start a local one")
    parser.add_argument("--eval-cpus", type=_non_negative_float, metavar="C",
                        help="CPUs per Ray evaluation (default 1)")
    parser.add_argument("--eval-gpus", type=_non_negative_float, metavar="G",
                        help="GPUs per Ray evaluation (default 0)")
    parser.add_argument("--search", choices=("optuna",),
                        help="sample points with Optuna's TPE instead of the whole grid (needs --eval, "
                             "--maximize/--minimize and --trials)")
    parser.add_argument("--trials", type=_positive_int, metavar="N",
                        help="trials of the search in all, earlier runs' included (a point asked again is "
                             "not recomputed)")
    parser.add_argument("--seed", type=int, metavar="S", help="the search's seed (default 0)")
    parser.add_argument("--max-points", type=_positive_int, default=MAX_POINTS, metavar="N",
                        help=f"refuse grids of more points (default {MAX_POINTS})")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not write sweep.png")


@dataclass(frozen=True)
class SweepOptions:
    """Everything `dipm sweep` was asked, as plain values (the API's way in, without argparse)."""

    grid: tuple[str, ...]
    output: str
    eval_command: str | None = None
    eval_timeout: float | None = None
    maximize: str | None = None
    minimize: str | None = None
    jobs: int = 1
    executor: str = "local"
    ray_address: str | None = None
    eval_cpus: float | None = None
    eval_gpus: float | None = None
    search: str | None = None
    trials: int | None = None
    seed: int | None = None
    max_points: int = MAX_POINTS
    force: bool = False
    progress: bool | None = None
    quiet: bool = False
    plot: bool = True


def options_from(args: argparse.Namespace) -> SweepOptions:
    return SweepOptions(
        grid=tuple(args.grid), output=args.output, eval_command=args.eval_command, eval_timeout=args.eval_timeout,
        maximize=args.maximize, minimize=args.minimize, jobs=args.jobs, executor=args.executor,
        ray_address=args.ray_address, eval_cpus=args.eval_cpus, eval_gpus=args.eval_gpus, search=args.search,
        trials=args.trials, seed=args.seed, max_points=args.max_points, force=getattr(args, "force", False),
        progress=getattr(args, "progress", None), quiet=getattr(args, "quiet", False),
        plot=getattr(args, "plot", True))


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: its axes, evaluation and objective; `points` counts a grid's points."""

    options: SweepOptions
    axes: list[Axis]
    eval: EvalSpec | None
    objective: Objective | None
    points: int = 0
    search: dict | None = field(default=None)


def plan_sweep(options: SweepOptions, parameters: Collection[str] | None = None) -> SweepPlan:
    """Check every flag and the grid (usage errors, exit 2) before anything is computed.

    `parameters` are the recipe's number parameters (what `--grid` may name); None skips that check.
    """
    o = options
    searching = o.search is not None
    if o.search not in (None, "optuna"):
        raise UsageError(f"unknown --search {o.search!r}; use optuna")
    metric = o.maximize or o.minimize
    if o.maximize and o.minimize:
        raise UsageError("give --maximize or --minimize, not both")
    if metric is not None and not o.eval_command:
        flag = "--maximize" if o.maximize else "--minimize"
        raise UsageError(f"{flag} {metric} needs --eval (the metrics come from it)")
    if o.eval_timeout is not None and not o.eval_command:
        raise UsageError("--eval-timeout needs --eval")
    if o.executor != "ray":
        for flag, value in (("--ray-address", o.ray_address), ("--eval-cpus", o.eval_cpus),
                            ("--eval-gpus", o.eval_gpus)):
            if value is not None:
                raise UsageError(f"{flag} needs --executor ray")
    elif not o.eval_command:
        raise UsageError("--executor ray runs evaluations; it needs --eval")
    if searching:
        if not o.eval_command or metric is None:
            raise UsageError("--search needs --eval CMD and --maximize or --minimize METRIC (what to optimise)")
        if o.trials is None:
            raise UsageError("--search needs --trials N (how many points to evaluate)")
    else:
        for flag, value in (("--trials", o.trials), ("--seed", o.seed)):
            if value is not None:
                raise UsageError(f"{flag} needs --search optuna")
    if o.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {o.jobs}")
    axes = parse_grid(list(o.grid), parameters=parameters, search=searching, max_points=o.max_points)
    eval_spec = EvalSpec(o.eval_command, o.eval_timeout) if o.eval_command else None
    objective = Objective(metric, maximize=bool(o.maximize)) if metric is not None else None
    search = describe_search(axes, objective, o.eval_command) if searching else None
    return SweepPlan(o, axes, eval_spec, objective, 0 if searching else count_points(axes), search)


def run_sweep(plan: SweepPlan, compute: Compute, fingerprint: Fingerprint, *, stdout: TextIO | None = None,
              stderr: TextIO | None = None) -> int:
    """Run a planned sweep to the end; print its table; return the exit code."""
    summary = execute(plan, compute, fingerprint, stderr=stderr)
    o = plan.options
    stdout = stdout or sys.stdout
    if not o.quiet:
        print(summary.text(_width(stdout)), file=stdout)
    if summary.missing_metric:
        reported = metric_names(summary.rows)
        close = difflib.get_close_matches(plan.objective.metric, reported, n=1, cutoff=0.5)
        raise UsageError(f"no point reports the metric {plan.objective.metric!r}"
                         + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (they report: {', '.join(reported)})")
    return summary.exit_code


def execute(plan: SweepPlan, compute: Compute, fingerprint: Fingerprint, *,
            stderr: TextIO | None = None) -> SweepSummary:
    """The sweep itself, without printing: open, run grid or search, finish."""
    o = plan.options
    stderr = stderr or sys.stderr
    total = o.trials if plan.search is not None else plan.points
    progress = Progress(total or 0, enabled=o.progress, stream=stderr)

    def executor():
        return make_executor(o.executor, jobs=o.jobs, ray_address=o.ray_address,
                             cpus=1.0 if o.eval_cpus is None else o.eval_cpus,
                             gpus=0.0 if o.eval_gpus is None else o.eval_gpus)

    with Sweep.open(o.output, fingerprint, plan.axes, eval_spec=plan.eval, objective=plan.objective,
                    search=plan.search, force=o.force, executor=executor, progress=progress) as sweep:
        if plan.search is not None:
            run_search(sweep, compute, trials=o.trials or 0, seed=o.seed or 0, batch=o.jobs)
        else:
            sweep.run_grid(compute)
        return sweep.finish(plot=o.plot)


def _width(stream: TextIO) -> int:
    if getattr(stream, "isatty", lambda: False)():
        return max(40, shutil.get_terminal_size((80, 24)).columns)
    return 80


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
