"""Write one file atomically, with the same refusals as every output of dipm.

Adapter folders have their own two-phase writer (`io/writer.py`); this is its counterpart for a
single file (`dipm explain --dot/--png`, and any other writer of one file): check the destination
first (`check_file_output`), then write into a hidden temporary file in the destination's folder
and rename it into place (`staged_file`), so a reader never sees half a file and a failure leaves
the previous file as it was. The rename is atomic because both names are in one folder.

Refused, as for adapters: an existing file without `force`; a folder, even with `force`; an input
(an adapter folder read by the program, or the script or recipe itself), or a path inside an input
folder; a dangling symbolic link; a folder that cannot be created or written. A link to an
existing file is followed (with `force`, the file it points to is replaced). Errors are `AdapterError`s naming the path
(exit code 1).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dipm_lang.errors import AdapterError


TEMP_MARK = ".dipm-tmp-"
"""In the name of a hidden file being written: `.NAME.dipm-tmp-PID-…` (removed or renamed at the end)."""


def check_file_output(path: str | Path, *, inputs: Sequence[str | Path] = (), force: bool = False) -> Path:
    """Check that the file `path` may be written; returns it resolved. Nothing is written."""
    given = Path(path).expanduser()
    if given.is_symlink() and not given.exists():  # writing through it would create a file elsewhere
        raise AdapterError("the output is a dangling symbolic link; refusing to write through it", given)
    dest = given.resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if dest == source:
            raise AdapterError("refusing to write over an input", dest)
        if source in dest.parents:
            raise AdapterError(f"refusing to write inside the input {source}", dest)
    if dest.is_dir():
        raise AdapterError("the output is a folder; refusing to replace it with a file", dest)
    if (dest.exists() or dest.is_symlink()) and not force:
        raise AdapterError("the output already exists (use --force to replace it)", dest)
    ancestor = dest.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdapterError(f"cannot create the output: {ancestor} is not a folder", dest)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise AdapterError(f"cannot create the output: {ancestor} is not writable", dest)
    return dest


@contextmanager
def staged_file(path: str | Path, *, inputs: Sequence[str | Path] = (), force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without an error, the file written
    there is flushed to disk and renamed onto `path`. On an error it is removed and `path` is untouched.

        with staged_file("plan.png", force=args.force) as temp:
            figure.savefig(temp, format="png")
    """
    dest = check_file_output(path, inputs=inputs, force=force)
    created = _make_parents(dest.parent)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{dest.name}{TEMP_MARK}{os.getpid()}-", dir=dest.parent)
        os.close(handle)
    except OSError as e:
        _remove_created(created)
        raise AdapterError(f"cannot write the output: {e.strerror or e}", dest) from None
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, _mode_for(dest))  # mkstemp makes the file private; outputs get the usual mode
        _fsync(temp)
        if dest.exists() and not force:  # it appeared while we were writing
            raise AdapterError("the output appeared while dipm was writing it (use --force to replace it)", dest)
        os.replace(temp, dest)
    except OSError as e:
        temp.unlink(missing_ok=True)
        _remove_created(created)
        raise AdapterError(f"cannot write the output: {e.strerror or e}", dest) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        _remove_created(created)
        raise


def write_file_atomically(path: str | Path, data: str | bytes, *, inputs: Sequence[str | Path] = (),
                          force: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `path` through `staged_file`; returns the resolved path."""
    with staged_file(path, inputs=inputs, force=force) as temp:
        temp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path).expanduser().resolve()


def _mode_for(dest: Path) -> int:
    """The mode a plain `open(dest, "w")` would give: the replaced file's, else 0o666 less the umask."""
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (os.umask can only
    swap it, which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _make_parents(parent: Path) -> list[Path]:
    """Create `parent` and its missing ancestors; return the ones created, outermost first."""
    missing = []
    folder = parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except OSError as e:
            raise AdapterError(f"cannot create the folder: {e.strerror or e}", folder) from None
    return list(reversed(missing))


def _remove_created(created: Sequence[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty
        except OSError:
            break
