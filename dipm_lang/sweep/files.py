"""Atomic file replacement for the sweep's own files (table, CSV, manifest, plot).

Readers (a user's `watch cat sweep.json`, a notebook polling the CSV, a resumed run) must never
see half a file: each write goes to a hidden temporary sibling (`.NAME.tmp-…`), is fsynced, and
is renamed over NAME (`os.replace`, atomic on POSIX and Windows within one folder).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_MARK = ".tmp-"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step; on any failure `path` is unchanged."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def is_temp_name(name: str, of: str | None = None) -> bool:
    """Whether `name` is a temporary sibling `write_atomic` makes (of `of`, when given)."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return False
    return of is None or name.startswith(f".{of}{TEMP_MARK}")
