"""`--sandbox DIR`: a restricted mode for scripts and configs written by others.

Under a sandbox a program may `load` and `save` only inside DIR and may `import` only files
inside DIR. Every path is compared *after* resolving symlinks (`os.path.realpath`), so a link
inside DIR that points elsewhere does not let a script out. The check runs twice:

- while lowering (`Lowerer`), on every literal `load` / `save` / `import` path and every input
  given from outside (`--set`, config `inputs`), so a violation is an exit-2 error pointing at
  the path in the source, before anything is read;
- while planning a run (`runtime.plan`), on the files actually opened inside each input folder
  (a folder inside DIR may hold a symlink to a file outside) and on each output again.

Adapters on the Hugging Face Hub (SPEC §7.5) are network sources outside any folder: a sandbox
refuses them (exit 2, where the id is written) unless `--allow-hub` is given, and then their
files are read from huggingface_hub's cache, wherever it is.

A sandbox bounds *where* a program reads and writes; it is not an OS-level jail (a concurrent
process that swaps a symlink between the check and the write is out of its scope).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dipm_lang.errors import SandboxError, Span, UsageError
from dipm_lang.safety.files import path_problem


@dataclass(frozen=True)
class Sandbox:
    """The folder a program is confined to (already resolved, so `root` contains no symlink)."""

    root: str
    allow_hub: bool = False  # --allow-hub: adapters may come from the Hugging Face Hub

    @classmethod
    def at(cls, directory: str | os.PathLike[str], *, allow_hub: bool = False) -> "Sandbox":
        """A sandbox at `directory`, which must exist and be a folder."""
        problem = path_problem(os.fspath(directory))
        if problem:
            raise UsageError(f"--sandbox: {problem}")
        root = os.path.realpath(os.path.expanduser(os.fspath(directory)))
        if not os.path.isdir(root):
            raise UsageError(f"--sandbox {directory}: not an existing folder")
        return cls(root, allow_hub)

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path`, with every symlink resolved, is `root` or lies under it."""
        real = os.path.realpath(os.fspath(path))
        return os.path.commonpath([self.root, real]) == self.root

    def check(self, path: str | os.PathLike[str], what: str, span: Span | None = None, *,
              written: str | None = None) -> None:
        """Raise `SandboxError` (exit 2) unless `path` is inside the sandbox.

        `what` says how the path is used ("load", "save", "import", "input 'H'"); `written` is the
        path as the user wrote it, when that differs from `path` (relative, or through a link).
        """
        if self.contains(path):
            return
        real = os.path.realpath(os.fspath(path))
        shown = written if written is not None else os.fspath(path)
        via = f" (it resolves to {real})" if shown != real else ""
        raise SandboxError(f"{what}: {shown} is outside the sandbox {self.root}{via}", span,
                           hint="under --sandbox, load, save and import stay inside the sandbox folder")

    def check_hub(self, source: str, what: str, span: Span | None = None, *, written: str | None = None) -> None:
        """Raise `SandboxError` (exit 2) for the Hub adapter `source` unless `allow_hub`."""
        if self.allow_hub:
            return
        shown = written if written is not None and written != source else source
        via = f" (read as {source})" if shown != source else ""
        raise SandboxError(f"{what}: {shown} is an adapter on the Hugging Face Hub{via}, a network source the "
                           f"sandbox {self.root} refuses", span,
                           hint="--allow-hub lets a sandboxed program fetch Hub adapters (into huggingface_hub's "
                                "cache); or download it and load the folder")

    def check_files(self, folder: str | os.PathLike[str], names: tuple[str, ...], what: str,
                    span: Span | None = None) -> None:
        """Check `folder` and the files named `names` in it that exist (what a reader will open)."""
        self.check(folder, what, span)
        for name in names:
            path = Path(folder) / name
            if path.exists() or path.is_symlink():
                self.check(path, what, span)
