"""Compact SVD of factored updates (SPEC §7 preamble), the building block of the SVD-family merges.

SPEC §7's SVDs are *compact*: computed in float64, singular values σ ≤ 1e-10·σ₁ count as zero and
their vectors are dropped. For ΔW = B @ A we never form the m×n matrix: with B = Q_B R_B and
Aᵀ = Q_A R_A, ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ, so the SVD of the small core R_B R_Aᵀ (at most k×k) gives
ΔW's singular values and, through Q_B and Q_A, its singular vectors.

Batches: a `LowRank` may stack G modules of one shape. Each module keeps its own number of
singular values; the batch is returned with the largest kept count, the others padded with zero
singular values and zero vectors and flagged in `keep`. Padding never changes a module's value,
so a module's result does not depend on its batch-mates.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank

RTOL = 1e-10
"""A singular value σ ≤ RTOL·σ₁ counts as zero (SPEC §7)."""

F64 = torch.float64

__all__ = ["RTOL", "CompactSVD", "compact_svd", "svd_from_core", "fix_signs", "mask_columns", "polar"]


class CompactSVD(NamedTuple):
    """ΔW = U · diag(S) · Vh per module; all float64. Dropped directions have S = 0 and zero vectors."""

    U: Tensor  # [..., m, k]
    S: Tensor  # [..., k], descending within each module
    Vh: Tensor  # [..., k, n]
    keep: Tensor  # [..., k] bool: the module's own (kept) singular values

    @property
    def ranks(self) -> Tensor:
        """Numerical rank of each module (int64, shape `[...]`)."""
        return self.keep.sum(-1)


def fix_signs(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """Flip singular pairs so the largest-|·| entry of each left vector is positive (as `lowrank._svd`).

    `left` [..., m, p] (vectors as columns), `right` [..., p, n] (vectors as rows). The output then
    depends on ΔW only, not on the factors or on LAPACK's choices.
    """
    if left.shape[-1] == 0 or left.shape[-2] == 0:
        return left, right
    pivot = left.abs().argmax(dim=-2, keepdim=True)
    sign = torch.gather(left, -2, pivot).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)  # [..., 1, p]
    return left * sign, right * sign.mT


def mask_columns(S: Tensor, rtol: float = RTOL) -> Tensor:
    """Which singular values count as nonzero: σ > rtol·σ₁, per module (S sorted descending)."""
    if S.shape[-1] == 0:
        return torch.zeros_like(S, dtype=torch.bool)
    return S > rtol * S[..., :1]


def svd_from_core(qb: Tensor, core: Tensor, rtol: float = RTOL) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Compact SVD of `qb @ core` (qb with orthonormal columns): (U, S, vh_core, keep).

    `vh_core` [..., k, c] are the right singular vectors in the core's column coordinates (the caller
    maps them back). Signs fixed, trailing dropped directions trimmed to the batch's largest kept
    count, the rest zeroed.
    """
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    left, vh = fix_signs(qb @ u, vh)
    keep = mask_columns(s, rtol)
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    left, s, vh, keep = left[..., :width], s[..., :width], vh[..., :width, :], keep[..., :width]
    kept = keep.to(s.dtype)
    return left * kept[..., None, :], s * kept, vh * kept[..., :, None], keep


def compact_svd(x: LowRank, rtol: float = RTOL) -> CompactSVD:
    """Compact SVD of ΔW = B @ A in float64, from the factors (never m×n).

    Returns `CompactSVD(U [..., m, k], S [..., k], Vh [..., k, n], keep [..., k])`, all float64 on
    x's device, whatever x's dtype: the callers combine them in float64 and cast once at the end.
    k is the largest numerical rank in the batch (0 for a zero update).
    """
    batch = x.batch_shape
    if x.rank == 0:
        return CompactSVD(
            torch.zeros(*batch, x.m, 0, dtype=F64, device=x.device),
            torch.zeros(*batch, 0, dtype=F64, device=x.device),
            torch.zeros(*batch, 0, x.n, dtype=F64, device=x.device),
            torch.zeros(*batch, 0, dtype=torch.bool, device=x.device),
        )
    B, A = x.B.to(F64), x.A.to(F64)
    qb, rb = torch.linalg.qr(B)  # [..., m, p_b], [..., p_b, k]
    qa, ra = torch.linalg.qr(A.mT)  # [..., n, p_a], [..., p_a, k]
    U, S, vh, keep = svd_from_core(qb, rb @ ra.mT, rtol)
    return CompactSVD(U, S, vh @ qa.mT, keep)


def polar(M: Tensor, rtol: float = RTOL) -> Tensor:
    """Compact polar factor P Qᵀ of M = P S Qᵀ ([..., a, b], float64), dropping σ ≤ rtol·σ₁.

    For M with orthonormal columns this is M itself; zero columns of M stay zero columns.
    Computed through a QR of M (a×b, b small) and the SVD of its b×b triangle, so a tall M of
    200 000 rows costs O(a·b²).
    """
    if M.shape[-1] == 0 or M.shape[-2] == 0:
        return torch.zeros_like(M)
    q, r = torch.linalg.qr(M)  # [..., a, p], [..., p, b]
    left, _, right, _ = svd_from_core(q, r, rtol)
    return left @ right
