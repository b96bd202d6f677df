"""Options shared by the commands that compile: --set NAME=VALUE, -O and --sandbox DIR."""

from __future__ import annotations

import argparse
from typing import Any

from dipm_lang.errors import UsageError


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="bind an input adapter (NAME=PATH), or override a string/number binding")
    parser.add_argument("-O", dest="level", type=int, choices=(0, 1, 2), default=2,
                        help="optimisation level (default 2)")
    parser.add_argument("--sandbox", metavar="DIR",
                        help="restricted mode for scripts from others: load, save and import only inside DIR "
                             "(symlinks resolved)")


def sandbox_from(args: argparse.Namespace):
    """The `Sandbox` asked for with --sandbox DIR, or None."""
    from dipm_lang.safety.sandbox import Sandbox

    directory = getattr(args, "sandbox", None)
    return Sandbox.at(directory) if directory else None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs, as written: the lowering resolves adapter paths against the cwd, and keeps
    strings (e.g. `--set by=in`) as they are."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        if name in out:
            raise UsageError(f"--set {name} given twice")
        out[name] = value
    return out
