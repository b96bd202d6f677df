"""The sweep folder `DIR`: its manifest, the resume / `--force` rules, a lock, point staging.

`DIR/sweep-manifest.json` records what the points were computed from: the recipe hash, the
input hashes, other settings that change an adapter (dtype, rank, …), the mode (grid or search)
and, for a search, its space, objective and eval command. Opening `DIR`:

- missing or empty: a new sweep;
- a manifest that matches: **resume** — point folders already there are done and are never
  recomputed or overwritten;
- anything else needs `--force`, and `--force` replaces only a folder that is recognisably a
  dipm sweep (a manifest, and nothing but the sweep's own files, point folders and its temporary
  files); anything else is refused with a list of what is there, because a mistyped `-o ~` must
  not delete a home folder.

A lock (`DIR/.sweep.lock`, `flock`) keeps two sweeps from writing one folder at once; holding
it, every leftover temporary file or staging folder in `DIR` is known stale and is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dipm_lang.errors import AdapterError
from dipm_lang.io.atomic import TEMP_MARK
from dipm_lang.sweeps.files import is_temp_name, write_atomic
from dipm_lang.sweeps.points import parse_point_name
from dipm_lang.sweeps.table import CSV_NAME, TABLE_NAME

MANIFEST_NAME = "sweep-manifest.json"
JOURNAL_NAME = "optuna.journal"
PLOT_NAME = "sweep.png"
LOCK_NAME = ".sweep.lock"
OWN_FILES = (TABLE_NAME, CSV_NAME, PLOT_NAME, MANIFEST_NAME, JOURNAL_NAME, LOCK_NAME)
STAGE_MARK = ".sweep-stage-"
TOOL = "dipm sweep"
FORMAT = 1
SHOWN_ENTRIES = 8  # entries of a refused folder named in the message


@dataclass(frozen=True)
class Fingerprint:
    """What a point's adapter depends on besides its parameter values. `settings` holds anything
    else that changes the written adapters (e.g. `{"out_dtype": "bfloat16", "rank": 16}`)."""

    recipe_hash: str
    input_hashes: Mapping[str, str]
    settings: Mapping[str, Any] = field(default_factory=dict)


def new_manifest(fingerprint: Fingerprint, mode: str, search: Mapping[str, Any] | None,
                 eval_command: str | None) -> dict[str, Any]:
    return {"tool": TOOL, "format": FORMAT, "recipe_hash": fingerprint.recipe_hash,
            "input_hashes": dict(fingerprint.input_hashes), "settings": dict(fingerprint.settings),
            "mode": mode, "search": dict(search) if search is not None else None, "eval": eval_command}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a dipm sweep folder, or None when `folder` has none (or another tool's)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == TOOL else None


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    write_atomic(folder / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a folder's manifest does not allow resuming, in words (empty: it does)."""
    reasons = []
    if old.get("format") != new.get("format"):
        reasons.append(f"it was written by another version of dipm sweep (format {old.get('format')})")
    if old.get("recipe_hash") != new.get("recipe_hash"):
        reasons.append("the recipe changed")
    old_inputs, new_inputs = old.get("input_hashes") or {}, new.get("input_hashes") or {}
    changed = sorted(k for k in set(old_inputs) | set(new_inputs) if old_inputs.get(k) != new_inputs.get(k))
    if changed:
        reasons.append(f"input{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed")
    if (old.get("settings") or {}) != (new.get("settings") or {}):
        keys = sorted(k for k in set(old.get("settings") or {}) | set(new.get("settings") or {})
                      if (old.get("settings") or {}).get(k) != (new.get("settings") or {}).get(k))
        reasons.append(f"settings changed ({', '.join(keys)})")
    if old.get("mode") != new.get("mode"):
        reasons.append(f"it holds a {old.get('mode')} sweep, this is a {new.get('mode')}")
    elif old.get("search") != new.get("search"):
        reasons.append("the search space, objective or eval command of the search changed")
    return reasons


