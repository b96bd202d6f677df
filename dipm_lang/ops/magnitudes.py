"""Modulators on magnitudes (SPEC §3): `mean`, `max`, `min`, `abs` (and `+ - * /`, in core)."""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import ListOf, MagOf, MagOrNumber, Param, Typing, Weights
from dipm_lang.ir.types import Type
from dipm_lang.ops.backend import arith


def _elementwise(t: Typing) -> Type:
    names = [p.name for p in t.op.operand_params]
    return next((t.type(n) for n in names if t.type(n).kind == "Mag"), t.type(names[0]))


def _extremum(which: str) -> Operator:
    return Operator(which, (Param("a", MagOrNumber("by")), Param("b", MagOrNumber("by"))), _elementwise,
                    f"Elementwise {'maximum' if which == 'max' else 'minimum'}.",
                    factored=lambda ctx, node, a, b: arith.extremum(which, a, b), returns_label="Mag[by] | Num")


OPERATORS = [
    Operator("mean", (Param("mags", ListOf(MagOf("by"), "magnitudes")), Param("weights", Weights("mags"), [])),
             MagOf("by"), "Weighted mean of magnitudes: sum(w_i m_i) / sum(w_i); [] or omitted weights: all equal.",
             factored=lambda ctx, node, mags, w: arith.weighted_mean(mags, [float(x) for x in w] or [1.0] * len(mags))),
    _extremum("max"),
    _extremum("min"),
    Operator("abs", (Param("a", MagOrNumber("by")),), _elementwise, "Elementwise absolute value.",
             factored=lambda ctx, node, a: abs(a), returns_label="Mag[by] | Num"),
]
