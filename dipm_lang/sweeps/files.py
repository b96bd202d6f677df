"""Atomic file replacement for the sweep's own files (table, CSV, manifest, plot).

Readers (a user's `watch cat sweep.json`, a notebook polling the CSV, a resumed run) must never
see half a file: every write goes through `io/atomic.py` (a hidden temporary sibling, fsynced,
renamed over the file), like every other file dipm writes. The sweep owns these files, so it
replaces them without asking for --force.
"""

from __future__ import annotations

from pathlib import Path

from dipm_lang.io.atomic import TEMP_MARK, write_file_atomically


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step; on any failure `path` is unchanged."""
    write_file_atomically(path, data, force=True)


def is_temp_name(name: str, of: str | None = None) -> bool:
    """Whether `name` is a temporary sibling an atomic write makes (of `of`, when given)."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return False
    return of is None or name.startswith(f".{of}{TEMP_MARK}")
