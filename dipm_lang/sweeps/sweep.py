"""`Sweep`: the sweep folder as the compute step sees it, plus evaluations, table and best pick.

The compute step (the lead's compiled program, which computes every point in one pass over
modules) is a callable `compute(points, sink)`. For each point it either writes the adapter and
calls `sink.written(point)`, or calls `sink.failed(point, message)`. A point's folder must appear
whole: write it to `sink.path(point)` with an atomic writer (one save), or to the path
`sink.stage(point)` yields (any number of saves; renamed into place on success). With `--eval`,
`written` submits the point's evaluation at once, so evaluations overlap the computing of the
other points. Nothing here imports the compiler.

    with Sweep.open(dir, fingerprint, axes, eval_spec=EvalSpec("python ev.py {adapter}"),
                    objective=Objective("acc", maximize=True), force=False) as sweep:
        sweep.run_grid(compute)          # or search.run_search(sweep, compute, …)
        summary = sweep.finish()         # waits, marks the best, writes table and plot
    return summary.exit_code

Resuming: a point whose folder exists is done; it is neither recomputed nor overwritten. Its
previous row is kept when it still answers this run's question (its metrics came from the same
eval command); otherwise the point is (re-)evaluated: a point whose evaluation failed gets
another try on the next run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dipm_lang.errors import RuntimeDipmError, UsageError
from dipm_lang.sweeps.evaluate import PLACEHOLDER, EvalJob, EvalResult
from dipm_lang.sweeps.executors import Executor, LocalExecutor
from dipm_lang.sweeps.folder import PLOT_NAME, Fingerprint, SweepFolder, new_manifest
from dipm_lang.sweeps.grid import Axis, expand
from dipm_lang.sweeps.points import Point
from dipm_lang.sweeps.progress import Progress
from dipm_lang.sweeps.table import Row, make_row, mark_best, metric_names, pick_best, read_table, write_table


@dataclass(frozen=True)
class EvalSpec:
    """`--eval CMD` (with `{adapter}`) and `--eval-timeout S`."""

    command: str
    timeout: float | None = None

    def __post_init__(self) -> None:
        if PLACEHOLDER not in self.command:
            raise UsageError(f"--eval needs {PLACEHOLDER} in the command, where the point's folder goes "
                             f"(e.g. --eval \"python evaluate.py {PLACEHOLDER}\")")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--eval-timeout must be a positive number of seconds, got {self.timeout:g}")


@dataclass(frozen=True)
class Objective:
    """`--maximize METRIC` (maximize=True) or `--minimize METRIC`."""

    metric: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


class PointSink(Protocol):
    """What the compute step is given: where to write, and where to report each point.

    Write a point either straight to `path(point)` with an atomic writer (one save), or to the
    path `begin(point)` returns (any number of saves) followed by `commit(point)` — `stage(point)`
    is the same as a context manager. Then report it: `written(point)`, or `failed(point, msg)`
    (after `discard(point)` if it was begun). The sweep goes on past a failed point.
    """

    def path(self, point: Point) -> Path: ...
    def stage(self, point: Point) -> Any: ...
    def begin(self, point: Point) -> Path: ...
    def commit(self, point: Point) -> Path: ...
    def discard(self, point: Point) -> None: ...
    def written(self, point: Point) -> None: ...
    def failed(self, point: Point, message: str) -> None: ...


Compute = Callable[[Sequence[Point], PointSink], None]


@dataclass
class SweepSummary:
    """The finished sweep: rows in point order (best marked), and what to tell the user."""

    folder: Path
    rows: list[Row]
    params: list[str]
    objective: Objective | None
    best: int | None
    plot: Path | None
    kept: int = 0                      # points done by an earlier run and kept
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(row["status"] != "ok" for row in self.rows)

    @property
    def exit_code(self) -> int:
        """0 when every point is ok, 1 when some failed (SPEC §6: a runtime error)."""
        return 1 if self.failed else 0

    @property
    def missing_metric(self) -> bool:
        """An objective metric that no evaluated point reported (a typo in --maximize?)."""
        metrics = metric_names(self.rows)
        return self.objective is not None and bool(metrics) and self.objective.metric not in metrics

    def text(self, width: int = 80) -> str:
        from dipm_lang.sweeps.report import format_summary

        return format_summary(self, width)


class Sweep:
    """One open sweep folder; use `Sweep.open` (a context manager)."""

    def __init__(self, folder: SweepFolder, axes: Sequence[Axis], *, eval_spec: EvalSpec | None,
                 objective: Objective | None, executor: Callable[[], Executor], progress: Progress | None):
        self.folder = folder
        self.axes = list(axes)
        self.eval_spec = eval_spec
        self.objective = objective
        self._make_executor = executor
        self._executor: Executor | None = None
        self.progress = progress
        self._order: list[Point] = []
        self._known: set[Point] = set()
        self._rows: dict[Point, Row] = {}
        self._futures: dict[Point, Future[EvalResult]] = {}
        self._trials: dict[Point, int] = {}
        self._lock = threading.RLock()
        self._closing = False
        self._errors: list[BaseException] = []
        self._kept = 0
        resumed = folder.resumed
        self._previous = {row["path"]: row for row in read_table(folder.path)} if resumed else {}
        self._previous_eval = resumed.get("eval") if resumed else None

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, path: str | Path, fingerprint: Fingerprint, axes: Sequence[Axis], *,
             eval_spec: EvalSpec | None = None, objective: Objective | None = None,
             search: dict[str, Any] | None = None, force: bool = False,
             executor: Callable[[], Executor] | None = None, progress: Progress | None = None) -> Sweep:
        """Open (create, resume, or with `force` replace) the sweep folder `path`.

        `search` describes a search's space and objective (None: a grid sweep); it is recorded so
        that only the same search resumes. `executor` makes the evaluation executor the first
        time one is needed (default: one local process at a time).
        """
        mode = "search" if search is not None else "grid"
        manifest = new_manifest(fingerprint, mode, search, eval_spec.command if eval_spec else None)
        folder = SweepFolder.open(path, manifest, force=force)
        try:
            return cls(folder, axes, eval_spec=eval_spec, objective=objective,
                       executor=executor or (lambda: LocalExecutor(1)), progress=progress)
        except BaseException:
            folder.close()
            raise

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(cancel=kind is not None)

    def close(self, *, cancel: bool = False) -> None:
        """Release the executor and the folder lock; with `cancel`, end running evaluations (their
        points stay unevaluated and are evaluated on the next run)."""
        with self._lock:
            self._closing = cancel
        try:
            if self._executor is not None:
                self._executor.shutdown(cancel=cancel)
                self._executor = None
        finally:
            if self.progress is not None:
                self.progress.close()
            self.folder.close()

    # ------------------------------------------------------------------ points

    @property
    def params(self) -> list[str]:
        return [axis.name for axis in self.axes]

    def grid_points(self) -> list[Point]:
        return expand(self.axes)

    def add_points(self, points: Sequence[Point], trials: Sequence[int] | None = None) -> None:
        """Make `points` part of this run's table, in this order (a search adds them as it asks)."""
        with self._lock:
            for i, point in enumerate(points):
                if point not in self._known:
                    self._known.add(point)
                    self._order.append(point)
                    if trials is not None:
                        self._trials[point] = trials[i]

    def path(self, point: Point) -> Path:
        """Where point `point`'s folder goes (`DIR/NAME=VALUE,…`)."""
        return self.folder.point_path(point.name)

    @contextmanager
    def stage(self, point: Point) -> Iterator[Path]:
        """A not-yet-existing path to write the point to, renamed to `path(point)` when the block
        succeeds. (Then report it: `written(point)`.)"""
        with self.folder.stage(point.name) as target:
            yield target

    def begin(self, point: Point) -> Path:
        """`stage` in two calls, for a writer that keeps many points open during one pass:
        `begin` gives the path to write to, `commit` puts the point in place, `discard` drops it."""
        return self.folder.begin(point.name)

    def commit(self, point: Point) -> Path:
        return self.folder.commit(point.name)

    def discard(self, point: Point) -> None:
        self.folder.discard(point.name)

    def is_written(self, point: Point) -> bool:
        return self.path(point).is_dir()

    def row(self, point: Point) -> Row | None:
        with self._lock:
            return self._rows.get(point)

    # ------------------------------------------------------------------ the compute step reports

    def written(self, point: Point) -> None:
        """The point's folder is complete: evaluate it (with --eval), else it is done."""
        if not self.is_written(point):
            raise RuntimeDipmError(f"point {point.name} was reported written but {self.path(point)} is not there")
        self.add_points([point])
        if self.eval_spec is not None:
            self.evaluate(point)
        else:
            self._finish_point(point, make_row(point, trial=self._trials.get(point)))

    def failed(self, point: Point, message: str) -> None:
        """The compute step could not produce this point (recorded; the sweep goes on)."""
        self.add_points([point])
        self._finish_point(point, make_row(point, error=message, trial=self._trials.get(point)))

    def adopt(self, points: Sequence[Point]) -> None:
        """Points written by an earlier run: keep their rows where still valid, else evaluate."""
        self.add_points(points)
        for point in points:
            previous = self._previous.get(point.name)
            metrics = (previous or {}).get("metrics")
            trial = self._trials.get(point, (previous or {}).get("trial"))
            if self.eval_spec is None:
                row = make_row(point, metrics=metrics, trial=trial)
            elif metrics is not None and self._previous_eval == self.eval_spec.command:
                row = make_row(point, metrics=metrics, trial=trial)
            else:
                self.evaluate(point)
                continue
            self._kept += 1
            self._finish_point(point, row, write=False)
        with self._lock:
            self._write()  # rows of another eval command are gone from the table now
        if self.eval_spec is not None:
            self.folder.record_eval(self.eval_spec.command)

    def restore(self, points: Sequence[Point]) -> None:
        """Keep an earlier run's rows of these points as they were (a search's finished trials,
        whose outcome the study already holds)."""
        points = list(dict.fromkeys(points))
        self.add_points(points)
        for point in points:
            previous = self._previous.get(point.name)
            if previous is not None:
                self._kept += 1
                row = {key: value for key, value in previous.items() if key != "best"}
                self._finish_point(point, row, write=False)
            elif self.is_written(point):
                self.adopt([point])
            else:
                self.failed(point, "no record of this point survived an interrupted run")
        with self._lock:
            self._write()

    def settle(self, points: Sequence[Point]) -> None:
        """After the compute step returned: a point it neither reported nor wrote has failed; one
        it wrote without reporting counts as written."""
        for point in points:
            with self._lock:
                known = point in self._rows or point in self._futures
            if known:
                continue
            if self.is_written(point):
                self.written(point)
            else:
                self.failed(point, "the compute step did not write this point")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, point: Point) -> Future[EvalResult]:
        """Submit the point's evaluation. The returned future completes once the point's row is
        recorded (so waiting on it means the table is up to date)."""
        assert self.eval_spec is not None
        executor = self.start_executor()
        with self._lock:
            if point in self._futures and not self._futures[point].done():
                return self._futures[point]
            job = EvalJob(self.eval_spec.command, str(self.path(point)), point.values, self.eval_spec.timeout)
            recorded: Future[EvalResult] = Future()
            self._futures[point] = recorded
            running = executor.submit(job)
        running.add_done_callback(lambda done: self._evaluated(point, done, recorded))
        return recorded

    def start_executor(self) -> Executor:
        """The evaluation executor, started now if not yet (a sweep starts it before computing,
        so that e.g. an unreachable Ray cluster stops it before any work)."""
        with self._lock:
            if self._executor is None:
                self._executor = self._make_executor()
            return self._executor

    def _evaluated(self, point: Point, done: Future[EvalResult], recorded: Future[EvalResult]) -> None:
        try:
            result = done.result()
        except BaseException as exc:  # cancelled, or the executor itself failed on this job
            result = EvalResult(None, None, f"the evaluation could not run: {type(exc).__name__}: {exc}")
        try:
            trial = self._trials.get(point)
            if result.ok:
                row = make_row(point, metrics=result.metrics, trial=trial)
            else:
                row = make_row(point, eval_failure=result.failure(), trial=trial)
            self._finish_point(point, row)
        except BaseException as exc:  # e.g. the table could not be written: raised again by wait()
            with self._lock:
                self._errors.append(exc)
        finally:
            recorded.set_result(result)

    def wait(self, points: Sequence[Point] | None = None) -> None:
        """Wait until the evaluations of `points` (default: all) are recorded in the table."""
        with self._lock:
            futures = [f for p, f in self._futures.items() if points is None or p in points]
        wait(futures)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ rows, table, best

    def _finish_point(self, point: Point, row: Row, *, write: bool = True) -> None:
        with self._lock:
            if self._closing:
                return
            self._rows[point] = row
            if write:
                self._write()
        if self.progress is not None:
            self.progress.advance(point.name, row["status"] == "ok")

    def rows(self) -> list[Row]:
        """Finished points' rows in point order, best marked (with an objective)."""
        with self._lock:
            rows = [self._rows[p] for p in self._order if p in self._rows]
        if self.objective is None:
            return rows
        return mark_best(rows, pick_best(rows, self.objective.metric, self.objective.maximize))

    def best(self) -> Row | None:
        rows = self.rows()
        return next((row for row in rows if row.get("best")), None)

    def _write(self) -> None:
        write_table(self.folder.path, self.rows())

    def finish(self, *, plot: bool = True) -> SweepSummary:
        """Wait for every evaluation, then write the final table and (with metrics) the plot."""
        self.wait()
        rows = self.rows()
        with self._lock:
            write_table(self.folder.path, rows)
        best = next((i for i, row in enumerate(rows) if row.get("best")), None)
        summary = SweepSummary(self.folder.path, rows, self.params, self.objective, best, None, self._kept)
        stale = self._stale_points()
        if stale:
            summary.notes.append(f"{stale} point folder{'s' if stale > 1 else ''} of earlier runs, outside "
                                 "this grid, left in place")
        if plot and metric_names(rows) and any(row["status"] == "ok" for row in rows):
            from dipm_lang.sweeps.plot import write_plot

            summary.plot = write_plot(rows, self.params, self.folder.path / PLOT_NAME, force=True,
                                      objective=self.objective)
        return summary

    def _stale_points(self) -> int:
        from dipm_lang.sweeps.points import parse_point_name

        names = {p.name for p in self._order}
        return sum(1 for entry in self.folder.path.iterdir()
                   if entry.is_dir() and entry.name not in names and parse_point_name(entry.name) is not None)

    # ------------------------------------------------------------------ the grid

    def run_grid(self, compute: Compute) -> None:
        """Every grid point: those already written are adopted, the rest go to `compute` in one
        call (one pass over modules), each evaluated as soon as it is written."""
        points = self.grid_points()
        if self.eval_spec is not None:
            self.start_executor()
        self.add_points(points)
        done = [p for p in points if self.is_written(p)]
        self.adopt(done)
        todo = [p for p in points if p not in set(done)]
        if todo:
            compute(todo, self)
        self.settle(todo)
