"""`dipm check FILE`: parse and type-check; reads no tensors (with --base, the base's config and index)."""

from __future__ import annotations

import argparse

from dipm_lang.cli.options import add_set_option, check_base, parse_sets, sandbox_from, show_warnings, usable_path
from dipm_lang.compiler import compile, source_of
from dipm_lang.errors import printable


def register(sub, commands) -> None:
    p = sub.add_parser("check", help="parse and type-check a script (reads no tensors)")
    p.add_argument("file", type=usable_path)
    add_set_option(p)
    commands["check"] = run


def run(args: argparse.Namespace) -> int:
    program, _ = compile(source_of(args.file), parse_sets(args.sets), level=args.level, verify=True,
                         sandbox=sandbox_from(args))
    show_warnings(program)
    check_base(args, program)  # SPEC §7.8: `check` validates only the base's config and index
    saves = len(program.roots)
    inputs = len({(n.attr("name"), n.attr("path")) for n in program.nodes() if n.op == "load"})
    print(printable(f"{args.file}: OK ({saves} save{'s' if saves != 1 else ''}, "
          f"{inputs} input{'s' if inputs != 1 else ''})"))
    return 0
