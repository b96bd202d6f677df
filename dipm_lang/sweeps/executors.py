"""Where evaluations run: local processes (`--jobs N`) or Ray tasks (`--executor ray`).

Both hand back `concurrent.futures.Future[EvalResult]`, so the sweep submits an evaluation the
moment a point is written and collects results in whatever order they finish.

- `LocalExecutor`: a thread pool of `jobs` threads, each waiting on one evaluation process.
  Threads suffice because the work happens in the child processes; the pool only bounds how
  many run at once. On interruption the running process groups are ended.
- `RayExecutor`: each evaluation is one Ray task with `num_cpus` / `num_gpus` requests, on an
  existing cluster (`address`, as `ray.init(address=…)` takes it: `auto`, `ray://host:10001`, …)
  or on a local instance started here. Ray queues tasks until their resources are free and sets
  `CUDA_VISIBLE_DEVICES` for a task that asked for GPUs; the command inherits it. The adapter
  folders must be reachable at the same path on the worker nodes (a shared file system).
  The task function comes from `evaluate.py`, shipped by value, so the workers need the
  evaluator's environment but not dipm_lang.
"""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Protocol

from dipm_lang.errors import RuntimeDipmError, UsageError
import dipm_lang.sweeps.evaluate as evaluate
from dipm_lang.sweeps.evaluate import EvalJob, EvalResult, end_process_group, run_eval


class Executor(Protocol):
    description: str

    def submit(self, job: EvalJob) -> Future[EvalResult]: ...

    def shutdown(self, *, cancel: bool) -> None:
        """Release the workers; with `cancel`, drop queued jobs and end running ones."""


class LocalExecutor:
    """Up to `jobs` evaluations at once, as child processes of this one."""

    def __init__(self, jobs: int = 1):
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.description = f"local, {jobs} at a time"
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="dipm-eval")
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, job: EvalJob) -> Future[EvalResult]:
        return self._pool.submit(self._run, job)

    def _run(self, job: EvalJob) -> EvalResult:
        procs: list[subprocess.Popen] = []

        def started(proc: subprocess.Popen) -> None:
            procs.append(proc)
            with self._lock:
                self._running.add(proc)
                closing = self._closing
            if closing:  # shutdown came between Popen and here
                end_process_group(proc)

        try:
            return run_eval(job, started=started)
        finally:
            with self._lock:
                self._running.difference_update(procs)

    def shutdown(self, *, cancel: bool) -> None:
        if cancel:
            with self._lock:
                self._closing = True
                running = list(self._running)
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in running:
                end_process_group(proc)
        self._pool.shutdown(wait=True)


class RayExecutor:
    """Each evaluation a Ray task requesting `num_cpus` CPUs and `num_gpus` GPUs."""

    def __init__(self, address: str | None = None, *, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 init_kwargs: dict[str, Any] | None = None):
        try:
            import ray
            from ray import cloudpickle
        except ImportError:
            raise UsageError('--executor ray needs Ray: pip install "dipm_lang[ray]"') from None
        import logging

        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                          log_to_driver=False)
            kwargs.update(init_kwargs or {})
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise RuntimeDipmError(f"cannot connect to {where}: {exc}") from None
        # Ship evaluate.py by value: workers need not have dipm_lang installed.
        cloudpickle.register_pickle_by_value(evaluate)
        self._task = ray.remote(evaluate.run_eval_plain).options(num_cpus=num_cpus, num_gpus=num_gpus)
        where = address or "a local instance"
        self.description = f"Ray ({where}), {num_cpus:g} CPU and {num_gpus:g} GPU per evaluation"
        self._refs: dict[Any, Future[EvalResult]] = {}
        self._lock = threading.Lock()

    def submit(self, job: EvalJob) -> Future[EvalResult]:
        ref = self._task.remote(asdict(job))
        future: Future[EvalResult] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._refs[ref] = future
        ref.future().add_done_callback(lambda done: self._finished(ref, done))
        return future

    def _finished(self, ref: Any, done: Future) -> None:
        with self._lock:
            future = self._refs.pop(ref, None)
        if future is None or future.done():
            return
        try:
            result = evaluate.result_from_plain(done.result())
        except Exception as exc:  # a task the cluster could not run (worker died, cancelled)
            result = EvalResult(None, None, f"the Ray task failed: {type(exc).__name__}: {exc}"[:1000])
        future.set_result(result)

    def shutdown(self, *, cancel: bool) -> None:
        if cancel:
            with self._lock:
                pending = list(self._refs)
            for ref in pending:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass
        if self._owns:
            self._ray.shutdown()


def make_executor(kind: str, *, jobs: int = 1, ray_address: str | None = None, cpus: float = 1.0,
                  gpus: float = 0.0) -> Executor:
    """The executor `--executor KIND` names."""
    if kind == "local":
        return LocalExecutor(jobs)
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=cpus, num_gpus=gpus)
    raise UsageError(f"unknown --executor {kind!r}; use local or ray")
