"""Modulators on magnitudes (SPEC §3): `mean`, `max`, `min`, `abs` (and `+ - * /`, in core)."""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import ListOf, MagOf, MagOrNumber, Param, Typing, Weights
from dipm_lang.ir.types import NUM, SCHEDULE, Type
from dipm_lang.ops.backend import arith
from dipm_lang.ops.factorwise import factorwise


def _elementwise(t: Typing) -> Type:
    types = [t.type(p.name) for p in t.op.operand_params]
    mags = [ty for ty in types if ty.kind == "Mag"]
    if mags:
        return mags[0]
    return SCHEDULE if SCHEDULE in types else NUM  # numbers: a schedule if one of them is


def _numbers_of(ctx, node, values):
    """A magnitude's numeric operands as kernels use them (one per module for a schedule); the
    operands of a plain number stay symbolic (a number node is computed once for all modules)."""
    if node.type.is_number:
        return values
    return [ctx.number(v) if arg.type.is_number else v for arg, v in zip(node.args, values)]


def _extremum(which: str) -> Operator:
    return Operator(which, (Param("a", MagOrNumber("by")), Param("b", MagOrNumber("by"))), _elementwise,
                    f"Elementwise {'maximum' if which == 'max' else 'minimum'}.",
                    factored=factorwise(lambda ctx, node, a, b: arith.extremum(which, *_numbers_of(ctx, node, (a, b))),
                                        wrap=False),
                    returns_label="Mag[by] | Num")


OPERATORS = [
    Operator("mean", (Param("mags", ListOf(MagOf("by"), "magnitudes")), Param("weights", Weights("mags"), [])),
             MagOf("by"), "Weighted mean of magnitudes: sum(w_i m_i) / sum(w_i); [] or omitted weights: all equal.",
             factored=factorwise(lambda ctx, node, mags, w: arith.weighted_mean(
                 mags, [ctx.number(x) for x in w] or [1.0] * len(mags)), wrap=False)),
    _extremum("max"),
    _extremum("min"),
    Operator("abs", (Param("a", MagOrNumber("by")),), _elementwise, "Elementwise absolute value.",
             factored=lambda ctx, node, a: abs(a), returns_label="Mag[by] | Num"),  # Schedule defines abs
]
