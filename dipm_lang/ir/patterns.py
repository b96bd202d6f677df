"""Rewrite rules as data: a pattern over IR nodes and what to build where it matches.

tinygrad's `UPat`/`PatternMatcher`, in miniature. A pattern names an operator (or several), its
operands' patterns, attribute patterns and an optional predicate; `Var("x")` matches anything and
binds it, and a name bound twice must bind the *same* node (`shift(d, d, t)`), which interning
makes a test of "same computation". A `Rule` pairs a pattern with a rewrite function that takes the
bound names as keyword arguments (and `node`, `ctx` if it asks for them) and returns the
replacement, or None to decline. `passes/rewrite.py` runs rule tables to a fixed point.

    # shift(d, e, 0) -> d
    Rule("shift-0", P("shift", D, E, const(0.0)), lambda d: d)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from dipm_lang.ir.node import Node
from dipm_lang.ir.types import NUM


class Var:
    """Matches any operand (or attribute value) and binds it to `name`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class P:
    """A pattern: `P(op, *operand_patterns, name=…, where=…, **attribute_patterns)`.

    `op` is an operator name, a tuple of names, or None for any; without operand patterns the
    operands are not looked at (`P("dir")`); `where(node)` must hold; `name` binds the node.
    """

    def __init__(self, op: str | tuple[str, ...] | None = None, *args: "P | Var", name: str | None = None,
                 where: Callable[[Node], bool] | None = None, **attrs: Any):
        self.ops = (op,) if isinstance(op, str) else op
        self.args: tuple[P | Var, ...] | None = args or None
        self.name = name
        self.where = where
        self.attrs = attrs

    def __repr__(self) -> str:
        head = "|".join(self.ops) if self.ops else "_"
        inner = ", ".join(map(repr, self.args or ())) + "".join(f", {k}={v!r}" for k, v in self.attrs.items())
        return f"{head}({inner})"


def const(value: float | None = None, name: str | None = None) -> P:
    """A number constant (with this value, if given)."""
    return P("const", name=name, where=lambda n: n.type == NUM and (value is None or n.value == value))


def match(pattern: P | Var, node: Node, bound: dict[str, Any]) -> bool:
    """Whether `node` matches; extends `bound` (undo on failure is the caller's: pass a copy)."""
    if isinstance(pattern, Var):
        return _bind(bound, pattern.name, node)
    if pattern.ops is not None and node.op not in pattern.ops:
        return False
    if pattern.args is not None:
        if len(pattern.args) != len(node.args):
            return False
        if not all(match(p, a, bound) for p, a in zip(pattern.args, node.args)):
            return False
    for key, want in pattern.attrs.items():
        value = node.attr(key)
        if isinstance(want, Var):
            if not _bind(bound, want.name, value):
                return False
        elif value != want:
            return False
    if pattern.where is not None and not pattern.where(node):
        return False
    return pattern.name is None or _bind(bound, pattern.name, node)


def _bind(bound: dict[str, Any], name: str, value: Any) -> bool:
    if name not in bound:
        bound[name] = value
        return True
    previous = bound[name]
    return previous is value if isinstance(value, Node) else previous == value


@dataclass(frozen=True)
class Rule:
    """`pattern -> rewrite`, with a name for traces and reports."""

    name: str
    pattern: P
    rewrite: Callable[..., Node | None]
    _wants: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wants", frozenset(inspect.signature(self.rewrite).parameters))

    @property
    def ops(self) -> tuple[str, ...] | None:
        return self.pattern.ops

    def apply(self, node: Node, ctx: Any = None) -> Node | None:
        """The replacement for `node`, or None when the pattern does not match or the rule declines."""
        bound: dict[str, Any] = {}
        if not match(self.pattern, node, bound):
            return None
        kwargs = {k: v for k, v in bound.items() if k in self._wants}
        if "node" in self._wants:
            kwargs["node"] = node
        if "ctx" in self._wants:
            kwargs["ctx"] = ctx
        return self.rewrite(**kwargs)


def rules_by_op(rules: Sequence[Rule]) -> dict[str | None, list[Rule]]:
    """Index a rule table by the operators its patterns start with (None: any operator)."""
    index: dict[str | None, list[Rule]] = {}
    for rule in rules:
        for op in rule.ops or (None,):
            index.setdefault(op, []).append(rule)
    return index
