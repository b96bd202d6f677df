"""Paths and text files as an attacker (or a typo) can hand them to dipm.

- `path_problem`: what the OS would reject in a path string — an embedded NUL (an escape in a dipm
  or YAML string), a name longer than the file system allows, `~user` for a user that does not
  exist — found before the path is used, so the error can point at where it was written.
- `read_text_file`: a script, an import, a recipe or a config, read only if it is a regular file
  (a FIFO would block forever, /dev/zero never ends, a folder is a typo) and never past a byte
  limit; a file swapped for something else between the check and the read is caught too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

NAME_MAX = 255     # bytes in one path component on the file systems dipm runs on (ext4, xfs, btrfs, APFS)
PATH_MAX = 4096    # bytes in a whole path (Linux)


class FileProblem(Exception):
    """A path or file dipm must not use; `str()` says why (callers add where it was written)."""


def path_problem(text: str) -> str | None:
    """Why the OS would reject `text` as a path, or None."""
    if "\x00" in text:
        return "the path contains a NUL character"
    if text.startswith("~") and not text.startswith("~/") and text != "~":
        user = text[1:].split("/", 1)[0]
        if os.path.expanduser(f"~{user}") == f"~{user}":
            return f"no user named {user!r} (in '~{user}')"
    try:
        encoded = os.fsencode(os.path.expanduser(text))
    except (UnicodeEncodeError, ValueError):
        return "the path cannot be encoded for this file system"
    if len(encoded) > PATH_MAX:
        return f"the path is {len(encoded)} bytes long; the system allows {PATH_MAX}"
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            shown = os.fsdecode(part)[:40]
            return f"the name '{shown}…' is {len(part)} bytes long; file names may have at most {NAME_MAX}"
    return None


def check_path(text: str) -> str:
    """`text` if it is a usable path, else FileProblem."""
    problem = path_problem(text)
    if problem:
        raise FileProblem(problem)
    return text


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (FileProblem otherwise).

    The type is checked before opening (opening a FIFO blocks) and again on the open handle (it may
    have been swapped in between); O_NONBLOCK keeps even that open from blocking.
    """
    check_path(str(path))
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise FileProblem(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(mode):
        raise FileProblem(f"this is {_kind(mode)}, not a file to read")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FileProblem(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem(f"this is {_kind(mode)}, not a file to read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem(f"the file is larger than {limit} bytes, the limit for this kind of file")
    return b"".join(chunks)


def absolute(path: str | Path) -> Path:
    """`path` made absolute with its folders resolved but its last component kept as written: an
    output path that is a symbolic link stays one, so the writer can refuse a dangling link instead
    of following it (Path.resolve would have replaced it by its target)."""
    full = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if full.parent == full:
        return full
    return full.parent.resolve() / full.name
