"""`dipm repl`: an interactive session (prompt_toolkit), or a plain line reader when piped.

On a terminal: history across sessions (~/.dipm_history, or $DIPM_HISTORY, or --history),
Tab completion of operators, stdlib functions, bound names, `:commands` and paths, syntax
highlighting with the dipm Pygments lexer, and multi-line input while brackets are open.
When stdin is not a terminal the same inputs are read line by line and print the same output
(without prompts); the exit status is then 0, or the code of the last error (1 or 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dipm_lang.cli.options import add_allow_hub_option, add_base_option, usable_path
from dipm_lang.run.options import DTYPE_NAMES

if TYPE_CHECKING:  # the session imports torch; `dipm --help` and other commands should not wait for it
    from dipm_lang.repl.session import Session

BANNER = "dipm_lang {version} — :help for commands, Tab completes, :quit or Ctrl-D leaves"
PROMPT = "dipm> "
CONTINUATION = "  ... "


def register(sub, commands) -> None:
    p = sub.add_parser("repl", help="an interactive session: bind adapters, evaluate expressions, inspect")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=PATH",
                   help="bind NAME to an adapter folder (or a Hugging Face Hub id) before the first prompt")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="compute dtype (default float32)")
    p.add_argument("--history", metavar="FILE", type=usable_path,
                   help="history file (default: $DIPM_HISTORY, else ~/.dipm_history)")
    p.add_argument("--plain", action="store_true", help="read plain lines even on a terminal")
    p.add_argument("--sandbox", metavar="DIR", type=usable_path,
                   help="restricted mode: load, :load, :inspect, save, :save and import only inside DIR "
                        "(symlinks resolved); Hugging Face Hub adapters are refused")
    add_allow_hub_option(p)
    add_base_option(p)
    commands["repl"] = run


def run(args: argparse.Namespace) -> int:
    from dipm_lang.repl.session import Session
    from dipm_lang.run import RunOptions, resolve_device

    from dipm_lang.cli.options import base_from, sandbox_from

    options = RunOptions(device=args.device, dtype=args.dtype, progress=False, sandbox=sandbox_from(args),
                         base=base_from(args))
    resolve_device(options.device)  # a bad --device is a usage error now, not at the first expression
    session = Session(options)
    for item in args.sets:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier():
            from dipm_lang.errors import UsageError

            raise UsageError(f"--set expects NAME=PATH, got {item!r}")
        session.handle(f":load {name} {path}")
    interactive = not args.plain and sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        try:
            import prompt_toolkit  # noqa: F401
        except ImportError:
            print("(prompt_toolkit is not installed: plain input; pip install prompt_toolkit)", file=sys.stderr)
            interactive = False
    if interactive:
        return _interactive(session, history_file(args.history))
    return _plain(session)


def history_file(given: str | None = None) -> Path:
    return Path(given or os.environ.get("DIPM_HISTORY") or "~/.dipm_history").expanduser()


def _plain(session: Session) -> int:
    """Lines from stdin; an input continues while brackets are open."""
    from dipm_lang.repl.session import open_brackets

    pending: list[str] = []
    for line in sys.stdin:
        pending.append(line)
        text = "".join(pending)
        if open_brackets(text):
            continue
        pending.clear()
        if not session.handle(text):
            return session.last_exit_code if session.errors else 0
        sys.stdout.flush()
    if pending:
        session.handle("".join(pending))  # unbalanced at the end: report the open bracket
    return session.last_exit_code if session.errors else 0


def _interactive(session: Session, history: Path) -> int:
    from prompt_toolkit import PromptSession

    from dipm_lang.repl.session import open_brackets
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.lexers import PygmentsLexer

    from dipm_lang.version import __version__
    from dipm_lang.repl.highlight import DipmLexer

    class _Completer(Completer):
        def get_completions(self, document, complete_event):
            for text, start, meta in session.completions(document.text_before_cursor):
                yield Completion(text, start_position=start, display_meta=meta)

    class _History(FileHistory):
        """A history file that never stops the session when it cannot be written."""

        def store_string(self, string: str) -> None:
            try:
                super().store_string(string)
            except OSError:
                pass

        def load_history_strings(self):
            try:
                yield from super().load_history_strings()
            except OSError:
                return

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if state is not None and state.current_completion is not None:
            buffer.apply_completion(state.current_completion)
        elif open_brackets(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    prompt = PromptSession(
        message=PROMPT,
        history=_History(str(history)),
        completer=_Completer(),
        complete_while_typing=False,
        lexer=PygmentsLexer(DipmLexer),
        multiline=True,
        key_bindings=keys,
        prompt_continuation=lambda width, line_number, wrapped: CONTINUATION.rjust(width),
        auto_suggest=AutoSuggestFromHistory(),
    )
    print(BANNER.format(version=__version__))
    while True:
        try:
            text = prompt.prompt()
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the input
            continue
        except EOFError:  # Ctrl-D
            break
        try:
            if not session.handle(text):
                break
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
    return 0
