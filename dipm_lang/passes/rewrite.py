"""One rewrite driver for rule tables (tinygrad's `graph_rewrite`).

The driver rebuilds the program bottom-up; at each node it tries the rules indexed under the
node's operator (ir/patterns.py) until none fires, then moves on. `fixed_point` repeats the whole
walk until nothing changes (simplify); fusion makes one walk, since its rules read use counts that
a later walk would see changed. A rule may not change a node's type (such a rewrite is skipped), a
loop guard stops rule sets that never settle, and `trace` prints every rule that fires.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Sequence

from dipm_lang.ir.node import Node, Program
from dipm_lang.ir.patterns import Rule, rules_by_op

MAX_ROUNDS = 100


class RewriteLoopError(Exception):
    """A rule set that never settles (a compiler bug)."""


def rewrite(program: Program, rules: Sequence[Rule], *, ctx: Any = None, fixed_point: bool = True,
            trace: bool = False, fired: Counter[str] | None = None) -> Program:
    """Apply `rules` to every node of `program`; `fired` counts the rules that fired, by name.

    `ctx` is handed to rules that ask for it; if it has `rebuilt(old, new)`, the driver reports
    every node it replaced (fusion keeps use counts current that way).
    """
    index = rules_by_op(rules)
    wildcard = index.get(None, [])
    rebuilt = getattr(ctx, "rebuilt", None)

    def apply(node: Node, args: tuple[Node, ...]) -> Node:
        current = node.replace(args=args) if (args != node.args or node.uid is not None) else node
        for _ in range(MAX_ROUNDS):
            for rule in index.get(current.op, []) + wildcard:
                new = rule.apply(current, ctx)
                if new is not None and new is not current and new.type == current.type:
                    if trace:
                        print(f"rewrite: {rule.name}", file=sys.stderr)
                    if fired is not None:
                        fired[rule.name] += 1
                    current = new
                    break
            else:
                break
        else:
            raise RewriteLoopError(f"rules did not settle on a {node.op} node")
        if rebuilt is not None:
            rebuilt(node, current)
        return current

    for _ in range(MAX_ROUNDS):
        before = [id(n) for n in program.all_roots()]
        program = program.rebuild(apply)
        if not fixed_point or [id(n) for n in program.all_roots()] == before:
            return program
    raise RewriteLoopError("rewriting did not reach a fixed point")
