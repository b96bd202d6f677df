"""The progress bar over points (tqdm), at most 79 columns wide so it never wraps on an 80-column
terminal (a line of exactly the terminal's width wraps on some terminals)."""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any, TextIO

MAX_WIDTH = 79
# points done, bar, time, then the last point (tqdm cuts the line at `ncols`, so the point's name,
# the only part of unbounded length, goes last, after the failure count)
BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining}{postfix}"


class Progress:
    """Points finished out of `total`; drawn on `stream` when `enabled` (default: a terminal)."""

    def __init__(self, total: int, *, done: int = 0, enabled: bool | None = None, stream: TextIO | None = None,
                 width: int | None = None, label: str = "sweep"):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        columns = width if width is not None else shutil.get_terminal_size((80, 24)).columns
        self._lock = threading.Lock()
        self._failed = 0
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with transformers and huggingface_hub; without it, no bar
                return
            self._bar = tqdm(total=total, initial=done, desc=label, unit="pt", file=self.stream,
                             ncols=max(20, min(MAX_WIDTH, columns - 1)), dynamic_ncols=False, leave=True,
                             mininterval=0.2, bar_format=BAR_FORMAT)

    def advance(self, point_name: str, ok: bool) -> None:
        if self._bar is None:
            return
        with self._lock:
            self._failed += not ok
            failed = f"{self._failed} failed, " if self._failed else ""
            self._bar.set_postfix_str(f"{failed}last {point_name}", refresh=False)
            self._bar.update(1)

    def grow(self, total: int) -> None:
        """A search learns its total as it goes (trials resumed); a grid knows it from the start."""
        if self._bar is not None:
            with self._lock:
                self._bar.total = total
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
