"""SHA-256 of input files for provenance, computed once per file and in the background.

Every output records its inputs' hashes (SPEC §4), and hashing a 7B-sized adapter pair
(305 MiB at ~1.2 GB/s) costs about a quarter of a second of CPU. `dipm run` starts hashing
each input as soon as the compiled script names it (`prefetch`), before torch is imported:
that import is ~0.75 s of single-threaded start-up during which the second core would idle.
`open_adapter` then picks up the digest already under way for the same, unchanged file.

torch-free on purpose: the CLI imports this before torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from dipm_lang.errors import AdapterError
from dipm_lang.io.layout import weights_candidates

CHUNK_BYTES = 16 * 2**20
"""Bytes hashed per GIL release: hashlib and file reads drop the GIL for each call, and a
thread waiting to get it back can wait a switch interval (5 ms), so chunks must be large."""

Stamp = tuple[int, int, int]  # (size, mtime in ns, inode): a file that changed has another stamp


def stamp_of(stat: os.stat_result) -> Stamp:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def sha256_file(path: Path, chunk_size: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file, read in chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(chunk_size))
    try:
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(buffer[:count])
    except OSError as exc:
        raise AdapterError(f"cannot read: {exc}", path) from None
    return digest.hexdigest()


class FileDigest:
    """A file's SHA-256, computed exactly once: in a background thread after `start()` (or
    `start_all`), else by the first `value()` call."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._result: str | AdapterError | None = None

    def start(self) -> FileDigest:
        start_all([self])
        return self

    def value(self) -> str:
        if self._claim():
            self._compute()
        self._done.wait()
        if isinstance(self._result, AdapterError):
            raise self._result
        assert isinstance(self._result, str)
        return self._result

    def _claim(self) -> bool:
        """True for the one caller that is to compute the digest."""
        with self._lock:
            claimed, self._claimed = self._claimed, True
        return not claimed

    def _compute(self) -> None:
        try:
            self._result = sha256_file(self.path)
        except AdapterError as exc:
            self._result = exc
        finally:
            self._done.set()


def start_all(digests: list[FileDigest]) -> None:
    """Compute the digests not yet claimed one after another in ONE background thread: on a
    small machine a thread per file would compete with the work it is meant to hide behind."""
    claimed = [d for d in digests if d._claim()]
    if claimed:
        threading.Thread(target=lambda: [d._compute() for d in claimed], name="dipm-sha256", daemon=True).start()


_DIGESTS: dict[tuple[str, Stamp], FileDigest] = {}
_REGISTRY_LOCK = threading.Lock()


def file_digest(path: Path, stamp: Stamp) -> FileDigest:
    """The digest of `path` as it is now (`stamp`), shared by everyone who asks in this process."""
    key = (str(path), stamp)
    with _REGISTRY_LOCK:
        if key not in _DIGESTS:
            _DIGESTS[key] = FileDigest(path)
        return _DIGESTS[key]


def prefetch(folders: list[str]) -> None:
    """Start hashing the weights file of each adapter folder in the background.

    Anything unreadable is skipped silently: `open_adapter` reports it properly later. The
    file is named as `open_adapter` names it (resolved folder, file name as is), so that it
    finds the digest under way.
    """
    digests = []
    for folder in folders:
        try:
            resolved = Path(folder).expanduser().resolve()
            for name in weights_candidates(str(resolved)):
                if os.path.exists(name):
                    if os.path.isfile(name):
                        digests.append(file_digest(Path(name), stamp_of(os.stat(name))))
                    break
        except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
            continue
    start_all(digests)
