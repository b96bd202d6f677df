"""Operators on whole updates and on their factors (SPEC §3): `lowrank`, `x.A` / `x.B`, `lora`."""

from __future__ import annotations

from dipm_lang.errors import ExecutionError
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import Choice, FactorOf, Int, Param, Typing, Update
from dipm_lang.ir.types import DELTA, Type, factor_t
from dipm_lang.ops.backend import D, L
from dipm_lang.ops.backend import svd_merges_dense as SMD


def _lora(ctx, node, B, A):
    """B @ A, factored. A module one adapter lacks has a rank-0 factor there: a zero factor of its
    partner's shape (SPEC §7.3), so the update is zero."""
    if B.shape[-1] == 0 or A.shape[-2] == 0:
        return L.LowRank.zeros(B.shape[-2], A.shape[-1], B.shape[:-2], B.dtype, B.device)
    _check_ranks(ctx, B, A)
    return L.LowRank(B, A)


def _lora_dense(ctx, node, B, A):
    if B.shape[-1] == 0 or A.shape[-2] == 0:
        return B.new_zeros((*B.shape[:-1], A.shape[-1]))
    _check_ranks(ctx, B, A)
    return B @ A


def _check_ranks(ctx, B, A) -> None:
    if B.shape[-1] != A.shape[-2]:
        raise ExecutionError(f"lora: B has rank {B.shape[-1]} but A has rank {A.shape[-2]} in module {ctx.names[0]}")


def _factor_dense(ctx, node, x):
    """x.A / x.B in the dense reference, whose values are m×n matrices that do not determine the
    factors: an adapter's factors are read again (`ctx.factors`, one module at a time), and those of
    `align(x, xs)` computed from its adapters' factors by the dense reference of the alignment."""
    source = node.args[0]
    if source.op not in ("load", "align") or ctx.factors is None:
        raise ExecutionError("the dense reference has the factors of adapters only (x.A of a lora(...) value)")
    if source.op == "align":
        items = source.args[1].args
        read = [ctx.factors(item)[0] for item in items]
        index = [item is source.args[0] for item in items].index(True)
        B, A = SMD.aligned_factors([f.B for f in read], [f.A for f in read], index, source.attr("side"))
        return A if node.attr("which") == "A" else B
    factors = ctx.factors(source)
    return (factors.A if node.attr("which") == "A" else factors.B)[0]


def _swapped(t: Typing) -> None:
    if t.type("B").factor == "A" and t.type("A").factor == "B":
        t.fail(None, "the arguments look swapped: it takes (B, A), like ΔW = B @ A")


def _factor_type(t: Typing) -> Type:
    return factor_t(t.value("which"))


def _factor_of_update(t: Typing) -> None:
    ty = t.type("x")
    if not ty.is_update:
        t.fail("x", f"'.{t.values.get('which')}' needs a Delta, got {ty}")
    if t.node("x").op not in ("load", "lora", "align"):  # SPEC §7.3; align's factors are its contract
        t.fail("x", f"'.{t.values.get('which')}' needs an adapter (load(...)), lora(B, A) or align(x, xs), not a "
                    f"computed {ty}: the factors of a computed value depend on the implementation")


OPERATORS = [
    Operator("lowrank", (Param("x", Update()), Param("rank", Int(minimum=1))), DELTA,
             "Best rank-r approximation (truncated SVD of the factors; Eckart-Young).",
             factored=lambda ctx, node, x: L.lowrank(x, node.attr("rank"))[0],
             dense=lambda ctx, node, x: D.lowrank(x, node.attr("rank"))[0]),
    Operator("factor", (Param("x", Update()), Param("which", Choice(("A", "B")))), _factor_type,
             "x.A / x.B: one LoRA factor of an update, the scale folded into B (ΔW = x.B @ x.A).",
             factored=lambda ctx, node, x: x.A if node.attr("which") == "A" else x.B, dense=_factor_dense,
             precheck=_factor_of_update, callable=False, returns_label="Factor[A|B]"),
    Operator("lora", (Param("B", FactorOf("B")), Param("A", FactorOf("A"))), DELTA,
             "The update B @ A from two factors (see x.A and x.B).",
             factored=_lora, dense=_lora_dense, precheck=_swapped),
]
