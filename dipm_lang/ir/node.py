"""Interned IR nodes.

A node is `(op, args, attrs)` with *ordered* operands, so `shift(d, d, t)` keeps both
operand positions. Construction interns nodes: building the same computation twice returns
the same object, so `a is b` means "same computation" and common subexpressions are shared.

Lowering builds *un*-interned nodes on purpose (each carries a unique `uid` in its key) so the
program as written is visible; the CSE pass then rebuilds the graph without uids, which merges
equal subterms. Source spans live in a side table (`Program.spans`), never in the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from dipm_lang.errors import Span
from dipm_lang.ir.types import Type

_uids = itertools.count(1)
_interned: "weakref.WeakValueDictionary[tuple, Node]" = weakref.WeakValueDictionary()


class Node:
    """One operation of the IR. Build with `Node.make`; never mutate."""

    __slots__ = ("op", "args", "attrs", "type", "uid", "__weakref__")

    op: str
    args: tuple["Node", ...]
    attrs: tuple[tuple[str, Any], ...]
    type: Type
    uid: int | None

    def __init__(self) -> None:  # pragma: no cover - use Node.make
        raise TypeError("use Node.make(...)")

    @staticmethod
    def make(op: str, args: Iterable["Node"], attrs: dict[str, Any] | None, type_: Type,
             *, unique: bool = False) -> "Node":
        args = tuple(args)
        attr_items = tuple(sorted((attrs or {}).items()))
        uid = next(_uids) if unique else None
        # The type is part of the key (tinygrad keys UOps on dtype too): asking for `dir(a)` typed
        # Delta must not return the cached `Dir[out]` node.
        key = (op, tuple(id(a) for a in args), _freeze(attr_items), type_, uid)
        node = _interned.get(key)
        if node is not None:
            return node
        node = object.__new__(Node)
        object.__setattr__(node, "op", op)
        object.__setattr__(node, "args", args)
        object.__setattr__(node, "attrs", attr_items)
        object.__setattr__(node, "type", type_)
        object.__setattr__(node, "uid", uid)
        _interned[key] = node
        # Keep the operands alive as long as this node lives (ids in the key stay valid).
        return node

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("IR nodes are immutable")

    def attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    @property
    def value(self) -> Any:
        """The value of a `const` node."""
        return self.attr("value")

    def replace(self, *, args: Iterable["Node"] | None = None, attrs: dict[str, Any] | None = None,
                type_: Type | None = None) -> "Node":
        """A copy with other operands/attributes, interned (no uid)."""
        return Node.make(self.op, self.args if args is None else args,
                         dict(self.attrs) if attrs is None else attrs, type_ or self.type)

    def __repr__(self) -> str:
        return f"<{self.op}:{self.type} #{id(self) % 100000}>"


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, float) and value == 0.0:
        return (float, 0.0, str(value))  # keep -0.0 and 0.0 apart
    return (type(value), value) if isinstance(value, (int, float, bool)) else value


def const(value: Any, type_: Type, *, unique: bool = False) -> Node:
    return Node.make("const", (), {"value": value}, type_, unique=unique)


def walk(roots: Iterable[Node], operands: Callable[[Node], Iterable[Node]] | None = None) -> Iterator[Node]:
    """Every node reachable from `roots`, operands before users (a topological order); `operands`
    gives the operands to follow (default: all of them)."""
    seen: set[int] = set()
    order: list[Node] = []
    for root in roots:
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for arg in reversed(tuple(node.args if operands is None else operands(node))):
                if id(arg) not in seen:
                    stack.append((arg, False))
    return iter(order)


@dataclass
class Program:
    """A compiled script: its effects (`save` nodes) and named results, plus side tables."""

    roots: list[Node]                                   # save nodes, in statement order
    results: dict[str, Node] = field(default_factory=dict)  # named values (REPL, API)
    spans: dict[Node, Span] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)   # file -> text, for diagnostics
    inputs: dict[str, Node] = field(default_factory=dict)   # input name -> load node
    script_text: str = ""
    bindings: dict[str, Node] = field(default_factory=dict)  # the script's names; live until DCE
    notes: list[str] = field(default_factory=list)            # what passes did (for explain)
    warnings: list[tuple[str, Span | None]] = field(default_factory=list)  # allowed, but probably not meant
    schedules: list = field(default_factory=list)  # the schedules as written (SPEC §7.2), for summaries
    given: dict[str, dict[str, float]] = field(default_factory=dict)  # save path -> numbers given from outside
    base: str | None = None  # the base model's folder the program names (base("DIR"), a config's base:), SPEC §7.8

    def all_roots(self) -> list[Node]:
        seen: set[int] = set()
        out: list[Node] = []
        for node in [*self.roots, *self.results.values(), *self.bindings.values()]:
            if id(node) not in seen:
                seen.add(id(node))
                out.append(node)
        return out

    def nodes(self) -> list[Node]:
        return list(walk(self.all_roots()))

    def replace(self, **changes: Any) -> "Program":
        """A copy with some fields replaced (`dataclasses.replace`); side tables are copied, not shared."""
        copy = dataclasses.replace(self, **changes)
        for name in ("roots", "results", "spans", "sources", "inputs", "bindings", "notes", "warnings", "schedules",
                     "given"):
            if name not in changes:
                value = getattr(copy, name)
                setattr(copy, name, type(value)(value))
        return copy

    def rebuild(self, rewrite: Callable[[Node, tuple[Node, ...]], Node]) -> "Program":
        """Rebuild every node bottom-up through `rewrite(node, new_args)`; spans follow."""
        memo: dict[int, Node] = {}
        spans: dict[Node, Span] = {}
        for node in walk(self.all_roots()):
            new_args = tuple(memo[id(a)] for a in node.args)
            new = rewrite(node, new_args)
            memo[id(node)] = new
            span = self.spans.get(node)
            if span is not None and new not in spans:
                spans[new] = span
        return Program(
            roots=[memo[id(r)] for r in self.roots],
            results={k: memo[id(v)] for k, v in self.results.items()},
            spans=spans,
            sources=self.sources,
            inputs={k: memo[id(v)] for k, v in self.inputs.items() if id(v) in memo},
            script_text=self.script_text,
            bindings={k: memo[id(v)] for k, v in self.bindings.items()},
            notes=list(self.notes),
            warnings=list(self.warnings),
            schedules=list(self.schedules),
            given=dict(self.given),
            base=self.base,
        )
