"""Operators the fusion pass makes (never written in a script), with the rules that make them.

- `lincomb(x1, …, xk; coeffs)`: a tree of `+ - *k /k` and unary minus over updates — one
  concatenation of factors with the coefficients folded into B;
- `unit_scale(x[, m]; by, coeff, normalize)`: `recombine` of a chain of `dir` / `reverse` (and a
  scalar on top) — one per-unit scaling folded into a factor, norms computed once.

Only nodes with a single user are absorbed (`ctx.single_use`), so nothing is computed twice and
every fused group is convex (PyTensor's rule).
"""

from __future__ import annotations

from typing import Any

from dipm_lang.ir.node import Node
from dipm_lang.ir.numbers import const_eval
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.patterns import P, Rule
from dipm_lang.ir.numbers import format_value
from dipm_lang.ir.schedules import is_schedule
from dipm_lang.ir.signature import Anything, Attribute, By, Param, Rest, Typing, Update
from dipm_lang.ir.types import DELTA, WEIGHT, WEIGHT_SPACE, Type, dir_t, mag_t
from dipm_lang.ops.backend import D, F, L

_LINEAR = ("add", "sub", "neg", "mul", "div", "lincomb")


# ---- lincomb --------------------------------------------------------------------------------

def _terms(node: Node, coeff: float, absorb: bool, ctx: Any, out: list[tuple[Node, float]], parts: list[str]) -> None:
    """Flatten a linear tree into (operand, coefficient) pairs, absorbing single-use subtrees."""
    if not (absorb and node.type == DELTA and node.op in _LINEAR):
        out.append((node, coeff))
        return
    parts.append(node.op)
    if node.op == "lincomb":
        pairs = list(zip(node.args, node.attr("coeffs")))
    elif node.op == "add":
        pairs = [(node.args[0], 1.0), (node.args[1], 1.0)]
    elif node.op == "sub":
        pairs = [(node.args[0], 1.0), (node.args[1], -1.0)]
    elif node.op == "neg":
        pairs = [(node.args[0], -1.0)]
    elif node.op == "mul":
        k, x = node.args if node.args[0].type.is_number else node.args[::-1]
        pairs = [(x, const_eval(k))]
    else:  # div
        x, k = node.args
        pairs = [(x, 1.0 / const_eval(k))]
    for arg, c in pairs:
        _terms(arg, coeff * c, ctx.single_use(arg), ctx, out, parts)


def _to_lincomb(node: Node, ctx: Any) -> Node:
    pairs: list[tuple[Node, float]] = []
    parts: list[str] = []
    _terms(node, 1.0, True, ctx, pairs, parts)
    merged: dict[int, list] = {}
    for x, c in pairs:  # x + x -> 2x
        merged.setdefault(id(x), [x, 0.0])[1] += c
    items = [(x, c) for x, c in merged.values() if is_schedule(c) or c != 0.0] or [(pairs[0][0], 0.0)]  # all cancelled
    if len(items) == 1 and items[0][0].op == "unit_scale" and len(items[0][0].args) == 2 \
            and ctx.single_use(items[0][0]) and not is_schedule(items[0][1]) and items[0][1] > 0:
        # k * recombine(...) -> one per-unit scaling with k folded in; only k > 0, so the sign of
        # unit_scale's coeff stays its direction's (a reverse), as the full-weight analysis reads it
        # (ir/full_weights.py: -recombine(d, m) carries -1 times m's owner's, recombine(reverse(d), m) +1)
        inner, c = items[0]
        new = inner.replace(attrs={**dict(inner.attrs), "coeff": inner.attr("coeff") * c})
        return ctx.note(new, f"scaling by {format_value(c)} folded into {ctx.note_of(inner, 'unit_scale')}")
    coeffs = tuple(c if is_schedule(c) else float(c) for _, c in items)
    new = Node.make("lincomb", [x for x, _ in items], {"coeffs": coeffs}, DELTA)
    return ctx.note(new, f"{len(parts)} arithmetic op(s) → lincomb of {len(items)} term(s)")


def _lincomb_type(t: Typing) -> Type:
    if len(t.operands["terms"]) != len(t.value("coeffs")) or not t.operands["terms"]:
        t.fail(None, "lincomb needs one coefficient per term, and at least one term")
    return DELTA


# ---- unit_scale ---------------------------------------------------------------------------

def _direction_chain(d: Node, ctx: Any) -> tuple[Node, float, bool, list[str]]:
    """Peel single-use `reverse` and `dir` (and fused ±dir) off a direction feeding recombine."""
    coeff, normalize, chain = 1.0, False, []
    by = d.type.by
    while ctx.single_use(d):
        if d.op == "reverse":
            coeff, chain, d = -coeff, chain + ["reverse"], d.args[0]
        elif d.op == "dir" and d.attr("by") == by:
            normalize, chain, d = True, chain + ["dir"], d.args[0]
            break
        elif d.op == "unit_scale" and len(d.args) == 1 and d.attr("by") == by:
            coeff, normalize, chain, d = coeff * d.attr("coeff"), True, chain + ["±dir"], d.args[0]
            break
        else:
            break
    return d, coeff, normalize, chain


