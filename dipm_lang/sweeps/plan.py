"""A sweep as asked (`SweepOptions`: `dipm sweep`'s flags, or `dipm_lang.sweep`'s arguments), checked
(`plan_sweep`) and run (`run_sweep`):

    plan = plan_sweep(options, parameters=recipe_numbers)   # usage errors: exit 2
    return run_sweep(plan, compute, Fingerprint(recipe_hash, input_hashes, settings))

`plan_sweep` checks every flag and the grid before anything is computed; `run_sweep` opens the
folder (resume / --force rules), runs the grid or the search, prints the table and returns the
exit code (0, or 1 when some point failed).
"""

from __future__ import annotations

import difflib
import shutil
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TextIO

from dipm_lang.errors import UsageError
from dipm_lang.sweeps.executors import make_executor
from dipm_lang.sweeps.folder import Fingerprint
from dipm_lang.sweeps.grid import MAX_POINTS, Axis, count_points, parse_grid
from dipm_lang.sweeps.progress import Progress
from dipm_lang.sweeps.search import describe_search, run_search
from dipm_lang.sweeps.sweep import Compute, EvalSpec, Objective, Sweep, SweepSummary
from dipm_lang.sweeps.table import metric_names


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
