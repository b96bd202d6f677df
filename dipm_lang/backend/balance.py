"""Re-balancing factors before a low-precision cast (faithful float32 outputs).

A result that nearly cancels — x − (x + 1e-4·y) by concatenation, `orth` of nearly parallel units —
is exact in float64 but its factors are much larger than the update they make: ‖B‖·‖A‖/‖ΔW‖ in the
thousands. Casting such factors to float32 rounds each entry by ~6e-8 of *its* size, so the product
is off by ~6e-8 × that ratio: up to 1e-4 relative. Re-factoring exactly first (`balanced`: QR of
both factors, SVD of the small core, B = U√S, A = √S Vᵀ) brings the ratio down to
Σσ/‖σ‖ ≤ √rank, and the cast then keeps float32's own precision.

Factors that are fine — an input's own, or anything whose cast already meets the tolerance — are
left bit for bit: `balance_for_cast` re-factors only the modules whose measured cast error is above
`rtol` and for which the balanced factors measure better.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dipm_lang.backend.factored_svd import F64, compact_svd
from dipm_lang.backend.lowrank import LowRank, unit_norms

__all__ = ["NOISE_FLOOR", "balanced", "cast_error", "default_rtol", "balance_for_cast"]

NOISE_FLOOR = 4.0
"""`balanced` also drops directions with σ ≤ NOISE_FLOOR·eps64·‖B‖_F·‖A‖_F: the float64 core
cannot resolve them from rounding (its absolute error is ~eps64·‖B‖·‖A‖), so an exactly
cancelling result (x − x) becomes an exact zero instead of balanced noise."""


def balanced(x: LowRank) -> LowRank:
    """x re-factored exactly as B = U√S, A = √S Vᵀ (compact SVD in float64), in x's dtype.

    Numerically-zero directions are dropped (σ ≤ 1e-10·σ₁, SPEC §7, or below the float64 noise
    floor, see NOISE_FLOOR); a batch keeps its largest remaining rank, padded with zeros.
    The rank never grows.
    """
    U, S, Vh, keep = compact_svd(x)
    scale = torch.linalg.vector_norm(x.B.to(F64), dim=(-2, -1)) * torch.linalg.vector_norm(x.A.to(F64), dim=(-2, -1))
    keep = keep & (S > NOISE_FLOOR * torch.finfo(F64).eps * scale[..., None])
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    root = torch.where(keep, S, torch.zeros((), dtype=F64, device=S.device)).sqrt()[..., :width]
    B = U[..., :width] * root[..., None, :]
    A = root[..., :, None] * Vh[..., :width, :]
    return LowRank(B.to(x.dtype), A.to(x.dtype))


def cast_error(x: LowRank, dtype: torch.dtype) -> Tensor:
    """‖B̃Ã − BA‖_F / ‖BA‖_F per module after casting the factors to `dtype` (float64, `[...]`).

    Computed on the factors in float64 (the difference is the rank-2k update [B̃, −B]·[Ã; A]); a
    zero update gives 0 when the cast product is zero too, else inf.
    """
    B, A = x.B.to(F64), x.A.to(F64)
    B_cast, A_cast = x.B.to(dtype).to(F64), x.A.to(dtype).to(F64)
    difference = unit_norms(LowRank(torch.cat([B_cast, -B], dim=-1), torch.cat([A_cast, A], dim=-2)), "matrix")
    size = unit_norms(LowRank(B, A), "matrix")
    ratio = difference / torch.where(size > 0, size, torch.ones_like(size))
    return torch.where(size > 0, ratio, torch.where(difference > 0, torch.inf, 0.0))


def default_rtol(dtype: torch.dtype) -> float:
    """The cast error we accept without re-factoring: 8 ulps of the target (9.5e-7 for float32)."""
    return 8.0 * torch.finfo(dtype).eps


def balance_for_cast(x: LowRank, dtype: torch.dtype, rtol: float | None = None) -> tuple[LowRank, Tensor]:
    """x cast to `dtype`, re-balanced first in the modules where that makes the cast faithful.

    A module is re-factored (`balanced`) when casting its own factors loses more than `rtol`
    (relative Frobenius error, default `default_rtol(dtype)`) and the balanced factors lose less;
    every other module keeps its factors bit for bit. Returns (the LowRank in `dtype`, with x's
    rank — balanced modules padded with zero directions — and the per-module bool mask of the
    re-factored modules). A module's choice never depends on its batch-mates.
    """
    rtol = default_rtol(dtype) if rtol is None else rtol
    before = cast_error(x, dtype)
    flagged = before > rtol
    if not bool(flagged.any()):
        return x.to(dtype), flagged
    candidate = balanced(x.to(F64))
    after = cast_error(candidate, dtype)
    use = flagged & (after < before)
    pad = x.rank - candidate.rank  # ≥ 0: the compact rank never exceeds the factors' rank
    B = torch.nn.functional.pad(candidate.B, (0, pad))
    A = torch.nn.functional.pad(candidate.A, (0, 0, 0, pad))
    chosen_B = torch.where(use[..., None, None], B.to(dtype), x.B.to(dtype))
    chosen_A = torch.where(use[..., None, None], A.to(dtype), x.A.to(dtype))
    return LowRank(chosen_B, chosen_A), use
