"""Progress of a run on stderr, with tqdm (a well-kept library: it sizes the bar to the terminal,
throttles redraws and clears up after itself).

The bar counts modules (what users know their adapters by), advances batch by batch, and is at
most one column narrower than the terminal, so it never wraps — not even on an 80-column terminal
with hundreds of modules. It is drawn only when asked or when stderr is a terminal.
"""

from __future__ import annotations

import shutil
import sys
from itertools import accumulate
from typing import Any, Sequence


class Progress:
    """Batches done → modules done on a tqdm bar; `total_steps` is the number of batches."""

    def __init__(self, unit: str, *, enabled: bool, stream: Any = None, description: str = "dipm"):
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.description = description
        self.total_steps = 0
        self._done_items: list[int] = [0]
        self._bar: Any = None

    def start(self, batch_sizes: Sequence[int]) -> None:
        self.total_steps = len(batch_sizes)
        self._done_items = [0, *accumulate(batch_sizes)]
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self._done_items[-1], unit=f" {self.unit}", desc=self.description,
                             file=self.stream, ncols=self.width(), mininterval=0.1, leave=False,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} "
                                        "[{elapsed}<{remaining}]")

    def width(self) -> int:
        """The widest line that cannot wrap: one column less than the terminal (80 when unknown)."""
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def update(self, done_steps: int) -> None:
        """`done_steps` batches are done (counted in order)."""
        if self._bar is not None:
            self._bar.update(self._done_items[done_steps] - self._bar.n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
