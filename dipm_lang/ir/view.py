"""The labelled plan: what `dipm explain` draws (`--png`, `--dot`) and prints (`--json`), computed once.

The listing (`graph.print_program`) is one line per node. A picture needs more, or a reader cannot
tell what it shows: which adapter a `load` reads (`H ← adapters/helpful`), where a `save` writes,
which operand is which (`shift(d, e, t)`: the edges carry the parameter names of the operator's
declaration), and, in a recipe with many outputs, which nodes serve one output and which are
shared work. This module computes all of that from the `Program`, with no drawing library, so
the DOT text, the PNG and the JSON agree and tests can read the labels without looking at pixels.

Grouping: each node belongs to the outputs whose value needs it. A node needed by exactly one
output goes in that output's cluster; a node needed by several is *shared*. Shared nodes are
closed under operands (an operand of shared work is shared too) and a cluster is closed under
users, so edges run shared → shared, shared → cluster, or within one cluster — never between
two clusters. Nodes that no output needs (names kept alive at -O0) form an `UNUSED` group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.numbers import format_number, format_string
from dipm_lang.ir.numbers import format_value as format_schedule
from dipm_lang.ir.schedules import is_schedule

if TYPE_CHECKING:
    from dipm_lang.ir.operator import OperatorTable

SHARED = "shared"
UNUSED = "unused"
Group = int | str  # an output's index, SHARED or UNUSED

FUSED_OPS = ("lincomb", "unit_scale")  # made by the fuse pass: highlighted in pictures

# Label widths in characters: long enough for `H ← ../../demo/adapters/helpful`, short enough that
# eight outputs side by side stay readable. Paths keep their tail (the folder's own name).
PATH_CHARS = 30
TEXT_CHARS = 24
LINE_CHARS = 30
LIST_ITEMS = 4


@dataclass(frozen=True)
class Output:
    """A value the program produces: a `save` (in statement order), then the named results."""

    index: int
    node: int               # the id of its root node (the save, or the result's node)
    kind: str               # "save" | "result"
    path: str | None        # a save's destination as the program holds it (absolute, or a memory key)
    rank: int | None
    label: str              # as pictures title its cluster: "→ out/detox", "result value"
    name: str | None = None  # a result's name

    @property
    def key(self) -> str:
        """How the JSON names it: a save's path, or `result NAME`."""
        return self.path if self.path is not None else f"result {self.name}"


@dataclass(frozen=True)
class ViewEdge:
    source: int             # the operand's id
    target: int             # the user's id
    position: int           # operand position in the user's `args`
    label: str              # the operator's parameter name ("d", "e", "t"), "[i]" in a list, else "i"


@dataclass(frozen=True)
class ViewNode:
    id: int                 # the node's number in the listing (`%id`)
    node: Node
    title: str              # the operator, or a constant's value
    details: tuple[str, ...]  # attributes, formatted and shortened, one or more per line
    type: str
    kind: str               # "load" | "save" | "fused" | "const" | "list" | "op"
    outputs: tuple[int, ...]  # indices of the outputs that need it
    group: Group
    source: str | None      # `file:line:col` of the source that made it, when known

    @property
    def lines(self) -> tuple[str, ...]:
        """Every line of its label: title, details, type."""
        return (self.title, *self.details, self.type)

    @property
    def shared(self) -> bool:
        return self.group == SHARED


@dataclass
class PlanView:
    nodes: list[ViewNode]   # in listing order (operands before users)
    edges: list[ViewEdge]   # per user, in operand order
    outputs: list[Output]
    inlined: list[ViewEdge] = field(default_factory=list)  # constants written on their edge (no source box)
    _into: dict[int, list[ViewEdge]] | None = field(default=None, repr=False, compare=False)

    def operands(self, node_id: int) -> list[ViewEdge]:
        """The edges into `node_id`, in operand order."""
        if self._into is None:
            self._into = {}
            for e in self.edges:
                self._into.setdefault(e.target, []).append(e)
        return self._into.get(node_id, [])

    def groups(self) -> list[Group]:
        """The groups present, shared first, then the outputs in order, then unused."""
        present = {n.group for n in self.nodes}
        ordered: list[Group] = [SHARED] if SHARED in present else []
        ordered += [o.index for o in self.outputs if o.index in present]
        return ordered + ([UNUSED] if UNUSED in present else [])

    def title(self, group: Group) -> str:
        """What a group's frame says: `output 2  → out/detox`, or what the shared or unused nodes are."""
        if group == SHARED:
            return "shared: needed by several outputs"
        if group == UNUSED:
            return "needed by no output (kept at -O0)"
        output = self.outputs[group]  # type: ignore[index]
        return output.label if output.kind == "result" else f"output {output.index + 1}  {output.label}"

    def members(self, group: Group) -> list[ViewNode]:
        return [n for n in self.nodes if n.group == group]

    def with_constants_inlined(self) -> "PlanView":
        """The same plan with each constant (a number, a string, a list of them) written on the
        edges it feeds (`t=0.3`, `weights=[2, 1]`) instead of drawn as a box of its own: what a
        picture needs, where a box per number would crowd out the operations."""
        roots = {o.node for o in self.outputs}
        values: dict[int, str] = {}
        for n in self.nodes:
            if n.id in roots:
                continue
            if n.kind == "const":
                values[n.id] = n.title
            elif n.kind == "list" and all(e.source in values for e in self.operands(n.id)):
                values[n.id] = "[" + ", ".join(values[e.source] for e in self.operands(n.id)) + "]"
        values = {k: shorten(v, TEXT_CHARS) for k, v in values.items()}
        kept = [e for e in self.edges if e.target not in values]
        return PlanView([n for n in self.nodes if n.id not in values], [e for e in kept if e.source not in values],
                        self.outputs, [ViewEdge(e.source, e.target, e.position, f"{e.label}={values[e.source]}")
                                       for e in kept if e.source in values])


