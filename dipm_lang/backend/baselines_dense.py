"""Dense float64 reference of the merge baselines: one module at a time, PEFT's formulas verbatim.

The oracle for backend/baselines.py (tests run every program on both): written as PEFT 0.21's
`merge_utils` reads — lists of tensors, `torch.topk` for magnitude pruning, loops over sources —
and sharing only the DARE masks (which must be identical) and the method table.
Factor methods read the stored factors through `ctx.factors` (the dense backend's values are
m×n matrices, which do not determine A and B); delta methods take the dense ΔWᵢ.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dipm_lang.backend import dense as D
from dipm_lang.backend.baselines import check_ranks, dare_keep, items, merge_rank, module_scales, needs_masks
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.node import Node

if TYPE_CHECKING:
    from dipm_lang.backend.context import GroupContext
    from dipm_lang.backend.merge_method import MergeMethod


def _prune_topk(t: Tensor, density: float) -> Tensor:
    if density >= 1:
        return t
    mask = torch.zeros_like(t).reshape(-1)
    k = int(density * t.numel())
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True)[1]] = 1
    return t * mask.reshape(t.shape)


def peft_merge(method: MergeMethod, tensors: list[Tensor], weights: list[float], density: float | None,
               sign_method: str | None, keeps: list[Tensor] | None) -> Tensor:
    """PEFT's task_arithmetic / ties / dare_linear / dare_ties / magnitude_prune on a list of tensors."""
    base = method.base
    if base in ("ties", "magnitude_prune"):
        tensors = [_prune_topk(t, density) for t in tensors]  # type: ignore[arg-type]
    elif base in ("dare_linear", "dare_ties") and keeps is not None:
        tensors = [t * k.to(t.dtype) / density for t, k in zip(tensors, keeps)]  # type: ignore[operator]
    stacked = torch.stack(tensors)
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype).reshape(-1, 1, 1)
    if base in ("ties", "dare_ties"):
        sign = stacked.sign()
        strength = stacked.sum(0) if sign_method == "total" else sign.sum(0)
        agree = sign == torch.where(strength >= 0, 1, -1)
        return (weighted * agree).sum(0) / torch.clamp(agree.sum(0), min=1.0)
    return weighted.sum(0)


def merge_dense_kernel(method: MergeMethod, ctx: GroupContext, node: Node, args: list) -> Tensor:
    weights = [ctx.number(w) for w in node.attr("weights")]  # one module: schedules are numbers here
    density = None if node.attr("density") is None else ctx.number(node.attr("density"))
    sign = node.attr("majority_sign_method")
    (name,) = ctx.names
    if method.space == "delta":
        keeps = None
        if needs_masks(method, density):
            keeps = [dare_keep(node.attr("seed"), name, i, "delta", w.shape, density) for i, w in enumerate(args)]
        merged = peft_merge(method, list(args), weights, density, sign, keeps)
        return D.lowrank(merged, merge_rank(node, ctx))[0]
    if ctx.factors is None:
        raise ExecutionError(f"{method.name}: the dense reference needs the inputs' factors")
    a_list, b_list, wa, wb, ranks, index = [], [], [], [], {}, []
    for i, (load, w) in enumerate(zip(items(node), weights)):
        factors = ctx.factors(load)
        if factors.rank == 0:
            continue  # PEFT skips an adapter that lacks the module
        (s,) = module_scales(ctx, load, method.name)
        ws = w * s
        wa.append(math.sqrt(abs(ws)) * (1 if ws >= 0 else -1))
        wb.append(math.sqrt(abs(ws)))
        a_list.append(factors.A[0])
        b_list.append(factors.B[0] / s if s != 0 else torch.zeros_like(factors.B[0]))
        ranks[i] = factors.rank
        index.append(i)
    if not a_list:
        return torch.zeros_like(args[0])
    check_ranks(method.name, ranks)
    keep_a = keep_b = None
    if needs_masks(method, density):
        keep_a = [dare_keep(node.attr("seed"), name, i, "A", a.shape, density) for i, a in zip(index, a_list)]
        keep_b = [dare_keep(node.attr("seed"), name, i, "B", b.shape, density) for i, b in zip(index, b_list)]
    merged_a = peft_merge(method, a_list, wa, density, sign, keep_a)
    merged_b = peft_merge(method, b_list, wb, density, sign, keep_b)
    return merged_b @ merged_a
