"""Shared helpers for the SVD-family tests: updates with chosen spectra, and the dense compact SVD.

Everything here is plain dense float64 linear algebra written from SPEC §7 — the oracle the
factored code is compared with — plus builders of factored inputs whose singular values we choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank

F64 = torch.float64
RTOL = 1e-10  # SPEC §7: σ ≤ 1e-10·σ₁ counts as zero


def orthonormal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=F64)).Q


def update(m: int, n: int, spectrum: Sequence[float], seed: int, dtype: torch.dtype = F64,
           left: Tensor | None = None, right: Tensor | None = None) -> LowRank:
    """A factored update with exactly these singular values (zeros allowed), in unbalanced factors.

    ΔW = P diag(s) Qᵀ with random orthonormal P, Q (or the given ones), written as
    B = P diag(s) G, A = G⁻¹ Qᵀ with a random well-conditioned G, so the factors are not the SVD.
    """
    generator = torch.Generator().manual_seed(seed)
    r = len(spectrum)
    P = orthonormal(m, r, generator) if left is None else left
    Q = orthonormal(n, r, generator) if right is None else right
    mixing = orthonormal(r, r, generator) * torch.linspace(0.5, 2.0, r, dtype=F64) @ orthonormal(r, r, generator)
    s = torch.tensor(list(spectrum), dtype=F64)
    return LowRank(((P * s) @ mixing).to(dtype), (torch.linalg.inv(mixing) @ Q.T).to(dtype))


def stack(xs: Sequence[LowRank]) -> LowRank:
    """Stack same-shape, same-rank modules into one batch [G]."""
    return LowRank(torch.stack([x.B for x in xs]), torch.stack([x.A for x in xs]))


def dense_compact_svd(W: Tensor, flips: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """SPEC §7's compact SVD of a dense float64 matrix, optionally with random signs per pair."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    keep = S > RTOL * S[0] if S.numel() else S > 0
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    if flips is not None and S.numel():
        sign = torch.randint(0, 2, (S.numel(),), generator=flips).to(F64) * 2 - 1
        U, Vh = U * sign, Vh * sign[:, None]
    return U, S, Vh


def relative(a: Tensor, b: Tensor) -> float:
    """‖a − b‖/‖b‖ (‖a‖ when b is zero), in float64."""
    a, b = a.to(F64), b.to(F64)
    scale = torch.linalg.vector_norm(b)
    difference = torch.linalg.vector_norm(a - b)
    return float(difference / scale) if scale > 0 else float(difference)


# --- dense references, from SPEC §7.9 (oracles of test_svd_merges and test_svd_merge_ops) ------


def ref_iso(Ws: list[Tensor], w: list[float], flips: torch.Generator | None = None) -> Tensor:
    U, S, Vh = dense_compact_svd(sum(wi * Wi for wi, Wi in zip(w, Ws)), flips)
    if S.numel() == 0:
        return torch.zeros_like(Ws[0])
    return S.mean() * U @ Vh


def ref_prune(Z: Tensor, density: float) -> Tensor:
    """Keep the int(density·N) largest |entries| of Z (all entries tied with the cut)."""
    if density >= 1:
        return Z
    count = int(density * Z.numel())
    if count == 0:
        return torch.zeros_like(Z)
    cut = Z.abs().flatten().sort(descending=True).values[count - 1]
    return torch.where(Z.abs() >= cut, Z, torch.zeros_like(Z))


def ref_knots(Ws: list[Tensor], w: list[float], method: str, density: float | None = None,
              flips: torch.Generator | None = None) -> Tensor:
    n = Ws[0].shape[1]
    U, S, Vh = dense_compact_svd(torch.cat(Ws, dim=1), flips)
    Z = S[:, None] * Vh
    if S.numel():
        # SPEC §7's zero rule on the entries: a zero input's block is exactly zero, but the dense SVD
        # leaves ~1e-16·σ₁ of noise there, and TIES would count those entries as votes.
        Z = torch.where(Z.abs() > 1e-10 * S[0], Z, torch.zeros_like(Z))
    blocks = Z.split(n, dim=1)
    if method == "linear":
        merged = sum(wi * Zi for wi, Zi in zip(w, blocks))
    else:
        pruned = torch.stack([ref_prune(Zi, density) for Zi in blocks])
        elected = torch.where(pruned.sum(0) >= 0, 1.0, -1.0).to(F64)
        agree = (pruned.sign() == elected).to(F64)
        weights = torch.tensor(w, dtype=F64)[:, None, None]
        merged = (weights * pruned * agree).sum(0) / agree.sum(0).clamp(min=1)
    return U @ merged


def ref_polar(X: Tensor) -> Tensor:
    U, _, Vh = dense_compact_svd(X)
    return U @ Vh


def ref_tsv(Ws: list[Tensor], w: list[float], k: int | None = None, flips: torch.Generator | None = None
            ) -> Tensor:
    svds = [dense_compact_svd(W, flips) for W in Ws]
    if k is None:
        k = max(1, min(S.numel() for _, S, _ in svds) // len(Ws))
    U = torch.cat([Ui[:, :k] for Ui, _, _ in svds], dim=1)
    V = torch.cat([Vhi[:k].T for _, _, Vhi in svds], dim=1)
    sigma = torch.cat([wi * Si[:k] for wi, (_, Si, _) in zip(w, svds)])
    if sigma.numel() == 0:
        return torch.zeros_like(Ws[0])
    return ref_polar(U) @ torch.diag(sigma) @ ref_polar(V).T


# --- 200 000 × 200 000 modules (never dense) ---------------------------------------------

BIG = 200_000


@lru_cache(maxsize=1)
def big_bases() -> tuple[Tensor, Tensor]:
    """Orthonormal P, Q (BIG × 12): every huge test input lives in span(P) × span(Q)."""
    generator = torch.Generator().manual_seed(2026)
    return orthonormal(BIG, 12, generator), orthonormal(BIG, 12, generator)


def big_update(core_left: Tensor, core_right: Tensor) -> LowRank:
    """ΔW = P (L R) Qᵀ with factors B = P L (BIG × r), A = R Qᵀ (r × BIG)."""
    P, Q = big_bases()
    return LowRank(P @ core_left, core_right @ Q.T)


def core(x: LowRank) -> Tensor:
    """Pᵀ ΔW Q (12 × 12, float64): all of ΔW when ΔW lies in span(P) × span(Q) (see `outside`)."""
    P, Q = big_bases()
    return (P.T @ x.B.to(F64)) @ (x.A.to(F64) @ Q)


def outside(x: LowRank) -> float:
    """‖ΔW − P·core·Qᵀ‖_F / ‖core‖_F: the part of ΔW outside span(P) × span(Q), relative.

    ΔW − P Pᵀ ΔW Q Qᵀ = (I − PPᵀ)B·A + (PᵀB)·(A(I − QQᵀ)) as sums of explicit factors, whose norms
    come from small Gram matrices (‖XY‖² = tr(XᵀX·YYᵀ)); never m×n.
    """
    P, Q = big_bases()
    B, A = x.B.to(F64), x.A.to(F64)
    left_out = B - P @ (P.T @ B)
    right_out = A - (A @ Q) @ Q.T
    squared = (torch.trace((left_out.T @ left_out) @ (A @ A.T))
               + torch.trace(((P.T @ B).T @ (P.T @ B)) @ (right_out @ right_out.T)))
    size = torch.linalg.vector_norm(core(x))
    return float(squared.clamp_min(0).sqrt() / size) if size > 0 else float(squared.clamp_min(0).sqrt())
