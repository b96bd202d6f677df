"""`dipm bake ADAPTER|RECIPE --base DIR -o OUT`: W0 + ΔW as a model folder (SPEC §7.8).

An adapter folder is baked as `bake(load(ADAPTER), OUT)`; a recipe (script or YAML/TOML config)
with one `save` has that save's value baked instead of written as an adapter (a recipe may also
write `bake(x, "OUT")` itself and run with `dipm run`). The output has the base's layout — shards,
index, config, tokenizer and generation files — in the base's dtype unless `--out-dtype` is given,
and is written like every output: checked first, staged, renamed into place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dipm_lang.cli.options import add_set_option, parse_sets, sandbox_from, usable_path
from dipm_lang.cli.run import add_run_options, execute_program
from dipm_lang.errors import UsageError


def register(sub, commands) -> None:
    p = sub.add_parser("bake", help="write base + adapter (or a recipe's result) as a full model folder",
                       description="Bake an adapter, or the one save of a recipe, into the base model's weights: "
                                   "a model folder with the base's layout that transformers loads without PEFT.")
    p.add_argument("source", metavar="ADAPTER|RECIPE", type=usable_path,
                   help="an adapter folder, or a recipe (.dipm, .yaml, .toml) with one save")
    p.add_argument("-o", "--output", metavar="OUT", type=usable_path, required=True, help="the model folder to write")
    add_set_option(p)
    add_run_options(p)
    commands["bake"] = run


def run(args: argparse.Namespace) -> int:
    from dipm_lang.compiler import optimize
    from dipm_lang.safety.files import absolute

    if not args.base:
        raise UsageError("dipm bake needs the base model: --base DIR")
    out = str(absolute(args.output))
    sandbox = sandbox_from(args)
    if sandbox is not None:
        from dipm_lang.frontend.lower import COMMAND_LINE

        sandbox.check(out, "bake", COMMAND_LINE, written=args.output)
    program = _program(args, out)
    program, _ = optimize(program, level=args.level)
    return execute_program(program, args)


def _program(args: argparse.Namespace, out: str):
    from dipm_lang.compiler import lower, source_of
    from dipm_lang.frontend.recipes import is_config

    dtype = args.out_dtype or "base"
    source = Path(args.source)
    if is_config(source) or source.suffix == ".dipm" or source.is_file():
        program = lower(source_of(source), parse_sets(args.sets), sandbox=sandbox_from(args))
        return _bake_the_save(program, out, dtype, str(source))
    return _bake_adapter(args, out, dtype)


def _bake_adapter(args: argparse.Namespace, out: str, dtype: str):
    from dipm_lang.frontend import ast
    from dipm_lang.frontend.lower import COMMAND_LINE, Lowerer
    from dipm_lang.safety.files import absolute

    if args.sets:
        raise UsageError("--set: an adapter folder has no names to set; give a recipe to bake")
    folder = str(absolute(args.source))
    lowerer = Lowerer(sandbox=sandbox_from(args))
    module = lowerer.module("<command line>", "")
    load = ast.Call("load", (ast.String(folder, span=COMMAND_LINE),), (), span=COMMAND_LINE)
    call = ast.Call("bake", (load, ast.String(out, span=COMMAND_LINE)),
                    (ast.Keyword("dtype", ast.String(dtype, span=COMMAND_LINE), span=COMMAND_LINE),), span=COMMAND_LINE)
    lowerer.statement(ast.ExprStmt(call, span=COMMAND_LINE), module)
    return lowerer.program(f"bake(load({Path(folder).name!r}), {Path(out).name!r})")


def _bake_the_save(program, out: str, dtype: str, file: str):
    """The recipe with its one `save(x, …)` replaced by `bake(x, OUT)`."""
    from dipm_lang.ir.node import Node
    from dipm_lang.ir.types import UNIT
    from dipm_lang.ops.io import BAKE_DTYPES

    saves = [root for root in program.roots if root.op == "save"]
    if len(program.roots) != 1 or len(saves) != 1:
        raise UsageError(f"{file}: dipm bake bakes the one save of a recipe, and this one has "
                         f"{len(program.roots)} outputs", hint="write bake(x, \"OUT\") in the recipe and use dipm run")
    if dtype not in BAKE_DTYPES:
        raise UsageError(f"--out-dtype {dtype}: a baked model is written in {', '.join(BAKE_DTYPES[1:])} "
                         "(default: the base's)")

    def rewrite(node: Node, args: tuple[Node, ...]) -> Node:
        if node.op == "save":
            return Node.make("bake", args, {"path": out, "dtype": dtype}, UNIT, unique=True)
        if all(a is b for a, b in zip(args, node.args)):
            return node
        return Node.make(node.op, args, dict(node.attrs), node.type, unique=node.uid is not None)

    return program.rebuild(rewrite)