def plan_view(program: Program, *, relative_to: Path | None = None,
              operators: "OperatorTable | None" = None) -> PlanView:
    """The labelled, grouped plan of `program`. Paths in labels are shown relative to `relative_to`
    (the script's folder, as the listing does); `operators` names the edges by their parameters
    (without it, edges carry operand positions)."""
    order = list(walk(program.all_roots()))
    ids = {id(node): i for i, node in enumerate(order)}
    outputs = _outputs(program, ids, relative_to)
    needed = _needed_by(order, outputs, ids)
    nodes = []
    for i, node in enumerate(order):
        users = tuple(o.index for o in outputs if needed[i] >> o.index & 1)
        group: Group = users[0] if len(users) == 1 else SHARED if users else UNUSED
        span = program.spans.get(node)
        title, details = _label(node, relative_to)
        nodes.append(ViewNode(i, node, title, details, str(node.type), _kind(node), users, group,
                              str(span) if span is not None else None))
    edges = [ViewEdge(ids[id(arg)], i, pos, edge_label(node, pos, operators))
             for i, node in enumerate(order) for pos, arg in enumerate(node.args)]
    return PlanView(nodes, edges, outputs)


def _outputs(program: Program, ids: dict[int, int], relative_to: Path | None) -> list[Output]:
    outputs = []
    for root in program.roots:
        if root.op == "save":
            path = root.attr("path")
            outputs.append(Output(len(outputs), ids[id(root)], "save", path, root.attr("rank"),
                                  "→ " + short_path(path, relative_to)))
    for name, node in program.results.items():
        outputs.append(Output(len(outputs), ids[id(node)], "result", None, None, f"result {name}", name))
    return outputs


def _needed_by(order: list[Node], outputs: list[Output], ids: dict[int, int]) -> list[int]:
    """For each node, a bit mask of the outputs that need it: users pass their masks to their operands."""
    masks = [0] * len(order)
    for output in outputs:
        masks[output.node] |= 1 << output.index
    for i in range(len(order) - 1, -1, -1):
        for arg in order[i].args:
            masks[ids[id(arg)]] |= masks[i]
    return masks


def _kind(node: Node) -> str:
    if node.op in ("load", "save", "const", "list"):
        return node.op
    return "fused" if node.op in FUSED_OPS else "op"


def edge_label(node: Node, position: int, operators: "OperatorTable | None") -> str:
    """Operand `position` of `node` as its operator's declaration names it: `d`, `e`, `t` for
    `shift`; `[i]` for the i-th item of a variadic parameter (`list`, `lincomb`)."""
    op = operators.get(node.op) if operators is not None else None
    if op is None:
        return str(position)
    params = op.operand_params
    for i, param in enumerate(params):
        if param.variadic:
            if position >= i:
                return f"{param.name}[{position - i}]" if i else f"[{position - i}]"
        elif i == position:
            return param.name
    return str(position)


# ---- labels -----------------------------------------------------------------------------

def _label(node: Node, relative_to: Path | None) -> tuple[str, tuple[str, ...]]:
    """(title, detail lines) of a node."""
    if node.op == "const":
        return format_value(node.value), ()
    if node.op == "load":
        name, path = node.attr("name"), node.attr("path")
        source = short_path(path, relative_to) if path is not None else "(given with --set)"
        return "load", (f"{name} ← {source}" if name else f"← {source}",)
    if node.op == "save":
        lines = ["→ " + short_path(node.attr("path"), relative_to)]
        if node.attr("rank") is not None:
            lines.append(f"rank={node.attr('rank')}")
        return "save", tuple(lines)
    return node.op, tuple(_wrap([f"{key}={format_value(value)}" for key, value in node.attrs if value is not None]))


def _wrap(parts: Iterable[str]) -> list[str]:
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= LINE_CHARS:
            lines[-1] += "  " + part
        else:
            lines.append(part)
    return lines


def format_value(value: Any) -> str:
    """An attribute as a label shows it: dipm's own spelling of numbers and strings, shortened."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        text = format_number(float(value))
        # 0.1 + 0.2 prints 0.30000000000000004: the picture says ≈0.3, the JSON keeps every digit
        return text if len(text) <= 10 else "≈" + format_number(float(f"{value:.6g}"))
    if isinstance(value, str):
        return format_string(shorten(value, TEXT_CHARS))
    if isinstance(value, (list, tuple)):
        items = [format_value(v) for v in value[:LIST_ITEMS]]
        if len(value) > LIST_ITEMS:
            items.append(f"… {len(value)} items")
        return "[" + ", ".join(items) + "]"
    if is_schedule(value):
        return shorten(format_schedule(value), TEXT_CHARS)
    return shorten(str(value), TEXT_CHARS)


def shorten(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis at the end."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def short_path(path: str, relative_to: Path | None, limit: int = PATH_CHARS) -> str:
    """A path relative to `relative_to` (as the listing shows it), cut at the front to `limit`
    characters, keeping whole trailing components: the folder's own name is what tells outputs apart."""
    if relative_to is not None and os.path.isabs(path):
        try:
            path = os.path.relpath(path, relative_to)
        except ValueError:  # another drive on Windows
            pass
    if len(path) <= limit:
        return path
    parts = path.replace(os.sep, "/").split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 2 > limit:
            break
        tail = f"{part}/{tail}"
    return "…/" + tail if len(tail) + 2 <= limit else "…" + tail[-(limit - 1):]
