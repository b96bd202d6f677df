"""A small progress bar on stderr for long runs (only drawn on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, unit: str, *, enabled: bool, stream=None):
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.total_steps = 0
        self.total_items = 0
        self.done = 0
        self._started = 0.0
        self._last_draw = 0.0

    def start(self, steps: int, items: int) -> None:
        self.total_steps, self.total_items, self.done = steps, items, 0
        self._started = time.perf_counter()

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw > 0.1 or done == self.total_steps):
            self._last_draw = now
            width = 30
            filled = int(width * done / max(self.total_steps, 1))
            elapsed = now - self._started
            eta = elapsed / done * (self.total_steps - done) if done else 0.0
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total_steps} batches "
                              f"of {self.total_items} {self.unit}  {elapsed:5.1f}s (eta {eta:4.1f}s)")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.total_steps:
            self.stream.write("\n")
            self.stream.flush()
