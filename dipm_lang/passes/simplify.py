"""Algebraic simplification: a table of sound rewrite rules (one per line, each stated).

Every rule keeps the node's type (the driver enforces it) and is checked numerically by
tests/test_simplify.py against the unsimplified program.
"""

from __future__ import annotations

import math

from dipm_lang.frontend.lower import numeric
from dipm_lang.ir.node import Node, Program, const
from dipm_lang.ir.types import NUM
from dipm_lang.passes.rewrite import Rule, RuleSet, rewrite


def _is_const(node: Node, value: float | None = None) -> bool:
    return node.op == "const" and node.type == NUM and (value is None or node.value == value)


def _fold(node: Node) -> Node | None:
    if node.type == NUM and all(_is_const(a) for a in node.args):
        try:
            return const(numeric(node.op, [a.value for a in node.args]), NUM)
        except Exception:  # division by zero stays for the runtime to report
            return None
    return None


def _reassociate_scale(node: Node) -> Node | None:
    # a * (b * x) -> (a*b) * x   (numbers a, b)
    k, x = node.args
    if _is_const(k) and x.op == "mul" and _is_const(x.args[0]) and x.type == node.type \
            and math.isfinite(k.value * x.args[0].value):  # an overflow would turn 0 * inf into nan
        return node.replace(args=(const(k.value * x.args[0].value, NUM), x.args[1]))
    return None


def _scale_on_left(node: Node) -> Node | None:
    # x * k -> k * x   (one canonical form for scaling by a number)
    x, k = node.args
    return node.replace(args=(k, x)) if _is_const(k) and x.type != NUM else None


def _div_to_mul(node: Node) -> Node | None:
    # x / k -> (1/k) * x   (k a nonzero number constant, x not a number)
    x, k = node.args
    if _is_const(k) and k.value != 0.0 and x.type != NUM and math.isfinite(1.0 / k.value):
        return Node.make("mul", (const(1.0 / k.value, NUM), x), {}, node.type)
    return None


SIMPLIFY_RULES = RuleSet([
    # reverse(reverse(d)) -> d
    Rule("reverse-reverse", "reverse", lambda n: n.args[0].args[0] if n.args[0].op == "reverse" else None),
    # recombine(dir(x, by), mag(x, by)) -> x
    Rule("recombine-dir-mag", "recombine", lambda n: n.args[0].args[0] if (
        n.args[0].op == "dir" and n.args[1].op == "mag" and n.args[0].args[0] is n.args[1].args[0]
        and n.args[0].attr("by") == n.args[1].attr("by")) else None),
    # shift(d, e, 0) -> d
    Rule("shift-0", "shift", lambda n: n.args[0] if _is_const(n.args[2], 0.0) else None),
    # shift(d, e, 1) -> e
    Rule("shift-1", "shift", lambda n: n.args[1] if _is_const(n.args[2], 1.0) else None),
    # shift(d, d, t) -> d
    Rule("shift-same", "shift", lambda n: n.args[0] if n.args[0] is n.args[1] else None),
    # dir(d, by) -> d  when d is already a Dir[by]; covers dir(dir(x)) -> dir(x)
    Rule("dir-of-dir", "dir", lambda n: n.args[0] if n.args[0].type == n.type else None),
    # --x -> x
    Rule("neg-neg", "neg", lambda n: n.args[0].args[0] if n.args[0].op == "neg" else None),
    # 1 * x -> x
    Rule("one-times", "mul", lambda n: n.args[1] if _is_const(n.args[0], 1.0) else None),
    # x * k -> k * x
    Rule("scale-left", "mul", _scale_on_left),
    # x / k -> (1/k) * x
    Rule("div-to-mul", "div", _div_to_mul),
    # a * (b * x) -> (a*b) * x
    Rule("scale-scale", "mul", _reassociate_scale),
]) + RuleSet([
    # numeric constant folding: 2 * 0.5 -> 1
    Rule(f"fold-{op}", op, _fold) for op in ("add", "sub", "mul", "div", "neg")
])


def simplify(program: Program, *, trace: bool = False) -> Program:
    fired: list[str] = []
    result = rewrite(program, SIMPLIFY_RULES, trace=trace, fired=fired)
    if fired:
        counts: dict[str, int] = {}
        for name in fired:
            counts[name] = counts.get(name, 0) + 1
        result.notes.append("simplify: " + ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())))
    return result
