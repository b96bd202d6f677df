"""Views of a Program: a deterministic text listing, a networkx DAG, and Graphviz DOT.

The `Node.args` tuples are the source of truth (ordered operands); the networkx graph is a
`MultiDiGraph` keyed by argument position, built on demand for analysis and drawing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipm_lang.ir.numbers import format_number, format_string
from dipm_lang.ir.numbers import format_value
from dipm_lang.ir.schedules import is_schedule
from dipm_lang.ir.node import Node, Program, walk

if TYPE_CHECKING:  # networkx costs ~60 ms of start-up; only `explain` and tests need it
    import networkx as nx

    from dipm_lang.ir.operator import OperatorTable


def to_networkx(program: Program) -> nx.MultiDiGraph:
    """Nodes are integers in topological order; edges run operand → user, keyed by position."""
    import networkx as nx

    graph = nx.MultiDiGraph()
    index: dict[int, int] = {}
    for i, node in enumerate(walk(program.all_roots())):
        index[id(node)] = i
        graph.add_node(i, node=node, op=node.op, type=str(node.type), label=_label(node))
        for pos, arg in enumerate(node.args):
            graph.add_edge(index[id(arg)], i, key=pos)
    return graph


def use_counts(program: Program) -> dict[int, int]:
    """How many distinct nodes read each node (by id); roots count once each. A node read twice
    by one user (`s + s`) has one user: fusing it into that user computes it no more often."""
    counts: dict[int, int] = {}
    for node in walk(program.all_roots()):
        for arg_id in {id(arg) for arg in node.args}:
            counts[arg_id] = counts.get(arg_id, 0) + 1
    for root in program.all_roots():
        counts[id(root)] = counts.get(id(root), 0) + 1
    return counts


def format_attr(value: Any, relative_to: Path | None = None) -> str:
    if isinstance(value, str):
        if relative_to is not None and os.path.isabs(value):
            try:
                value = os.path.relpath(value, relative_to)
            except ValueError:
                pass
        return format_string(value)
    if isinstance(value, float):
        return format_number(value)
    if is_schedule(value):
        return format_value(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v, relative_to) for v in value) + "]"
    return str(value)


def _label(node: Node, relative_to: Path | None = None) -> str:
    if node.op == "const":
        return format_attr(node.value, relative_to)
    attrs = " ".join(f"{k}={format_attr(v, relative_to)}" for k, v in node.attrs if v is not None)
    return node.op + (f" {attrs}" if attrs else "")


def print_program(program: Program, *, relative_to: Path | None = None) -> str:
    """One line per node in topological order: `%3 = shift %1, %2, %0 : Dir[out]`."""
    names: dict[int, str] = {}
    lines = []
    for i, node in enumerate(walk(program.all_roots())):
        name = f"%{i}"
        names[id(node)] = name
        operands = ", ".join(names[id(a)] for a in node.args)
        head = _label(node, relative_to)
        if node.op == "const":
            text = f"{name} = const {head} : {node.type}"
        else:
            op, _, attrs = head.partition(" ")
            text = f"{name} = {op}" + (f" {operands}" if operands else "") + (f" [{attrs}]" if attrs else "")
            text += f" : {node.type}"
        lines.append(text)
    for key, node in program.results.items():
        lines.append(f"result {key} = {names[id(node)]}")
    return "\n".join(lines)


def to_dot(program: Program, *, relative_to: Path | None = None, operators: "OperatorTable | None" = None) -> str:
    """Graphviz DOT text of the plan, with what `--png` shows: every node labelled with its
    operator, attributes (`H ← adapters/helpful` for a load, the path for a save) and type; edges
    labelled with the operand's parameter name (`d`, `e`, `t`); one cluster per output holding the
    nodes only it needs, the nodes several outputs need in a "shared" cluster; fused nodes
    highlighted. Render it with `dot -Tsvg plan.dot -o plan.svg`."""
    from dipm_lang.ir.view import SHARED, plan_view

    view = plan_view(program, relative_to=relative_to, operators=operators)
    lines = ["digraph dipm {", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, fontcolor="#1f4e9c"];']
    for group in view.groups():
        style = 'style="filled"; fillcolor="#f1f1f4"; color="#f1f1f4"' if group == SHARED else \
            'style="dashed"; color="#9a9a9a"'
        name = f"output_{group + 1}" if isinstance(group, int) else group
        lines.append(f"  subgraph cluster_{name} {{")
        lines.append(f'    label="{_dot_escape(view.title(group))}"; labeljust=l; fontname="Helvetica"; {style};')
        for node in view.members(group):
            label = "\\n".join(_dot_escape(line) for line in node.lines)
            attrs = [f'label="{label}"', *_DOT_STYLE.get(node.kind, [])]
            if node.source:
                attrs.append(f'tooltip="{_dot_escape(node.source)}"')
            lines.append(f"    n{node.id} [{', '.join(attrs)}];")
        lines.append("  }")
    for e in view.edges:
        lines.append(f'  n{e.source} -> n{e.target} [label="{_dot_escape(e.label)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


_DOT_STYLE = {
    "load": ['fillcolor="#cfe2ff"', 'color="#4a78c2"'],
    "save": ['fillcolor="#cdebd0"', 'color="#3f8f4a"'],
    "fused": ['fillcolor="#ffd27a"', 'color="#c77700"', "penwidth=2"],
    "const": ['shape=ellipse', 'style="filled"', 'color="#bbbbbb"'],
    "list": ['fillcolor="#eeeeee"'],
}


def _dot_escape(text: str) -> str:
    """Text inside a DOT double-quoted string: backslashes and quotes escaped, one line."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
