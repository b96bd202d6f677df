"""Merges defined on singular vectors (SPEC §7.9) and the shared basis of factors: `iso` (Iso-C),
`knots` (KnOTS), `tsv` (Task Singular Vectors), `align`.

All of them are LoRA in, LoRA out: the factored kernels (backend/svd_merges.py) compute compact SVDs
in float64 from the factors — QR of the stacked factors, an SVD of a small core — and never build an
m×n matrix; the dense kernels (backend/svd_merges_dense.py) are the SPEC's formulas on m×n matrices,
the reference the factored ones are tested against. Weights are used as given (not square-rooted,
unlike PEFT's factor merges) and, like `density` and `k`, may be schedules (one number per module).

`align(x, xs, side="A")` is x, exactly, written over one orthonormal factor shared by every adapter of
`xs` (the thin SVD of their stacked A's, or B's): its `.A` is the same for all of them, so factor-level
recipes (`dir(x.B)`, `shift` of B's) compare the adapters in one basis, as they do for adapters that
share their initial A.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import Choice, Int, Numbers, Param, Real, Typing, Update, UpdateList, require_adapters
from dipm_lang.ir.types import DELTA
from dipm_lang.ops.backend import svd_merges as SM
from dipm_lang.ops.backend import svd_merges_dense as SMD

XS = Param("xs", UpdateList())
WEIGHTS = Param("weights", Numbers(of="xs"), None)
KNOTS_METHODS = ("ties", "linear")


def _weights(ctx, node) -> list:
    """One number per input, or one per module of the batch where a weight is a schedule."""
    return [ctx.number(w) for w in node.attr("weights")]


def _optional(ctx, value):
    return None if value is None else ctx.number(value)


def _whole(value):
    """tsv's k as the library takes it: an int, or one int per module."""
    if value is None or isinstance(value, float):
        return None if value is None else int(value)
    return value.round().long()


def _knots(ctx, node, xs):
    return SM.knots(xs, _weights(ctx, node), node.attr("method"), _optional(ctx, node.attr("density")))


def _knots_dense(ctx, node, xs):
    return SMD.knots(xs, _weights(ctx, node), node.attr("method"), _optional(ctx, node.attr("density")))


def _density_for_ties(t: Typing) -> None:
    if t.value("method") == "ties" and t.value("density") is None:
        t.fail("density", "knots with method=\"ties\" needs density= (the fraction of each input's entries it keeps)",
               hint="e.g. knots([x, y], density=0.2), or method=\"linear\"")
    if t.value("method") == "linear" and t.value("density") is not None:
        t.warn("density", "density is ignored with method=\"linear\"")


# ---- align --------------------------------------------------------------------------------------

def _align_check(t: Typing) -> None:
    x, items = t.node("x"), t.items("xs")
    if x.op != "load":
        t.fail("x", f"'x' must be an adapter (a load(...)), not a computed {x.type}: align re-expresses its stored "
                    "factors")
    require_adapters(t, "xs", "align re-expresses the adapters' stored factors")
    if not any(item is x for item in items):
        t.fail("xs", "'x' must be one of 'xs': the shared basis spans the adapters it is computed from",
               hint="e.g. align(h, [h, bad])")


def _align(ctx, node, x, xs):
    """The shared basis is computed once per batch for every align over the same adapters and side."""
    side = node.attr("side")
    aligned = ctx.shared(f"align {side}", tuple(xs), lambda: SM.align(xs, side))
    return aligned[[item is node.args[0] for item in node.args[1].args].index(True)]


OPERATORS = [
    Operator("iso", (XS, WEIGHTS), DELTA,
             "Iso-C: from the compact SVD Σ wᵢxᵢ = U Σ Vᵀ, the update σ̄·U Vᵀ (σ̄ the mean singular value): "
             "every direction of the sum at one strength. Factored (never m×n); rank = rank of the sum.",
             factored=lambda ctx, node, xs: SM.iso(xs, _weights(ctx, node)),
             dense=lambda ctx, node, xs: SMD.iso(xs, _weights(ctx, node))),
    Operator("knots", (XS, WEIGHTS, Param("method", Choice(KNOTS_METHODS, {"ta": "linear", "sum": "linear"}), "ties"),
                       Param("density", Real(0.0, 1.0, schedules=True, optional=True), None)), DELTA,
             "KnOTS: the compact SVD [x₁ … xₙ] = U Σ Vᵀ gives one basis U for all; each input's block Zᵢ of Σ Vᵀ "
             "is merged — \"ties\" (density required: keep the top density of each block by |value|, elect signs, "
             "average the agreeing weighted entries) or \"linear\" (Σ wᵢZᵢ) — and the result is U·merged.",
             factored=_knots, dense=_knots_dense, check=_density_for_ties),
    Operator("tsv", (XS, WEIGHTS, Param("k", Int(minimum=1, optional=True, schedules=True), None)), DELTA,
             "Task Singular Vectors: each input's top k singular triplets, the stacked vectors orthogonalised "
             "(polar factors), U⊥·blockdiag(wᵢΣᵢ)·V⊥ᵀ. k defaults to max(1, ⌊r/n⌋), r the smallest input rank.",
             factored=lambda ctx, node, xs: SM.tsv(xs, _weights(ctx, node), _whole(_optional(ctx, node.attr("k")))),
             dense=lambda ctx, node, xs: SMD.tsv(xs, _weights(ctx, node), _whole(_optional(ctx, node.attr("k"))))),
    Operator("align", (Param("x", Update()), Param("xs", UpdateList()), Param("side", Choice(("A", "B")), "A")),
             DELTA,
             "x (exactly) over one orthonormal factor shared by all the adapters xs (x among them): the thin SVD "
             "of their stacked A's (side=\"A\"; or B's), so align(x, xs).A is the same for every x — "
             "factor-level recipes (dir(x.B), shift of B's) then compare them in one basis.",
             factored=_align, dense=lambda ctx, node, x, xs: x, check=_align_check),
]
