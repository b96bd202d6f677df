"""`dipm` — the command line (SPEC §6).

Exit codes: 0 success, 2 usage/syntax/type error, 1 runtime error. Errors are rendered
compiler-style; a Python traceback only with --debug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

from dipm_lang.errors import DipmError, UsageError, printable, render

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits with 2 already; keep our format
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from dipm_lang.cli import bake, check, evaluate, explain, run, sweep
    from dipm_lang.cli import inspect as inspect_cmd, repl

    parser = _Parser(prog="dipm", description="Compose LoRA adapters with directional parameter modulations.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"dipm_lang {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (check, explain, run, sweep, evaluate, bake, inspect_cmd, repl):
        module.register(sub, COMMANDS)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dipm_lang")
    except PackageNotFoundError:
        return "dev"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that staged outputs are removed on the way out."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    installed = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminate) if installed else None
    try:
        return _main(argv, debug)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str], debug: bool) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except DipmError as e:
        if debug:
            traceback.print_exc()
        print(render(e, getattr(e, "sources", None) or _sources_of(e)), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `dipm explain --json | head`: the reader left. Nothing more can be said on stdout, and
        # Python must not complain about the closed pipe at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, _Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # a bug: say so plainly, traceback on request
        if debug:
            traceback.print_exc()
        print(printable(f"dipm: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)"),
              file=sys.stderr)
        return 1


def _sources_of(error: DipmError) -> dict[str, str]:
    """Read the file an error points at, to show its line (best effort)."""
    span = error.span
    if span is None or span.file.startswith("<"):
        return {}
    try:
        from dipm_lang.frontend.lower import read_source
        from pathlib import Path

        return {span.file: read_source(Path(span.file))}
    except Exception:
        return {}


def entry() -> None:
    """The `dipm` program (console script and `python -m`): `main`, then exit without Python's
    interpreter teardown.

    Tearing down torch's thousands of module objects takes ~0.25 s, a fifth of a whole
    7B-sized transfer, and nothing needs it: by the time `main` returns, outputs are committed
    and fsynced and no thread of ours is running; stdout and stderr are flushed here. (The same
    exit Instagram uses to skip teardown: "Dismissing Python Garbage Collection at Instagram".)
    `main` itself returns normally, for callers in Python.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`dipm … | head`) or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
