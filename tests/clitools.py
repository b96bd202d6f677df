"""Running the real `dipm` command line in a subprocess, and proving it left no trace.

The subprocess gets this checkout first on PYTHONPATH (an installed copy of dipm_lang may be
older), and runs in a temporary working directory, so relative paths in messages are short.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def first(self) -> str:
        return self.err.splitlines()[0] if self.err else ""


def cli_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dipm_lang.cli.main", *args]


def dipm(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None,
         preexec_fn: Callable[[], Any] | None = None) -> Result:
    """Run `dipm ARGS` in `cwd`; its exit code, stdout and stderr."""
    done = subprocess.run(command(*args), cwd=cwd, capture_output=True, timeout=timeout, env=env or cli_env(),
                          preexec_fn=preexec_fn)
    return Result(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root`, hidden ones included: relative path -> content hash ('dir', 'link:…')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:  # a FIFO or a device: never read it
            out[rel] = "special"
    return out


def hidden_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
