"""Dense float64 reference of SPEC §7.9 (Iso-C, KnOTS, TSV) and of `align`, on m×n matrices.

The oracle the factored merges of `svd_merges.py` run against in the dense backend (one module at a
time, `dipm run --dense`, the equivalence tests): plain `torch.linalg.svd` of the m×n matrices, the
SPEC's formulas written out, nothing clever. SVDs are compact (σ ≤ 1e-10·σ₁ dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dipm_lang.backend.baselines import majority_sign_mask, prune_magnitude
from dipm_lang.backend.factored_svd import RTOL

__all__ = ["compact_svd", "iso", "knots", "tsv", "aligned_factors"]


def compact_svd(W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U, S, Vh of W with σ ≤ 1e-10·σ₁ dropped; each left vector's largest-|·| entry positive."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    keep = S > RTOL * S[0] if S.numel() else S > 0
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    if S.numel():
        sign = U.gather(0, U.abs().argmax(0, keepdim=True)).sign()
        sign[sign == 0] = 1
        U, Vh = U * sign, Vh * sign.T
    return U, S, Vh


def iso(Ws: Sequence[Tensor], w: Sequence[float]) -> Tensor:
    """σ̄ · U Vᵀ from the compact SVD of Σ wᵢWᵢ (zero for a zero sum)."""
    U, S, Vh = compact_svd(sum(wi * Wi for wi, Wi in zip(w, Ws)))
    return S.mean() * U @ Vh if S.numel() else torch.zeros_like(Ws[0])


def knots(Ws: Sequence[Tensor], w: Sequence[float], method: str, density: float | None) -> Tensor:
    """U · merge(Z₁ … Zₙ), Zᵢ the column blocks of Σ Vᵀ from the compact SVD of [W₁ … Wₙ]."""
    n = Ws[0].shape[1]
    U, S, Vh = compact_svd(torch.cat(list(Ws), dim=1))
    if not S.numel():
        return torch.zeros_like(Ws[0])
    Z = S[:, None] * Vh
    Z = torch.where(Z.abs() > RTOL * S[0], Z, torch.zeros_like(Z))  # the zero rule, on Z's entries
    blocks = Z.split(n, dim=1)
    if method == "linear":
        return U @ sum(wi * Zi for wi, Zi in zip(w, blocks))
    # TIES as the merge baselines do it: the top density of each block (ties at the cut kept), a sign
    # elected per entry from the sum of the pruned blocks (a zero sum elects +), the agreeing entries
    pruned = torch.stack([prune_magnitude(Zi, float(density)) for Zi in blocks])
    agree = majority_sign_mask(pruned, "total").to(Z.dtype)
    weights = torch.tensor([float(wi) for wi in w], dtype=Z.dtype)[:, None, None]
    return U @ ((weights * pruned * agree).sum(0) / agree.sum(0).clamp(min=1))


def _polar(X: Tensor) -> Tensor:
    U, _, Vh = compact_svd(X)
    return U @ Vh


def tsv(Ws: Sequence[Tensor], w: Sequence[float], k: int | None) -> Tensor:
    """U⊥ · blockdiag(wᵢΣᵢ) · V⊥ᵀ from each input's top min(k, rank) singular triplets."""
    svds = [compact_svd(W) for W in Ws]
    if k is None:
        k = max(1, min(S.numel() for _, S, _ in svds) // len(Ws))
    U = torch.cat([Ui[:, :k] for Ui, _, _ in svds], dim=1)
    V = torch.cat([Vhi[:k].T for _, _, Vhi in svds], dim=1)
    sigma = torch.cat([wi * Si[:k] for wi, (_, Si, _) in zip(w, svds)])
    if not sigma.numel():
        return torch.zeros_like(Ws[0])
    return _polar(U) @ torch.diag(sigma) @ _polar(V).T


def aligned_factors(Bs: Sequence[Tensor], As: Sequence[Tensor], index: int, side: str) -> tuple[Tensor, Tensor]:
    """Adapter `index` over the shared basis of all: side "A" → (Bᵢ Aᵢ Vᵀ, V) with V the right singular
    vectors of the stacked [A₁; …; Aₙ]; side "B" → (U, Uᵀ Bᵢ Aᵢ) with U the left ones of [B₁ … Bₙ]."""
    if side == "A":
        _, _, V = compact_svd(torch.cat(list(As), dim=0))
        return Bs[index] @ (As[index] @ V.T), V
    U, _, _ = compact_svd(torch.cat(list(Bs), dim=1))
    return U, (U.T @ Bs[index]) @ As[index]
