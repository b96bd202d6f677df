"""Options shared by the commands that compile: --set NAME=VALUE, -O, --sandbox DIR and --allow-hub."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from dipm_lang.errors import UsageError
from dipm_lang.safety.files import path_problem


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="bind an input adapter (NAME=PATH), or override a string/number binding")
    parser.add_argument("-O", dest="level", type=int, choices=(0, 1, 2), default=2,
                        help="optimisation level (default 2)")
    parser.add_argument("--sandbox", metavar="DIR", type=usable_path,
                        help="restricted mode for scripts from others: load, save and import only inside DIR "
                             "(symlinks resolved); Hugging Face Hub adapters are refused")
    add_allow_hub_option(parser)
    add_base_option(parser)


def add_allow_hub_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-hub", action="store_true",
                        help="with --sandbox: let the program load adapters from the Hugging Face Hub")


def add_base_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", metavar="DIR", type=usable_path,
                        help="the base model's folder (safetensors shards, as save_pretrained writes it): for DoRA "
                             "adapters, weights base() + x, bake and extract; overrides the script's base(\"DIR\")")


def base_from(args: argparse.Namespace) -> str | None:
    """--base DIR as an absolute path (relative to the working directory), confined to --sandbox."""
    given = getattr(args, "base", None)
    if not given:
        return None
    from dipm_lang.safety.files import absolute

    path = str(absolute(given))
    sandbox = sandbox_from(args)
    if sandbox is not None:
        from dipm_lang.frontend.lower import COMMAND_LINE

        sandbox.check(path, "--base", COMMAND_LINE, written=given)
    return path


def check_base(args: argparse.Namespace, program=None) -> None:
    """The base (`--base DIR`, else the program's own) where nothing is computed (check, explain):
    its config.json and index only, each file confined to --sandbox."""
    path = base_from(args) or (program.base if program is not None else None)
    if path is not None:
        from dipm_lang.io.base_model import check_base_folder
        from dipm_lang.run.weights import BASE_FILES

        sandbox = sandbox_from(args)
        if sandbox is not None:
            sandbox.check_files(path, BASE_FILES, "base")
        check_base_folder(path)


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (anything else is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r:.80}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str) -> float:
    """The number `text` spells (checked by the argparse types below), or argparse's usage error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r:.80}") from None


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (`nan`, `inf`, 0 and negatives are usage errors)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r:.80}")
    return value


def energy_fraction(text: str) -> float:
    """argparse type: a fraction 0 < e ≤ 1 (`--energy`, SPEC §7.6)."""
    value = _number(text)
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction with 0 < energy ≤ 1, got {text!r:.80}")
    return value


def non_negative_number(text: str) -> float:
    """argparse type: a finite number ≥ 0 (`--eval-gpus 0`)."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text!r:.80}")
    return value


def usable_path(text: str) -> str:
    """argparse type: a path the OS can use (no NUL, no name too long, no `~user` of nobody)."""
    problem = path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def show_warnings(program) -> None:
    """Print the program's warnings (allowed, probably not meant) to stderr, positioned like errors."""
    if program.warnings:
        from dipm_lang.errors import render_warnings

        print(render_warnings(program.warnings, program.sources), file=sys.stderr)


def sandbox_from(args: argparse.Namespace):
    """The `Sandbox` asked for with --sandbox DIR, or None."""
    from dipm_lang.safety.sandbox import Sandbox

    directory = getattr(args, "sandbox", None)
    if getattr(args, "allow_hub", False) and not directory:  # it would otherwise do nothing, silently
        raise UsageError("--allow-hub goes with --sandbox DIR (without a sandbox, Hub adapters are allowed)")
    return Sandbox.at(directory, allow_hub=getattr(args, "allow_hub", False)) if directory else None


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
