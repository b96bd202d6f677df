"""Views of a Program: a deterministic text listing, a networkx DAG, and Graphviz DOT.

The `Node.args` tuples are the source of truth (ordered operands); the networkx graph is a
`MultiDiGraph` keyed by argument position, built on demand for analysis and drawing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipm_lang.ir.numbers import format_number, format_string
from dipm_lang.ir.node import Node, Program, walk

if TYPE_CHECKING:  # networkx costs ~60 ms of start-up; only `explain` and tests need it
    import networkx as nx


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


def to_dot(program: Program, *, relative_to: Path | None = None) -> str:
    """Graphviz DOT text of the DAG (edge labels give the operand position)."""
    graph = to_networkx(program)
    lines = ["digraph dipm {", "  rankdir=BT;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for i, data in graph.nodes(data=True):
        node: Node = data["node"]
        label = _label(node, relative_to).replace('"', '\\"') + f"\\n{node.type}"
        style = ', style=filled, fillcolor="#e8f0fe"' if node.op in ("load", "save") else ""
        if node.op in ("lincomb", "unit_scale"):
            style = ', style=filled, fillcolor="#fdf1d8"'
        lines.append(f'  n{i} [label="{label}"{style}];')
    for u, v, key in graph.edges(keys=True):
        lines.append(f'  n{u} -> n{v} [label="{key}", fontsize=8];')
    lines.append("}")
    return "\n".join(lines) + "\n"