class SweepFolder:
    """An opened, locked sweep folder. `resumed` is the previous manifest when resuming."""

    def __init__(self, path: Path, manifest: dict[str, Any], resumed: dict[str, Any] | None, lock: Any):
        self.path, self.manifest, self.resumed, self._lock = path, manifest, resumed, lock
        self._staging: dict[str, Path] = {}  # point name → its staging folder, while being written

    @classmethod
    def open(cls, path: str | Path, manifest: dict[str, Any], *, force: bool) -> SweepFolder:
        folder = Path(path).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise AdapterError("the sweep output exists and is not a folder", folder)
        if folder.is_dir() and read_manifest(folder) is None and _entries(folder):
            # Refuse before the lock file is made: a foreign folder is left exactly as it was.
            _check_replaceable(folder, None, manifest, _entries(folder), force)
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
        try:
            previous = read_manifest(folder)
            resumed = None
            others = [e for e in _entries(folder) if e != LOCK_NAME]
            if previous is not None and not differences(previous, manifest):
                resumed = previous
            elif others:
                _check_replaceable(folder, previous, manifest, others, force)
                _clear(folder, others)
            _remove_stale(folder)
            # The table's metrics came from the previous eval command: the manifest keeps naming it
            # until the table no longer holds them (`record_eval`).
            write_manifest(folder, {**manifest, "eval": resumed.get("eval") if resumed else manifest.get("eval")})
        except BaseException:
            _unlock(lock)
            raise
        return cls(folder, manifest, resumed, lock)

    def record_eval(self, command: str) -> None:
        """Name `command` as the source of the table's metrics (once its rows no longer hold any
        other command's)."""
        current = read_manifest(self.path) or self.manifest
        if current.get("eval") != command:
            write_manifest(self.path, {**current, "eval": command})

    def close(self) -> None:
        for name in list(self._staging):
            self.discard(name)
        _unlock(self._lock)
        self._lock = None

    def point_path(self, name: str) -> Path:
        return self.path / name

    def begin(self, name: str) -> Path:
        """A path to write point `name` to, inside a hidden staging folder of `DIR`; it does not
        exist yet: write the point's single adapter there, or make it a folder of several.
        `commit` renames it to `DIR/name` in one step; `discard` throws it away."""
        destination = self.point_path(name)
        if destination.exists():
            raise AdapterError("this point is already written; a sweep never overwrites a point", destination)
        if name in self._staging:
            raise AdapterError("this point is already being written", destination)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}{STAGE_MARK}", dir=self.path))
        self._staging[name] = staging
        return staging / name

    def commit(self, name: str) -> Path:
        destination = self.point_path(name)
        staging = self._staging.get(name)
        if staging is None:
            raise AdapterError("commit of a point that was not begun", destination)
        try:
            if not (staging / name).is_dir():
                raise AdapterError("the compute step wrote nothing for this point", destination)
            os.rename(staging / name, destination)
        finally:
            self.discard(name)
        return destination

    def discard(self, name: str) -> None:
        staging = self._staging.pop(name, None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[Path]:
        """`begin`, then `commit` when the block succeeds (`discard` when it raises)."""
        target = self.begin(name)
        try:
            yield target
        except BaseException:
            self.discard(name)
            raise
        self.commit(name)


def is_sweep_entry(name: str) -> bool:
    """Whether a folder entry is something a dipm sweep writes: its own files, a point folder,
    or one of their temporary or staging names."""
    if name in OWN_FILES or parse_point_name(name) is not None:
        return True
    if any(is_temp_name(name, of) for of in OWN_FILES):
        return True
    if name.startswith(".") and (STAGE_MARK in name or TEMP_MARK in name or ".dipm-old-" in name):
        return parse_point_name(name[1:].split(STAGE_MARK)[0].split(".dipm-")[0]) is not None
    return False


def _check_replaceable(folder: Path, previous: dict[str, Any] | None, manifest: dict[str, Any],
                       entries: list[str], force: bool) -> None:
    foreign = [e for e in entries if not is_sweep_entry(e)]
    if previous is None or foreign:
        listing = _listing(foreign or entries)
        what = "is not a dipm sweep folder" if previous is None else "holds files that are not part of a dipm sweep"
        raise AdapterError(f"the sweep output {what} (it holds {listing}); refusing to "
                           f"{'replace' if force else 'use'} it", folder,
                           hint="choose another -o folder, or empty this one yourself")
    if not force:
        reasons = "; ".join(differences(previous, manifest))
        raise AdapterError(f"the sweep output holds another sweep ({reasons}); use --force to replace it, "
                           "or another -o folder", folder)


def _clear(folder: Path, entries: list[str]) -> None:
    for name in entries:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _remove_stale(folder: Path) -> None:
    """Temporary files and staging folders of runs that ended without cleaning up (we hold the
    lock, so no live run owns them)."""
    for name in _entries(folder):
        if name.startswith(".") and name != LOCK_NAME and is_sweep_entry(name) and ".dipm-old-" not in name:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_ENTRIES])
    return shown + (f" and {len(names) - SHOWN_ENTRIES} more" if len(names) > SHOWN_ENTRIES else "")


def _lock(folder: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind; two sweeps in one folder are on the user
        return None
    handle = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise AdapterError("another dipm sweep is writing to this folder", folder) from None
    return handle


def _unlock(handle: Any) -> None:
    if handle is not None:
        handle.close()  # closing the file releases the flock
