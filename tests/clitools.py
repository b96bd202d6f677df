"""Running the `dipm` command line — in this process or as the real program — and proving it left no trace.

`run_main` calls `dipm_lang.cli.main.main` here: the same parsing, commands, error rendering and
exit codes as the program, without a new interpreter (importing torch alone costs seconds of CPU
per process). `dipm` starts the real program in a subprocess, for what only a process shows:
signals, resource limits, the executable's own exit, start-up imports, and inputs that could hang
or exhaust the process reading them. The subprocess gets this checkout first on PYTHONPATH (an
installed copy of dipm_lang may be older); both run in a given working directory, so relative
paths in messages are short.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import traceback
import warnings
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


# What a plain `python` process shows on stderr (its default warning filters); anything else
# that warns during an in-process run is written to stderr as the program would print it.
_HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_main(*args: str, cwd: Path) -> Result:
    """`dipm ARGS` run in this process, in `cwd`: exit code, stdout and stderr.

    An exception escaping `main` (a bug the program would show as a traceback) comes back as
    exit code -1 with the traceback on stderr, so the caller's checks fail on it."""
    from dipm_lang.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own exits (--help, --version)
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            except Exception:
                code = -1
                err.write(traceback.format_exc())
    finally:
        os.chdir(previous)
    shown = [w for w in caught if not issubclass(w.category, _HIDDEN_BY_DEFAULT)]
    text = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in shown)
    return Result(code, out.getvalue(), text + err.getvalue())


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
