"""Operators on whole updates and on their factors (SPEC §3): `lowrank`, `x.A` / `x.B`, `lora`."""

from __future__ import annotations

from dipm_lang.errors import ExecutionError
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import Choice, FactorOf, Int, Param, Typing, Update
from dipm_lang.ir.types import DELTA, Type, factor_t
from dipm_lang.ops.backend import D, L


def _lora(ctx, node, B, A):
    if B.shape[-1] != A.shape[-2]:
        raise ExecutionError(f"lora: B has rank {B.shape[-1]} but A has rank {A.shape[-2]} in module {ctx.names[0]}")
    return L.LowRank(B, A)


def _no_dense(ctx, node, *args):
    raise ExecutionError("x.A / x.B have no dense reference (factors are not a function of ΔW)")


def _swapped(t: Typing) -> None:
    if t.type("B") == factor_t("A") and t.type("A") == factor_t("B"):
        t.fail(None, "the arguments look swapped: it takes (B, A), like ΔW = B @ A")


def _factor_type(t: Typing) -> Type:
    return factor_t(t.value("which"))


def _factor_of_update(t: Typing) -> None:
    ty = t.type("x")
    if not ty.is_update:
        t.fail("x", f"'.{t.values.get('which')}' needs a Delta, got {ty}")


OPERATORS = [
    Operator("lowrank", (Param("x", Update()), Param("rank", Int(minimum=1))), DELTA,
             "Best rank-r approximation (truncated SVD of the factors; Eckart-Young).",
             factored=lambda ctx, node, x: L.lowrank(x, node.attr("rank"))[0],
             dense=lambda ctx, node, x: D.lowrank(x, node.attr("rank"))[0]),
    Operator("factor", (Param("x", Update()), Param("which", Choice(("A", "B")))), _factor_type,
             "x.A / x.B: one LoRA factor of an update, the scale folded into B (ΔW = x.B @ x.A).",
             factored=lambda ctx, node, x: x.A if node.attr("which") == "A" else x.B, dense=_no_dense,
             precheck=_factor_of_update, callable=False, returns_label="Factor[A|B]"),
    Operator("lora", (Param("B", FactorOf("B")), Param("A", FactorOf("A"))), DELTA,
             "The update B @ A from two factors (see x.A and x.B).",
             factored=_lora, dense=_no_dense, precheck=_swapped),
]
