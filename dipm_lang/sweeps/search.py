"""`--search optuna --trials N`: Optuna's TPE sampler, ask-and-tell, the study kept in DIR.

Each round asks up to `batch` trials (`--jobs`; TPE's constant liar keeps a batch from piling
onto one spot), hands their points to the compute step in one call, waits for their
evaluations, and tells Optuna the objective metric (a failed point is a FAIL trial). Continuous
axes (`t=0:1`) are `FloatDistribution`s; listed and stepped axes are categorical, so every value
is exactly one the grid syntax would give (and names its folder the same way).

**Storage**: `DIR/optuna.journal`, Optuna's `JournalStorage` over a `JournalFileBackend`. Both it
and SQLite (`sqlite:///DIR/optuna.db`) need nothing beyond Optuna's own requirements (SQLAlchemy
and alembic come with Optuna either way); the journal is chosen because it is an append-only log
written one operation at a time under a file lock, so a run killed at any moment leaves a
readable study (at worst a RUNNING trial, which the next run finishes), it needs no schema
migrations across Optuna versions, and it works on network file systems where SQLite locking
does not.

**Reproducibility**: the sampler is re-created before every ask with a seed derived from
(`--seed`, number of trials so far). TPE keeps no other state than its random generator (the
history is in the storage), so a search interrupted and resumed asks exactly the trials an
uninterrupted one asks (for the same `--jobs`).

**Resuming**: finished trials are kept; RUNNING trials left by an interrupted run are finished
first (their point is computed unless already written, then evaluated) before new ones are asked.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from dipm_lang.errors import UsageError
from dipm_lang.sweeps.folder import JOURNAL_NAME
from dipm_lang.sweeps.grid import Axis
from dipm_lang.sweeps.points import Point
from dipm_lang.sweeps.sweep import Compute, Objective, Sweep
from dipm_lang.sweeps.table import metric_names, metric_value

STUDY_NAME = "dipm-sweep"


def describe_search(axes: Sequence[Axis], objective: Objective, eval_command: str) -> dict[str, Any]:
    """The manifest's record of a search: only the same search resumes in a folder."""
    return {"sampler": "optuna.TPESampler", "space": [axis.describe() for axis in axes],
            "metric": objective.metric, "direction": objective.direction, "eval": eval_command}


def search_space(axes: Sequence[Axis]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {axis.name: (FloatDistribution(axis.low, axis.high) if axis.continuous
                        else CategoricalDistribution(list(axis.values))) for axis in axes}


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError('--search optuna needs Optuna: pip install "dipm_lang[search]"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial on stderr
    return optuna


def open_study(sweep: Sweep, objective: Objective):
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep.folder.path / JOURNAL_NAME)))
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=objective.direction,
                               load_if_exists=True)


def sampler_seed(seed: int, asked: int) -> int:
    """The TPE seed for the ask after `asked` trials: a pure function, so resumes repeat it."""
    import numpy as np

    return int(np.random.SeedSequence([seed, asked]).generate_state(1)[0])


def run_search(sweep: Sweep, compute: Compute, *, trials: int, seed: int = 0, batch: int = 1) -> None:
    """Run the search until the study has `trials` finished trials (resumed ones included)."""
    if sweep.objective is None or sweep.eval_spec is None:
        raise UsageError("--search needs --eval and --maximize or --minimize (the metric to optimise)")
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    optuna = import_optuna()
    from optuna.trial import TrialState

    objective = sweep.objective
    sweep.start_executor()
    study = open_study(sweep, objective)
    space = search_space(sweep.axes)
    names = sweep.params
    finished_states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)

    past = study.get_trials(deepcopy=False)
    done = [t for t in past if t.state in finished_states]
    sweep.add_points([Point.of(t.params, names, t.number) for t in done], [t.number for t in done])
    sweep.restore([Point.of(t.params, names, t.number) for t in done])
    sweep.wait()
    if sweep.progress is not None:
        sweep.progress.grow(max(trials, len(done)))
    stale = [t for t in past if t.state == TrialState.RUNNING]

    while True:
        finished = len(study.get_trials(deepcopy=False, states=finished_states))
        if stale:
            asked, stale = [(t.number, t.params) for t in stale], []
        elif finished < trials:
            asked = []
            for _ in range(min(batch, trials - finished)):
                asked_so_far = len(study.get_trials(deepcopy=False))
                study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, asked_so_far))
                trial = study.ask(space)
                asked.append((trial.number, trial.params))
        else:
            break
        _run_batch(sweep, compute, study, asked, names)


def _run_batch(sweep: Sweep, compute: Compute, study, asked: list[tuple[int, dict]], names: list[str]) -> None:
    from optuna.trial import TrialState

    points = [Point.of(params, names, number) for number, params in asked]
    sweep.add_points(points, [number for number, _ in asked])
    unique = list(dict.fromkeys(points))
    fresh = [p for p in unique if sweep.row(p) is None]
    written = [p for p in fresh if sweep.is_written(p)]
    sweep.adopt(written)  # written by an interrupted run: evaluate only
    todo = [p for p in fresh if p not in set(written)]
    if todo:
        compute(todo, sweep)
    sweep.settle(todo)
    sweep.wait(unique)
    metric = sweep.objective.metric
    for (number, _), point in zip(asked, points):
        value = metric_value(sweep.row(point) or {}, metric)
        if value is None:
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, value)
    _check_metric(sweep, metric)


def _check_metric(sweep: Sweep, metric: str) -> None:
    """Stop early when evaluations succeed but never report the metric being optimised."""
    rows = sweep.rows()
    reported = metric_names(rows)
    if reported and metric not in reported:
        close = difflib.get_close_matches(metric, reported, n=1, cutoff=0.5)
        raise UsageError(f"the evaluations report no metric {metric!r}"
                         + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (they report: {', '.join(reported)})")
