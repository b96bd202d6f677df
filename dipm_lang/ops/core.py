"""Core operators: constants, lists, and the infix arithmetic `+ - * /` and unary minus (SPEC §3).

Typing of arithmetic (`binary_result`):
- numbers with numbers → Num;
- updates (Delta or Dir) add and subtract → Delta; scaled by a number → Delta;
- magnitudes combine elementwise with magnitudes of the same `by` (and of the same kind of value:
  an update's, x.A's or x.B's) and with numbers → Mag;
- factors of the same kind add (a direction of a factor counts as that factor, as a Dir counts as
  a Delta); scaled by a number → Factor;
- with base weights (SPEC §7.8) a weight-level value (`Weight`, `Dir[by, weight]`) is a full weight
  matrix per module: any sum, difference or scaling that involves one is a `Weight` (the matrix it
  computes; saving it writes that matrix − W0). So `W + x`, `0.5*W1 + 0.5*W2` and
  `W1 + t*(W2 − W1)` mean what they say; `W1 − W2` alone is the matrix difference, which
  saving would shift by −W0 (a warning says so).
"""

from __future__ import annotations

import math

from dipm_lang.ir.node import Node, const
from dipm_lang.ir.numbers import numeric
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.patterns import P, Rule, Var
from dipm_lang.ir.signature import Anything, Attribute, Param, Rest, Typing
from dipm_lang.ir.schedules import is_schedule, varies
from dipm_lang.ir.types import DELTA, NUM, SCHEDULE, STR, WEIGHT, Type, factor_t, list_t
from dipm_lang.ops.backend import arith

SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_VERBS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}

A, B, K, X = Var("a"), Var("b"), Var("k"), Var("x")


# ---- typing rules ---------------------------------------------------------------------------

def binary_result(t: Typing) -> Type:
    """The result type of `a op b`, or a failure that says what to write instead."""
    op = SYMBOLS[t.op.name]
    left, right = t.type("a"), t.type("b")

    def fail(message: str, hint: str | None = None):
        t.fail(None, message, hint)

    kinds = (left.kind, right.kind)
    if kinds == ("Num", "Num"):
        return NUM if left == right == NUM else SCHEDULE  # arithmetic with a schedule varies by module
    if left.is_weight or right.is_weight:
        return _weight_result(t, op, left, right, fail)
    if left.is_update and right.is_update:
        if op in "+-":
            return DELTA
        fail(f"cannot {_VERBS[op]} two updates ({left} {op} {right})",
             "scale an update by a number, or use recombine(d, m) for per-unit scaling")
    if left.is_update or right.is_update:
        other = right if left.is_update else left
        if other.is_number and (op == "*" or (op == "/" and left.is_update)):
            return DELTA
        if other.is_number:
            fail(f"cannot {_VERBS[op]} a number and an update ({left} {op} {right})",
                 "updates can be scaled (k * x, x / k) and added to updates")
        if other.kind == "Mag":
            fail(f"cannot combine an update with a magnitude ({left} {op} {right})",
                 "recombine(d, m) scales each unit of a direction by a magnitude")
        fail(f"cannot {_VERBS[op]} {left} and {right}")
    if "Mag" in kinds:
        if left.kind == right.kind == "Mag":
            if left.by != right.by:
                fail(f"magnitudes of different `by` in '{op}': {left} and {right}",
                     "compute both magnitudes with the same by=…")
            if left.of != right.of:
                fail(f"magnitudes of different kinds of value in '{op}': {left} and {right}",
                     "combine magnitudes of updates with magnitudes of updates, of x.B with x.B, of x.A with x.A")
            return left
        other = right if left.kind == "Mag" else left
        if other.is_number:
            return left if left.kind == "Mag" else right
        fail(f"cannot {_VERBS[op]} {left} and {right}")
    if left.is_factor or right.is_factor:
        if left.is_factor and right.is_factor:
            if op in "+-" and left.factor == right.factor:
                return factor_t(left.factor)  # arithmetic on directions of factors yields a factor
            fail(f"cannot {_VERBS[op]} {left} and {right}",
                 "factors of the same kind add and subtract; scale them by numbers")
        factor, other = (left, right) if left.is_factor else (right, left)
        if other.is_number and (op == "*" or (op == "/" and left.is_factor)):
            return factor_t(factor.factor)
    fail(f"cannot {_VERBS[op]} {left} and {right}")
    raise AssertionError  # unreachable: fail raises


def _weight_result(t: Typing, op: str, left: Type, right: Type, fail) -> Type:
    """`a op b` where one side is a weight (SPEC §7.8): a Weight, for sums and scalings."""
    if left.is_matrix and right.is_matrix:
        if op in "+-":
            if op == "-" and left.is_weight and right.is_weight:
                t.warn(None, f"{left} - {right} is a weight (the matrix difference), and saving a weight writes it "
                             "minus W0; to save the update W − W0, save the weight W itself")
            return WEIGHT
        fail(f"cannot {_VERBS[op]} two matrices ({left} {op} {right})",
             "scale a weight by a number, or use recombine(d, m) for per-row scaling")
    weight, other = (left, right) if left.is_weight else (right, left)
    if other.is_number and (op == "*" or (op == "/" and left.is_weight)):
        return WEIGHT
    if other.kind == "Mag":
        fail(f"cannot combine a weight with a magnitude ({left} {op} {right})",
             "recombine(d, m) scales each unit of a direction by a magnitude")
    fail(f"cannot {_VERBS[op]} {left} and {right}")
    raise AssertionError  # unreachable: fail raises


