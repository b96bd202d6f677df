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
    for line in hub_inputs(program):
        print(printable(f"  {line}"))
    return 0


def hub_inputs(program) -> list[str]:
    """One line per input that is a Hugging Face Hub id: its revision, and whether huggingface_hub's
    cache holds it (read from the cache alone: `check` needs no network)."""
    from dipm_lang.io.hub_ref import is_hub_path

    found: dict[str, list[str]] = {}
    for node in program.nodes():
        if node.op == "load" and is_hub_path(node.attr("path")):
            names = found.setdefault(node.attr("path"), [])
            if node.attr("name") and node.attr("name") not in names:
                names.append(node.attr("name"))
    if not found:
        return []
    from dipm_lang.io.hub import describe
    from dipm_lang.io.hub_ref import parse_hub_uri

    lines = []
    for path, names in found.items():
        status = describe(parse_hub_uri(path))
        lines.append(f"{', '.join(names) + ': ' if names else ''}Hub input {status}")
    return lines
