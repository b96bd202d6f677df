"""Deterministic parallelism on the CPU: across module batches, never inside a reduction.

Why: MKL's GEMM and LAPACK's QR/SVD split a long reduction (over a module's n or m features)
among their threads, so the order of the additions — and the last bits of Gram matrices, unit
norms, QR factors and SVDs — depends on the intra-op thread count. Measured with torch 2.13 +
MKL: `A @ A.mT` for `A` 16×2000, and `qr` of 2000×48, differ between 1 and 2 threads, and so did
`dipm run` outputs (mix, orth, rank=N). Computing in float64 and rounding would only make a
differing bit rarer, not impossible.

The fix: every kernel runs with ONE intra-op thread, so each reduction has a fixed order that
depends on the shapes alone; the parallelism comes instead from running the (already fixed-size,
see `runtime.split_batches`) module batches side by side on `threads` worker threads — torch
releases the GIL inside its kernels. Modules never interact, batches are cut the same way for
any thread count, and results are merged in batch order, so the outputs are byte-identical
with 1 thread or 16 (and whatever OMP_NUM_THREADS says).

CUDA runs keep the executor's plain loop: the GPU parallelises inside kernels, and its
reductions are deterministic for a given device and library version.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from dipm_lang.backend.executor import ExecutionResult, Executor

_LOCK = threading.RLock()  # torch's thread setting is process-wide: one deterministic run sets it at a time


def default_threads() -> int:
    """Worker threads when none are asked for: torch's intra-op count (cores, or OMP_NUM_THREADS)."""
    return max(1, torch.get_num_threads())


@contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """Run torch's CPU kernels with one intra-op thread (a fixed reduction order), then restore."""
    with _LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def run_batches(executor: Executor, batches: Sequence[list[str]], *, threads: int | None = None,
                on_batch: Callable[[int], None] | None = None,
                on_part: Callable[[ExecutionResult], None] | None = None) -> ExecutionResult:
    """Run `executor` over `batches` on the CPU with results independent of `threads`.

    Each batch is one `executor.run([batch])`; results are merged in batch order (so even the
    reported truncation errors, which are sums over batches, add up in the same order).
    `on_part(result)` sees each batch's result in batch order (to write it out and drop it)
    and `on_batch(done)` reports progress, both from the calling thread.
    """
    threads = default_threads() if threads is None else max(1, int(threads))

    def one(batch: list[str]) -> ExecutionResult:
        with torch.inference_mode():  # thread-local: each worker enters it
            return executor.run([batch])

    report, executor.on_group = executor.on_group, None  # progress is counted here, across workers
    parts: list[ExecutionResult] = []
    try:
        with single_threaded_kernels():
            if threads == 1 or len(batches) <= 1:
                for batch in batches:
                    parts.append(one(batch))
                    _done(parts, on_part, on_batch)
            else:
                workers = min(threads, len(batches))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dipm-batch") as pool:
                    # A bounded window of batches in flight: when writing the outputs is slower than
                    # computing them (a sweep writes many outputs per batch), batches computed far
                    # ahead would pile up in memory until the writer caught up.
                    ahead = workers + 1
                    pending = deque(pool.submit(one, batch) for batch in batches[:ahead])
                    following = iter(batches[ahead:])
                    try:
                        while pending:  # in batch order: the first failing batch is the one reported
                            parts.append(pending.popleft().result())
                            for batch in itertools.islice(following, 1):
                                pending.append(pool.submit(one, batch))
                            _done(parts, on_part, on_batch)
                    except BaseException:
                        for future in pending:
                            future.cancel()
                        raise
    finally:
        executor.on_group = report
    return _merge(executor, parts)


def _done(parts: list[ExecutionResult], on_part: Callable[[ExecutionResult], None] | None,
          on_batch: Callable[[int], None] | None) -> None:
    if on_part:
        on_part(parts[-1])
    if on_batch:
        on_batch(len(parts))


def _merge(executor: Executor, parts: Sequence[ExecutionResult]) -> ExecutionResult:
    if not parts:
        return executor.run([])
    saves, results = parts[0].saves, parts[0].results
    for part in parts[1:]:
        for save, more in zip(saves, part.saves):
            save.modules.update(more.modules)
            save.dropped_sq += more.dropped_sq
            save.total_sq += more.total_sq
            save.errors.update(more.errors)
        for key, values in part.results.items():
            results[key].update(values)
    return ExecutionResult(saves, results)
