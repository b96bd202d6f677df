"""Factors decoupled like updates (SPEC §7.3): `dir(x.B)`, `shift` of two B's, `recombine` into a B.

A factor is a small explicit matrix (B: m×r, A: r×n), and its units are its rows, its columns or the
whole of it — exactly the units of an update whose matrix it is. So rather than a second copy of the
decoupling kernels (with their float32 care: cancelled units recomputed in float64, `shift`'s
near-parallel angles), a factor is handed to the update kernels as the update it *is*: B as the
factored value B·I_r, A as I_r·A. Per-unit scalings then fold into B (or A) as usual, sums
concatenate, and `as_factor` multiplies the r×r (or 2r×r …) inner factors back — never an m×n matrix.

A module one adapter lacks is a zero factor of its partner's shape (SPEC §7.3): `fill_missing`
widens rank-0 operands (and the magnitudes of their rank components) before they combine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import ExecutionError

__all__ = ["as_update", "as_factor", "fill_missing"]


def _identity(r: int, like: Tensor, batch: Sequence[int]) -> Tensor:
    return torch.eye(r, dtype=like.dtype, device=like.device).expand(*batch, r, r)


def as_update(factor: Tensor, side: str) -> LowRank:
    """The factored update whose matrix is `factor`: B [..., m, r] as B·I, A [..., r, n] as I·A."""
    batch = factor.shape[:-2]
    if side == "B":
        return LowRank(factor, _identity(factor.shape[-1], factor, batch))
    return LowRank(_identity(factor.shape[-2], factor, batch), factor)


def as_factor(x: LowRank, side: str) -> Tensor:
    """The matrix of an update made from a factor by `as_update` (B @ A: m×k·k×r or r×k·k×n)."""
    return x.B @ x.A


def fill_missing(values: Sequence[Tensor], axes: Sequence[int | None], dims: Sequence[int]) -> list[Tensor]:
    """Operands of one operator with their rank axis (None: not a rank-sized value) and how many
    trailing dims one module's value has (2 for a factor, 1 for magnitudes): a rank-0 operand — a
    module its adapter lacks — becomes zeros of its partners' rank; unequal nonzero ranks are an error
    (factors of adapters of different ranks), named with one module's shapes."""
    sized = [(v, a, d) for v, a, d in zip(values, axes, dims) if a is not None]
    ranks = {v.shape[a] for v, a, _ in sized} - {0}
    if len(ranks) > 1:
        nonzero = [(v, d, v.shape[a]) for v, a, d in sized if v.shape[a]]
        first = nonzero[0]
        other = next(item for item in nonzero if item[2] != first[2])
        raise ExecutionError(f"factor shapes differ: {tuple(first[0].shape[-first[1]:])} and "
                             f"{tuple(other[0].shape[-other[1]:])} (factors of adapters with different ranks)")
    if not ranks:
        return list(values)
    rank = ranks.pop()
    out = []
    for value, axis in zip(values, axes):
        if axis is not None and value.shape[axis] == 0:
            shape = list(value.shape)
            shape[axis] = rank
            value = value.new_zeros(shape)
        out.append(value)
    return out
