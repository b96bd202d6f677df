"""`dipm explain FILE`: the optimized plan, node counts per pass, what was fused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dipm_lang.cli.options import add_set_option, parse_sets, sandbox_from
from dipm_lang.compiler import compile, explain_text, source_of
from dipm_lang.errors import RuntimeDipmError
from dipm_lang.ir.graph import to_dot


def register(sub, commands) -> None:
    p = sub.add_parser("explain", help="show the optimized plan and what each pass did")
    p.add_argument("file")
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="print node counts as JSON")
    p.add_argument("--dot", metavar="OUT.dot", help="write the optimized DAG as Graphviz DOT")
    p.add_argument("--png", metavar="OUT.png", help="draw the optimized DAG as a PNG")
    commands["explain"] = run


def run(args: argparse.Namespace) -> int:
    program, report = compile(source_of(args.file), parse_sets(args.sets), level=args.level, verify=True,
                              sandbox=sandbox_from(args))
    base = Path(args.file).resolve().parent
    if args.dot:
        _write(args.dot, to_dot(program, relative_to=base))
    if args.png:
        from dipm_lang.ir.draw import draw_png

        draw_png(program, args.png, relative_to=base)
    if args.json:
        print(json.dumps(report.as_json()))
        return 0
    print(explain_text(program, report, relative_to=base))
    return 0


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise RuntimeDipmError(f"{path}: cannot write: {e.strerror or e}") from None
