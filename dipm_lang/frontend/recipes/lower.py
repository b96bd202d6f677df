"""A checked recipe into ONE un-optimized program: every output a `save`, sharing one lowering, so
common subexpressions are computed once across outputs.

Errors in an embedded expression point into the config file itself: each expression's characters
are mapped back to their offsets in the file, and every span of the parsed expression is moved
there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dipm_lang.errors import DipmError, Span, UsageError, did_you_mean
from dipm_lang.frontend import ast
from dipm_lang.frontend.lower import Lowerer
from dipm_lang.frontend.parser import parse_expression, parse_script
from dipm_lang.frontend.recipes.positions import LineIndex
from dipm_lang.frontend.recipes.schema import Recipe, Text, read_recipe
from dipm_lang.io.hub_ref import is_hub_path
from dipm_lang.ir.node import Program

if TYPE_CHECKING:
    from dipm_lang.safety.sandbox import Sandbox


def lower_recipe(path: str | Path | Recipe, sets: Mapping[str, Any] | None = None, *,
                 sandbox: "Sandbox | None" = None, free_numbers: bool = False) -> Program:
    """The recipe at `path` (or one already read) as one un-optimized Program: every output a
    `save`, sharing one lowering. `sets` are `--set NAME=VALUE` overrides of inputs (relative to the
    working directory) and parameters; `free_numbers` as for `Lowerer`."""
    recipe = path if isinstance(path, Recipe) else read_recipe(path)
    sets = dict(sets or {})
    if sandbox is not None:  # here, where each input's key in the config is known
        for name, folder in recipe.inputs.items():
            if name not in sets:
                check = sandbox.check_hub if is_hub_path(folder) else sandbox.check
                check(folder, f"input '{name}'", recipe.input_spans.get(name), written=recipe.input_texts.get(name))
    external: dict[str, Any] = {name: str(folder) for name, folder in recipe.inputs.items()}
    external.update(recipe.parameters)  # numbers and schedules, usable by name in every expression
    external.update(sets)  # --set wins, and resolves against the working directory (Lowerer)
    lowerer = Lowerer(external, sandbox=sandbox, free_numbers=free_numbers)
    module = lowerer.module(recipe.file, recipe.text)
    lines = LineIndex(recipe.text)

    for item, span in recipe.imports:
        lowerer.statement(ast.Import(item, span=span), module)
    if recipe.defs is not None:
        script = _embedded(recipe.defs, recipe.file, lines, lambda t, f: parse_script(t, f))
        for statement in script.statements:
            lowerer.statement(statement, module, allow_effects=False)
    for output in recipe.outputs:
        expr = _embedded(output.expr, recipe.file, lines, lambda t, f: parse_expression(t, f))
        lowerer.statement(ast.save_call(expr, str(output.path), output.rank, expr.span, energy=output.energy,
                                        max_rank=output.max_rank, target=output.target, spans=output.spans,
                                        format=output.format),
                          module)

    unused = sorted(set(sets) - lowerer.used_external - set(recipe.inputs) - set(recipe.parameters))
    if unused:
        guess = did_you_mean(unused[0], set(recipe.inputs) | lowerer.used_external)
        raise UsageError(f"--set {unused[0]}=…: the config has no input named '{unused[0]}'",
                         hint=f"did you mean '{guess}'?" if guess else None)
    # the config's own parameters are part of the recipe; only numbers given from outside are recorded
    lowerer.given_numbers = {k: v for k, v in lowerer.given_numbers.items() if k in sets}
    return lowerer.program(recipe.text)


def _embedded(text: Text, file: str, lines: "LineIndex", parse):
    """Parse config text with spans moved from the snippet's coordinates into the config file's."""
    snippet = LineIndex(text.value)

    def move(span: Span) -> Span:
        start = text.offsets[min(snippet.offset(span.line, span.column), len(text.value))]
        end_at = snippet.offset(span.end_line, span.end_column)
        # the end is exclusive: map the last character and step past it
        end = text.offsets[end_at - 1] + 1 if 0 < end_at <= len(text.value) else start + 1
        line, column = lines.position(start)
        end_line, end_column = lines.position(max(end, start + 1))
        return Span(file, line, column, end_line, end_column)

    try:
        tree = parse(text.value, file)
    except DipmError as e:
        if e.span is not None and e.span.file == file:
            e.span = move(e.span)
        raise
    return _move_spans(tree, move)


def _move_spans(node: Any, move) -> Any:
    """Rebuild an AST (frozen dataclasses) with every `Span` passed through `move`."""
    if isinstance(node, Span):
        return move(node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: _move_spans(getattr(node, f.name), move) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    if isinstance(node, tuple):
        return tuple(_move_spans(item, move) for item in node)
    return node


