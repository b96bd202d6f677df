"""One rewrite driver for rule tables (tinygrad's `graph_rewrite` idea).

A rule is `Rule(name, op, fn)`: `fn(node)` returns a replacement node or None. The driver
rebuilds the program bottom-up, applies the rules of each node's op until none fires, and
repeats over the whole program until nothing changes. A rule may not change a node's type
(such a rewrite is skipped), and a loop guard stops rule sets that never settle.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from dipm_lang.ir.node import Node, Program

MAX_ROUNDS = 100


@dataclass(frozen=True)
class Rule:
    name: str
    op: str
    fn: Callable[[Node], Node | None]


class RuleSet(tuple):
    """A tuple of rules; rule sets compose with `+`."""

    def __add__(self, other: Sequence[Rule]) -> "RuleSet":  # type: ignore[override]
        return RuleSet(tuple(self) + tuple(other))


class RewriteLoopError(Exception):
    pass


def rewrite(program: Program, rules: Sequence[Rule], *, trace: bool = False,
            fired: list[str] | None = None) -> Program:
    by_op: dict[str, list[Rule]] = {}
    for rule in rules:
        by_op.setdefault(rule.op, []).append(rule)

    def apply(node: Node, args: tuple[Node, ...]) -> Node:
        current = node.replace(args=args) if (args != node.args or node.uid is not None) else node
        for _ in range(MAX_ROUNDS):
            for rule in by_op.get(current.op, ()):
                new = rule.fn(current)
                if new is not None and new is not current and new.type == current.type:
                    if trace:
                        print(f"rewrite: {rule.name}", file=sys.stderr)
                    if fired is not None:
                        fired.append(rule.name)
                    current = new
                    break
            else:
                return current
        raise RewriteLoopError(f"rules did not settle on a {node.op} node")

    for _ in range(MAX_ROUNDS):
        before = [id(n) for n in program.all_roots()]
        program = program.rebuild(apply)
        if [id(n) for n in program.all_roots()] == before:
            return program
    raise RewriteLoopError("rewriting did not reach a fixed point")
