"""`dipm explain FILE`: the optimized plan, node counts per pass, what was fused — as text, JSON,
Graphviz DOT or a PNG picture.

`--dot` and `--png` are outputs like any other: they never replace an existing file without
`--force`, never write over an input (an adapter folder the program reads, or the script itself),
and are written to a temporary file in the same folder, then renamed into place (`io/atomic.py`).
Plain `dipm explain` imports neither torch nor matplotlib; only `--png` needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dipm_lang.cli.options import add_set_option, check_base, parse_sets, sandbox_from
from dipm_lang.compiler import compile, explain_json, explain_text, source_of
from dipm_lang.errors import UsageError
from dipm_lang.io.atomic import check_file_output, staged_file, write_file_atomically
from dipm_lang.ir.node import Program
from dipm_lang.ops import OPERATORS

DESCRIPTION = """\
Show the optimized plan of a script or recipe: the pipeline, node counts after each pass, what
the passes did, and one line per node (`%3 = shift %1, %2, %0 : Dir[out]`). Nothing is read or
written but the script itself (and the files asked for with --dot/--png)."""

EPILOG = """\
--png draws the plan: each output in its own frame (the nodes only it needs), the work several
outputs share in a grey band on top, inputs blue, outputs green, fused operations orange; edges
enter each box left to right in argument order and carry the parameter's name (d, e, t); numbers
are written on the edge they feed (t=0.3). --dot writes the same plan for Graphviz
(dot -Tsvg plan.dot -o plan.svg), constants as nodes of their own.

--json prints one object (format 1; new keys may be added, none change meaning):
  format        1
  file          the script or recipe explained
  level         the optimisation level (-O)
  pipeline      [{name, does, ran}]: every step of the compiler, whether explain ran it
  nodes_before  node count as written;  nodes_after: after the last pass
  passes        [{name, nodes, notes}]: node count after each pass that ran, and what it did
  notes         every pass note, as the text listing prints them
  nodes         [{id, op, type, attrs, operands, source, outputs, shared}] in listing order:
                id is the N of %N; operands are ids, in argument order; attrs maps each
                attribute to its JSON value; source is file:line:col or null; outputs lists
                the paths of the saves that need the node ("result NAME" for a named
                result); shared: more than one does
  inputs        {name: path} of the named inputs (absolute paths)
  outputs       [{path, rank, node}]: each save, in statement order (node: the save's id)
  results       {name: id} of named results (scripts have none)"""


def register(sub, commands) -> None:
    p = sub.add_parser("explain", help="show the optimized plan and what each pass did",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a script (.dipm) or a recipe (.yaml, .yml, .toml)")
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON (keys below)")
    p.add_argument("--dot", metavar="OUT.dot", help="write the plan as Graphviz DOT")
    p.add_argument("--png", metavar="OUT.png", help="draw the plan as a PNG picture")
    p.add_argument("--force", action="store_true", help="replace existing --dot/--png files")
    commands["explain"] = run


def run(args: argparse.Namespace) -> int:
    program, report = compile(source_of(args.file), parse_sets(args.sets), level=args.level, verify=True,
                              sandbox=sandbox_from(args))
    check_base(args, program)
    base = Path(args.file).resolve().parent
    files = [path for path in (args.dot, args.png) if path]
    if len(files) == 2 and Path(args.dot).resolve() == Path(args.png).resolve():
        raise UsageError("--dot and --png name the same file")
    inputs = _inputs(program, args.file)
    for path in files:  # every refusal before anything is written
        check_file_output(path, inputs=inputs, force=args.force)
    if args.dot:
        from dipm_lang.ir.graph import to_dot

        write_file_atomically(args.dot, to_dot(program, relative_to=base, operators=OPERATORS), inputs=inputs,
                              force=args.force)
        print(f"wrote {args.dot}", file=sys.stderr)
    if args.png:
        from dipm_lang.ir.draw import draw_png
        from dipm_lang.ir.view import plan_view

        view = plan_view(program, relative_to=base, operators=OPERATORS)
        with staged_file(args.png, inputs=inputs, force=args.force) as temp:
            width, height = draw_png(view, temp, title=args.file)
        print(f"wrote {args.png} ({width}×{height} px)", file=sys.stderr)
    if args.json:
        print(json.dumps(explain_json(program, report, level=args.level, file=args.file), indent=1))
        return 0
    print(explain_text(program, report, relative_to=base))
    return 0


def _inputs(program: Program, script: str) -> list[str]:
    """What --dot/--png must never replace: the adapter folders the program loads, the script and
    every file it imports."""
    paths = [script]
    paths += [name for name in program.sources if not name.startswith("<") and os.path.exists(name)]
    paths += [n.attr("path") for n in program.nodes() if n.op == "load" and n.attr("path")
              and not str(n.attr("path")).startswith("<")]
    return paths
