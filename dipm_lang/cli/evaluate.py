"""`dipm eval 'EXPR' --set A=PATH [-o OUT]`: one expression, from the command line.

With `-o OUT` the value is written as a PEFT adapter folder (as `save(EXPR, "OUT", rank=N)`
would); without, its summary is printed (type, modules, ranks, norms per layer).
Errors point at `<expr>:1:COLUMN` and show the expression with a caret.
"""

from __future__ import annotations

import argparse

from dipm_lang.cli.options import (add_set_option, energy_fraction, parse_sets, positive_int, sandbox_from,
                                   show_warnings, usable_path)
from dipm_lang.cli.run import add_run_options, execute_program, options_from
from dipm_lang.errors import DipmError, UsageError, printable
from dipm_lang.safety.files import absolute

FILE = "<expr>"


def register(sub, commands) -> None:
    p = sub.add_parser("eval", help="evaluate one expression; save it with -o or print its summary",
                       description="Evaluate one dipm expression over adapters given with --set NAME=PATH.")
    p.add_argument("expr", metavar="EXPR", help="a dipm expression, e.g. 'detox(H, T, t=0.3)'")
    add_set_option(p)
    p.add_argument("-o", "--output", metavar="OUT", type=usable_path, help="write the result as a PEFT adapter folder")
    p.add_argument("--rank", type=positive_int, metavar="N", help="truncate the written result to rank N (with -o)")
    p.add_argument("--energy", type=energy_fraction, metavar="E",
                   help="per module, keep the smallest rank holding the fraction E of its energy (with -o)")
    p.add_argument("--max-rank", type=positive_int, metavar="N", help="at most rank N in any module (with -o)")
    add_run_options(p)
    commands["eval"] = run


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DipmError as e:
        if e.span is not None and e.span.file == FILE:
            e.sources = {FILE: args.expr}  # the CLI shows the expression line under the message
        raise


def _run(args: argparse.Namespace) -> int:
    from dipm_lang.compiler import Expression, lower, optimize

    if args.rank is not None and args.rank < 1:
        raise UsageError(f"--rank {args.rank}: the rank must be at least 1")
    for flag, value in (("--rank", args.rank), ("--energy", args.energy), ("--max-rank", args.max_rank),
                        ("--target", args.target)):
        if value is not None and not args.output:
            raise UsageError(f"{flag} needs -o OUT (it shapes the written adapter)")
    if args.rank is not None and args.energy is not None:
        raise UsageError("give --rank or --energy, not both (--max-rank caps the ranks --energy keeps)")
    sets = parse_sets(args.sets)
    if not args.output:
        return _print_summary(args, sets)
    out = str(absolute(args.output))  # command-line paths: the working directory
    program = lower(Expression(args.expr, FILE, save_to=out, rank=args.rank, energy=args.energy,
                               max_rank=args.max_rank), sets, sandbox=sandbox_from(args))
    _check_sets_used(program, sets)
    program, _ = optimize(program, level=args.level)
    return execute_program(program, args)


def _print_summary(args: argparse.Namespace, sets: dict[str, str]) -> int:
    from dipm_lang.compiler import RESULT, Expression, lower, optimize
    from dipm_lang.run import execute, plan
    from dipm_lang.report.summary import summarize

    program = lower(Expression(args.expr, FILE), sets, sandbox=sandbox_from(args))
    _check_sets_used(program, sets)
    show_warnings(program)
    type_ = program.results[RESULT].type
    program, _ = optimize(program, level=args.level)
    options = options_from(args)
    the_plan = plan(program, options, check_outputs=False)
    if args.dry_run:
        print(f"dry run: {type_}; {len(the_plan.inputs)} inputs, {len(the_plan.modules)} modules checked")
        return 0
    result = execute(the_plan, options)
    print(printable(summarize(type_, result.results[RESULT])))
    return 0


def _check_sets_used(program, sets: dict[str, str]) -> None:
    unused = sorted(set(sets) - set(program.inputs))
    if unused:
        raise UsageError(f"--set {unused[0]}=…: the expression does not use '{unused[0]}'")