def negate_result(t: Typing) -> Type:
    operand = t.type("x")
    if operand.is_weight:
        return WEIGHT  # −W: a weight-level value, like any scaling of one
    if operand.kind == "Dir":  # arithmetic on directions yields a Delta (SPEC §2); reverse(d) keeps a Dir
        return DELTA if operand.of is None else factor_t(operand.of)
    if operand.kind in ("Num", "Delta", "Mag", "Factor"):
        return operand
    t.fail(None, f"cannot negate a {operand}")
    raise AssertionError


def _const_type(t: Typing) -> Type:
    value = t.value("value")
    return STR if isinstance(value, str) else SCHEDULE if varies(value) else NUM


def _list_type(t: Typing) -> Type:
    items = t.operands["items"]
    if len({n.type.kind for n in items}) > 1:
        t.fail(None, "list items of different kinds")
    return list_t(items[0].type if items else None)


# ---- simplification rules -------------------------------------------------------------------

def is_number(node: Node, value: float | None = None) -> bool:
    """A constant plain number (not a schedule, nor a parameter whose number comes later)."""
    return (node.op == "const" and node.type == NUM and isinstance(node.value, float)
            and (value is None or node.value == value))


def _fold(node: Node) -> Node | None:
    # numbers and schedules alike (0.5 * ramp([0, 1]) is one schedule); the type never changes
    if node.type.is_number and all(a.op == "const" and a.type.is_number for a in node.args):
        try:
            return const(numeric(node.op, [a.value for a in node.args]), node.type)
        except Exception:  # division by zero stays for the runtime to report
            return None
    return None


def _scale_scale(node: Node, a: Node, b: Node, x: Node) -> Node | None:
    if math.isfinite(a.value * b.value):  # an overflow would turn 0 * inf into nan
        return node.replace(args=(const(a.value * b.value, NUM), x))
    return None


def _div_to_mul(node: Node, x: Node, k: Node) -> Node | None:
    if k.value != 0.0 and math.isfinite(1.0 / k.value):
        return Node.make("mul", (const(1.0 / k.value, NUM), x), {}, node.type)
    return None


NUMBER = P("const", where=is_number)
NOT_NUMBER = P(None, where=lambda n: not n.type.is_number)


def _fold_rule(op: str) -> Rule:
    # numeric constant folding: 2 * 0.5 -> 1
    return Rule(f"fold-{op}", P(op), lambda node: _fold(node))


# ---- kernels ------------------------------------------------------------------------------

def _binary(op: str, dense: bool):
    def kernel(ctx, node, a, b):
        if not node.type.is_number:  # a number scaling a value: one per module where it is a schedule
            a, b = (ctx.number(v) if arg.type.is_number else v for arg, v in zip(node.args, (a, b)))
        factors = node.type.factor is not None  # factors, or magnitudes of a factor's units
        return arith.plain(op, a, b, factors=factors) if dense else arith.factored(op, a, b, factors=factors)

    return kernel


def _arithmetic(op: str, *rules: Rule) -> Operator:
    return Operator(
        op, (Param("a", Anything()), Param("b", Anything())), binary_result,
        f"a {SYMBOLS[op]} b: exact on updates (ranks add), elementwise on magnitudes, plain on numbers.",
        factored=_binary(op, dense=False), dense=_binary(op, dense=True),
        simplify=(*rules, _fold_rule(op)), callable=False, returns_label="(by operand types)")


OPERATORS = [
    Operator("const", (Param("value", Attribute(lambda v: isinstance(v, (float, str)) or is_schedule(v),
                                                "a float, a string or a schedule")),),
             _const_type, "A number, string or schedule (ramp, where) known when compiling.",
             factored=lambda ctx, node: node.value, callable=False, returns_label="Num | Str"),
    Operator("list", (Param("items", Rest(Anything())),), _list_type, "A list literal [a, b, …].",
             factored=lambda ctx, node, *items: list(items), callable=False, returns_label="List"),
    _arithmetic("add"),
    _arithmetic("sub"),
    _arithmetic(
        "mul",
        # 1 * x -> x
        Rule("one-times", P("mul", P("const", where=lambda n: is_number(n, 1.0)), X), lambda x: x),
        # x * k -> k * x   (one canonical form for scaling by a number)
        Rule("scale-left", P("mul", NOT_NUMBER, NUMBER), lambda node: node.replace(args=node.args[::-1])),
        # a * (b * x) -> (a*b) * x   (numbers a, b)
        Rule("scale-scale", P("mul", P("const", name="a", where=is_number),
                              P("mul", P("const", name="b", where=is_number), X, name="inner")),
             lambda node, a, b, x, inner: _scale_scale(node, a, b, x) if inner.type == node.type else None),
    ),
    _arithmetic(
        "div",
        # x / k -> (1/k) * x   (k a nonzero number constant, x not a number)
        Rule("div-to-mul", P("div", P(None, name="x", where=lambda n: not n.type.is_number),
                             P("const", name="k", where=is_number)), _div_to_mul),
    ),
    Operator("neg", (Param("x", Anything()),), negate_result, "-x: negation (a negated Dir is a Delta).",
             factored=lambda ctx, node, x: arith.negate(x), dense=lambda ctx, node, x: -x,
             simplify=(
                 # --x -> x
                 Rule("neg-neg", P("neg", P("neg", X)), lambda x: x),
                 _fold_rule("neg"),
             ), callable=False, returns_label="(the operand's type)"),
]
