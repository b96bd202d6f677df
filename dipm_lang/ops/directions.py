"""Modulators on directions (SPEC §3, §7.1): `reverse`, `shift`, `lerp`, `mix`, `orth`.

Each returns a `Dir[by]`, unit by unit; the factored kernels never build an m×n matrix. Directions
of values in DoRA's form (SPEC §7.8: DoRA adapters, weights) go through `backend/forms.py`; directions
of factors (SPEC §7.3) go through the same kernels (`factorwise`) and stay directions of that factor.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.patterns import P, Rule, Var
from dipm_lang.ops.core import is_number
from dipm_lang.ir.signature import DirOf, ListOf, Number, Param, Weights
from dipm_lang.ops.backend import D, F, L
from dipm_lang.ops.factorwise import factorwise

D_, E_, T_ = Var("d"), Var("e"), Var("t")
TWO_DIRECTIONS = (Param("d", DirOf("by")), Param("e", DirOf("by")))
# t = 0 is d, t = 1 is e; the SPEC allows any real t, but one far outside [0, 1] is rarely meant
EXTRAPOLATES = Number(warn_outside=(-1.0, 2.0), note=" (allowed: it extrapolates far beyond d and e)")


def _constant(value: float) -> P:
    return P("const", where=lambda n: is_number(n, value))


def _weights(ctx, weights: list, count: int) -> list:
    """A mix's weights as the kernel takes them (one per module where a weight is a schedule)."""
    return [ctx.number(w) for w in weights] if weights else [1.0] * count  # [] means equal weights


def _shift(ctx, node, d, e, t):
    """The angles between d and e do not depend on t: one batch computes them once for every
    shift of the pair (a sweep's points, a recipe at several t)."""
    by = node.type.by
    if F.has_form(d, e):
        return F.shift(d, e, ctx.number(t), by, ctx.eps, ctx.weights())
    angle = ctx.shared(f"shift angle {by}", (d, e), lambda: L.shift_angle(d, e, by, ctx.eps))
    return L.shift(d, e, ctx.number(t), by, ctx.eps, angle=angle)


def _path(ctx, t) -> list:
    """lerp's weights (1 − t, t)."""
    t = ctx.number(t)
    return [1.0 - t, t]


def _mix(ctx, ds, ws, by):
    """normalize(Σ wᵢ·dᵢ), with W0 when a direction is in DoRA's form."""
    return F.mix(ds, ws, by, ctx.eps, ctx.weights() if F.has_form(*ds) else None)


def _orth(ctx, d, e, by):
    return F.orth(d, e, by, ctx.eps, ctx.weights() if F.has_form(d, e) else None)


OPERATORS = [
    Operator("reverse", (Param("d", DirOf("by")),), DirOf("by"), "The opposite direction, -d.",
             factored=factorwise(lambda ctx, node, d: F.reverse(d)),
             dense=factorwise(lambda ctx, node, d: D.reverse(d), wrap=False),
             simplify=(
                 # reverse(reverse(d)) -> d
                 Rule("reverse-reverse", P("reverse", P("reverse", D_)), lambda d: d),
             ),
             maps_over_lists=True),
    Operator("shift", (*TWO_DIRECTIONS, Param("t", EXTRAPOLATES)), DirOf("by"),
             "Move d toward e along the great circle by the fraction t (per-unit slerp).",
             factored=factorwise(_shift),
             dense=factorwise(lambda ctx, node, d, e, t: D.shift(d, e, ctx.number(t), node.type.by, ctx.eps),
                              wrap=False),
             simplify=(
                 # shift(d, e, 0) -> d
                 Rule("shift-0", P("shift", D_, E_, _constant(0.0)), lambda d: d),
                 # shift(d, e, 1) -> e
                 Rule("shift-1", P("shift", D_, E_, _constant(1.0)), lambda e: e),
                 # shift(d, d, t) -> d
                 Rule("shift-same", P("shift", D_, D_, T_), lambda d: d),
             )),
    Operator("lerp", (*TWO_DIRECTIONS, Param("t", EXTRAPOLATES)), DirOf("by"),
             "normalize((1-t)*d + t*e) per unit: the straight path from d to e, renormalised.",
             factored=factorwise(lambda ctx, node, d, e, t: _mix(ctx, [d, e], _path(ctx, t), node.type.by)),
             dense=factorwise(lambda ctx, node, d, e, t: D.mix([d, e], _path(ctx, t), node.type.by, ctx.eps),
                              wrap=False),
             simplify=(
                 # lerp(d, e, 0) -> d   (d is a direction: normalize(d) = d)
                 Rule("lerp-0", P("lerp", D_, E_, _constant(0.0)), lambda d: d),
                 # lerp(d, e, 1) -> e
                 Rule("lerp-1", P("lerp", D_, E_, _constant(1.0)), lambda e: e),
                 # lerp(d, d, t) -> d   ((1-t)·d + t·d = d)
                 Rule("lerp-same", P("lerp", D_, D_, T_), lambda d: d),
             )),
    Operator("mix", (Param("dirs", ListOf(DirOf("by"), "directions")), Param("weights", Weights("dirs"), [])),
             DirOf("by"), "normalize(sum of w_i * d_i); [] or omitted weights: all equal.",
             factored=factorwise(lambda ctx, node, dirs, w: _mix(ctx, dirs, _weights(ctx, w, len(dirs)),
                                                                 node.type.by)),
             dense=factorwise(lambda ctx, node, dirs, w: D.mix(dirs, _weights(ctx, w, len(dirs)), node.type.by,
                                                                ctx.eps), wrap=False)),
    Operator("orth", TWO_DIRECTIONS, DirOf("by"), "Remove from d its component along e, then normalize.",
             factored=factorwise(lambda ctx, node, d, e: _orth(ctx, d, e, node.type.by)),
             dense=factorwise(lambda ctx, node, d, e: D.orth(d, e, node.type.by, ctx.eps), wrap=False)),
]
