"""Text → optimized Program: the front half of the compiler in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dipm_lang.errors import DipmTypeError, Span, UsageError
from dipm_lang.frontend import ast
from dipm_lang.frontend.lower import Lowerer, Module, read_source
from dipm_lang.frontend.parser import parse_expression, parse_script
from dipm_lang.ir.node import Node, Program
from dipm_lang.passes.pipeline import PassReport, optimize
from dipm_lang.safety.sandbox import Sandbox


def lower_text(text: str, file: str = "<input>", external: Mapping[str, Any] | None = None, *,
               sandbox: Sandbox | None = None) -> Program:
    """Parse and type-check a script; the un-optimized program (paths confined to `sandbox`, if any)."""
    lowerer = Lowerer(external, sandbox=sandbox)
    return lowerer.lower_script(parse_script(text, file), text)


def compile_text(text: str, file: str = "<input>", external: Mapping[str, Any] | None = None, *,
                 level: int = 2, verify: bool = False, sandbox: Sandbox | None = None) -> tuple[Program, PassReport]:
    return optimize(lower_text(text, file, external, sandbox=sandbox), level=level, verify=verify)


def compile_file(path: str | Path, external: Mapping[str, Any] | None = None, *, level: int = 2,
                 verify: bool = False, sandbox: Sandbox | None = None) -> tuple[Program, PassReport]:
    path = Path(path)
    try:
        text = read_source(path)
    except OSError as e:
        from dipm_lang.errors import UsageError

        raise UsageError(f"{path}: cannot read the script: {e.strerror or e}") from None
    return compile_text(text, str(path), external, level=level, verify=verify, sandbox=sandbox)


# ---- single expressions (`dipm eval`, the Python API, configs) ---------------------------

RESULT = "value"
"""The name under which `lower_expression` records an expression's value in `Program.results`."""


def save_statement(expr: ast.Expr, path: str, rank: int | None = None, span: Span | None = None) -> ast.ExprStmt:
    """The statement `save(expr, "path", rank=N)`, built as AST so the path needs no quoting."""
    span = span or expr.span
    kwargs = ()
    if rank is not None:
        kwargs = (ast.Keyword("rank", ast.Number(float(rank), str(rank), span=span), span=span),)
    call = ast.Call("save", (expr, ast.String(path, span=span)), kwargs, span=span)
    return ast.ExprStmt(call, span=span)


def lower_expression(text: str, file: str = "<expr>", external: Mapping[str, Any] | None = None, *,
                     save_to: str | None = None, rank: int | None = None,
                     sandbox: Sandbox | None = None, require_used: bool = False) -> Program:
    """Parse one expression (the grammar's `expression` start symbol) and lower it.

    With `save_to` the program is `save(EXPR, save_to, rank=rank)`; without, the expression's
    value is the named result `RESULT` and must be an update (Delta, Dir) or magnitudes (Mag).
    Free names are taken from `external` (NAME -> absolute adapter path, `<memory:…>` key, or
    a number); with `require_used`, a name the expression never reads is an error.
    """
    expr = parse_expression(text, file)
    lowerer = Lowerer(external, sandbox=sandbox)
    lowerer.sources[file] = text
    module = Module(file, parent=lowerer.prelude)
    if save_to is not None:
        lowerer.lower_statement(save_statement(expr, save_to, rank), module)
        return lowerer.program(text)
    node = lowerer.lower_expr(expr, {}, module)
    unused = sorted(set(lowerer.external) - lowerer.used_external)
    if require_used and unused:
        raise UsageError(f"input '{unused[0]}' is not used by the expression")
    if node.type.kind not in ("Delta", "Dir", "Mag"):
        raise DipmTypeError(f"this expression is a {node.type}; expected an update (Delta, Dir) or "
                            "magnitudes (Mag)", expr.span)
    program = lowerer.program(text)
    program.results[RESULT] = node
    return program


def explain_text(program: Program, report: PassReport, *, relative_to: Path | None = None) -> str:
    """What `dipm explain` prints: node counts after each pass, the passes' notes, the plan."""
    from dipm_lang.ir.graph import print_program

    counts = f"nodes: {report.nodes_before} as written"
    for p in report.passes:
        counts += f" → {p['nodes']} after {p['name']}"
    lines = [counts, *(f"  {note}" for note in program.notes), "", print_program(program, relative_to=relative_to)]
    return "\n".join(lines)


def bind_inputs(program: Program, paths: Mapping[str, str | None]) -> Program:
    """A copy of `program` whose inputs named in `paths` load from there instead.

    Inputs are the program's named loads (`H = load(…)`, free names given from outside), so a
    compiled program can run again on other adapters without compiling again. Paths are used
    as given (absolute folders, or `<memory:…>` keys of in-memory inputs).
    """
    def rewrite(node: Node, args: tuple[Node, ...]) -> Node:
        if node.op == "load" and node.attr("name") in paths:
            attrs = {**dict(node.attrs), "path": paths[node.attr("name")]}
            return Node.make("load", (), attrs, node.type, unique=node.uid is not None)
        if all(a is b for a, b in zip(args, node.args)):
            return node
        return Node.make(node.op, args, dict(node.attrs), node.type, unique=node.uid is not None)

    return program.rebuild(rewrite)
