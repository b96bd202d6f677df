"""A memory budget for the dense work of modules in flight (the `*_svd` baselines' m×n matrices).

Why: on the CPU, worker threads run module batches side by side (backend/parallel.py), one per
thread. A factored module needs kilobytes to megabytes; a `ties_svd` module needs its merged m×n
matrix — 180 MB at 11008×4096, 940 MB at 70B's 28672×8192, 4 GB for a 128k-vocabulary embedding —
so "as many modules as threads" is not a memory bound. Dense work asks the budget for its bytes
first (`hold`) and waits while other modules hold too much; a module larger than the whole budget
runs alone (it waits until nothing else is held), so nothing ever deadlocks and every module runs.
Which module waits for which changes only timing: results never depend on it.

The default budget is half of the memory the kernel reports available when first asked
(`MemAvailable`), at least `MIN_BYTES`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MIN_BYTES = 1 << 30
"""The smallest default budget (1 GiB), for machines that report little or nothing available."""


class ScratchBudget:
    """Bytes of dense scratch that the modules in flight may hold together."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.held = 0
        self.peak = 0  # the most held at once (for tests and benchmarks)
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` for the duration of the block; wait while they do not fit beside the others'."""
        nbytes = max(0, int(nbytes))
        with self._changed:
            while self.held and self.held + nbytes > self.limit:
                self._changed.wait()
            self.held += nbytes
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._changed:
                self.held -= nbytes
                self._changed.notify_all()


def available_memory() -> int:
    """Bytes the kernel reports available (`MemAvailable` of /proc/meminfo), or 0 if it does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


_lock = threading.Lock()
_budget: ScratchBudget | None = None


def budget() -> ScratchBudget:
    """The process-wide budget (made on first use: half of the available memory, ≥ MIN_BYTES)."""
    global _budget
    with _lock:
        if _budget is None:
            _budget = ScratchBudget(max(MIN_BYTES, available_memory() // 2))
        return _budget