def _from_recombine(node: Node, ctx: Any) -> Node:
    d, m = node.args
    by = d.type.by
    base, coeff, normalize, chain = _direction_chain(d, ctx)
    if chain:
        new = Node.make("unit_scale", (base, m), {"by": by, "coeff": coeff, "normalize": normalize}, node.type)
        return ctx.note(new, f"recombine ∘ {' ∘ '.join(chain)} → unit_scale")
    return Node.make("unit_scale", (d, m), {"by": by, "coeff": 1.0, "normalize": False}, node.type)


def _from_reverse_dir(node: Node, inner: Node, ctx: Any) -> Node | None:
    if not ctx.single_use(inner):
        return None
    by = inner.attr("by")
    new = Node.make("unit_scale", (inner.args[0],), {"by": by, "coeff": -1.0, "normalize": True}, inner.type)
    return ctx.note(new, "reverse ∘ dir → unit_scale")


def _unit_scale_type(t: Typing) -> Type:
    # unit_scale(x[, m]) = coeff * m ⊙ (normalize ? dir(x) : x), per unit of `by`
    operands, by = t.operands["operands"], t.value("by")
    if len(operands) not in (1, 2) or not operands[0].type.is_matrix:
        t.fail(None, "unit_scale takes an update x and an optional magnitude")
    weight = operands[0].type.is_weight  # of a weight, the result is a weight-level value (SPEC §7.8)
    if len(operands) == 2:
        if operands[1].type != mag_t(by):
            t.fail(None, f"unit_scale's magnitude must be Mag[{by}], got {operands[1].type}")
        return WEIGHT if weight else DELTA
    # without a magnitude it is a (possibly reversed) direction
    if not (t.value("normalize") is True and abs(t.value("coeff")) == 1.0):
        t.fail(None, "unit_scale without m must be ±dir(x)")
    return dir_t(by, space=WEIGHT_SPACE if weight else None)


def _unit_scale(ctx, node, x, *m):
    by, coeff = node.attr("by"), ctx.number(node.attr("coeff"))
    scale = L._safe_inv(ctx.unit_norms(x, by, node.args[0]), ctx.eps) if node.attr("normalize") else None
    if m:
        scale = m[0] if scale is None else scale * m[0]
    if scale is None:
        return F.combine([x], [coeff])
    return F.scale_units(x, scale * L.per_module(coeff, scale, x.batch_shape), by)


def _unit_scale_dense(ctx, node, x, *m):
    by, coeff = node.attr("by"), ctx.number(node.attr("coeff"))
    if node.attr("normalize"):
        x = D.dir(x, by, ctx.eps)
    if m:
        x = D.recombine(x, m[0], by)
    return coeff * x


_FLOAT = Attribute(lambda v: isinstance(v, float) or is_schedule(v), "a float or a schedule")

OPERATORS = [
    Operator("lincomb", (Param("terms", Rest(Update())),
                         Param("coeffs", Attribute(lambda v: isinstance(v, tuple) and all(
                             isinstance(c, float) or is_schedule(c) for c in v), "a tuple of floats and schedules"))),
             _lincomb_type, "Σ cᵢ·xᵢ: one concatenation of factors (made by fusion).",
             factored=lambda ctx, node, *xs: F.combine(list(xs), [ctx.number(c) for c in node.attr("coeffs")]),
             dense=lambda ctx, node, *xs: sum(ctx.number(c) * x for c, x in zip(node.attr("coeffs"), xs)),
             fuse=(
                 # a linear tree of + - *k /k and negation over updates -> lincomb (single-use subtrees absorbed)
                 Rule("lincomb", P(("add", "sub", "neg", "mul", "div"), where=lambda n: n.type == DELTA),
                      _to_lincomb),
             ),
             callable=False, returns_label="Delta"),
    Operator("unit_scale", (Param("operands", Rest(Anything())), Param("by", By("by")), Param("coeff", _FLOAT),
                            Param("normalize", Attribute(lambda v: isinstance(v, bool), "a bool"))),
             _unit_scale_type, "coeff · m ⊙ (dir(x) or x), per unit: one scaling folded into a factor (made by "
             "fusion).",
             factored=_unit_scale, dense=_unit_scale_dense,
             fuse=(
                 # recombine(±dir…(x), m) -> unit_scale(x, m): norms once, the scaling folded into a factor
                 # (of updates: a factor's recombine stays, its factor is small)
                 Rule("unit_scale", P("recombine", where=lambda n: n.type == DELTA), _from_recombine),
                 # reverse(dir(x)) -> unit_scale(x; coeff=-1, normalize)
                 Rule("reverse-dir", P("reverse", P("dir", name="inner"), where=lambda n: n.type.of is None),
                      _from_reverse_dir),
             ),
             callable=False, returns_label="Delta | Dir[by]"),
]
