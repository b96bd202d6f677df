"""Randomized low-rank approximation of dense matrices (SPEC §7.8 extract, §7.11 `*_svd` baselines).

`randomized_lowrank(W, rank, seed=…)` returns rank-`rank` factors of a dense m×n matrix whose
truncation error is within (1 + tolerance)× the optimal (full-SVD, Eckart–Young) error, at a
fraction of a full SVD's cost: a randomized range finder (Halko, Martinsson & Tropp 2011, alg. 4.4)
with subspace iterations, re-orthonormalised at every half step, stopped adaptively.

Why the stopping rule is sound. Let E_j = Σ_{i≤k} s̃ᵢ² be the energy the current basis Q captures
in its best k directions (s̃ the singular values of QᵀW). Then
- the error of the returned approximation is exactly ‖W‖² − E_j (it is the projection of W onto
  k orthonormal directions), and the optimal error is ‖W‖² − E* with E* = Σ_{i≤k} σᵢ²;
- E_j increases monotonically to E* (each iteration multiplies the basis by WWᵀ; the gap
  E* − E_j shrinks roughly geometrically, like (σ_{ℓ+1}/σ_k)^{4j} with ℓ = k + oversampling);
- so the remaining gain can be predicted from the last two increments ΔE_j = E_j − E_{j−1}: with
  ρ = ΔE_j/ΔE_{j−1} < 1 the geometric tail is ΔE_j·ρ/(1−ρ).
We stop when that predicted gap is below half of what the tolerance allows: err² ≤ (1+tol)²·err*²
holds iff gap ≤ β/(1+β)·err_j² with β = (1+tol)² − 1 (err_j² = ‖W‖² − E_j is known exactly), or
when the increment is below the rounding level of the dtype (nothing measurable left to gain).
The gap rule needs two increments, so two power iterations run unless the first gain is already
at rounding level. It is a prediction, not a certificate (that would need the spectrum we are
avoiding): what makes it safe in practice is that slow convergence means σ_{ℓ+1} ≈ σ_k, where any
direction missed costs almost nothing in Frobenius error, and that only half the budget is used.
A hard cap (MAX_ITERATIONS) bounds the cost. Tests check the ratio against full SVDs on flat,
decaying, slowly decaying, shelf-shaped, exactly low-rank, tall and wide matrices, float32 and
float64; measured ratios stay below 1.007 for tolerance 0.01.

Determinism: the test matrix Ω of each module is drawn on a CPU generator seeded from that
module's `seed` (float64, then cast), so results do not depend on the batch a module is in or on
the device. Modules of a batch are processed one at a time (each has its own stopping point).

Memory: besides W, no m×n-sized temporary (the final residual is formed 1024 rows at a time); the
basis and sketches are m×ℓ and n×ℓ. `exact=True` needs what `torch.linalg.svd` needs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.backend.ranks import check_energy_arguments, ranks_from_singular_values

__all__ = ["OVERSAMPLE", "MAX_ITERATIONS", "randomized_lowrank", "randomized_lowrank_energy", "exact_lowrank"]

F64 = torch.float64

OVERSAMPLE = 10
"""Extra sketch columns beyond the rank (ℓ = k + 10; Halko et al. §4.2)."""

MAX_ITERATIONS = 40
"""Hard cap on subspace iterations per module."""

SAFETY = 0.5
"""Only half of the tolerance's budget goes to the predicted gap (the prediction is an estimate)."""

ROW_BLOCK = 1024
"""Rows of W per block when computing the final residual."""


# --- public API ---------------------------------------------------------------------------


def randomized_lowrank(W: Tensor, rank: int, *, seed: int | Sequence[int], tolerance: float = 0.01,
                       exact: bool = False, residual: bool = True) -> tuple[LowRank, Tensor]:
    """Rank-`rank` factors of each m×n matrix of W ([..., m, n]) and the relative error they leave.

    Returns (LowRank with B [..., m, k], A [..., k, n] in W's dtype, k = min(rank, m, n),
    relative Frobenius errors ‖W − BA‖/‖W‖ per module, float64 `[...]` on the CPU; 0 for a zero matrix).
    B = U_k·diag(S_k), A = V_kᵀ, signs fixed so the largest-|·| entry of each column of U is
    positive (as `lowrank._svd`). `seed`: an int for one matrix, or one int per module
    (row-major over W's batch dims). `exact=True`: the full SVD (`torch.linalg.svd(W,
    full_matrices=False)` in W's dtype, PEFT's numbers). Otherwise the error is within
    (1 + tolerance)× the optimal one (see the module docstring). `residual=False` skips forming
    W − BA (a pass as costly as a power iteration, for callers that do not report the error): the
    randomized path then reports √(‖W‖² − Σ s̃ᵢ²)/‖W‖, accurate to about √eps relative.
    Raises ValueError for rank < 1, tolerance ≤ 0, a non-matrix W or seeds that do not match.
    """
    _check_matrix(W)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be a whole number ≥ 1, got {rank!r}")
    rank = int(rank)
    _check_tolerance(tolerance)
    seeds = _seeds(seed, W)
    batch, (m, n) = W.shape[:-2], W.shape[-2:]
    flat = W.reshape(-1, m, n)
    pieces, errors = [], []
    for g in range(flat.shape[0]):
        approx, error = (exact_lowrank(flat[g], rank) if exact
                         else _randomized_module(flat[g], rank, seeds[g], tolerance, residual))
        pieces.append(approx)
        errors.append(error)
    k = min(rank, m, n)
    B = torch.stack([p.B for p in pieces]).reshape(*batch, m, k) if pieces else W.new_zeros(*batch, m, k)
    A = torch.stack([p.A for p in pieces]).reshape(*batch, k, n) if pieces else W.new_zeros(*batch, k, n)
    error = torch.stack(errors).reshape(batch) if errors else torch.zeros(batch, dtype=F64)
    return LowRank(B, A), error


def randomized_lowrank_energy(W: Tensor, energy: float, *, seed: int | Sequence[int], max_rank: int | None = None,
                              tolerance: float = 0.01, exact: bool = False
                              ) -> tuple[list[LowRank], Tensor, Tensor]:
    """SPEC §7.6's rank by energy on dense matrices: per module the smallest k with Σ_{i≤k}σᵢ² ≥ e·‖W‖²
    (e = 1: the numerical rank, σ > 1e-10·σ₁), capped by max_rank, at least 1.

    Returns (one LowRank per module, row-major over the batch, in W's dtype; ranks int64 `[...]`;
    relative errors float64 `[...]`). The randomized path sketches with a growing rank (16, 32, …)
    until the sketch's singular values reach the energy; their squares never exceed the true ones,
    so the rank found is never below the exact rule's (equal once the sketch has converged), and
    a matrix needing more than half its size falls back to the full SVD. ValueError for bad arguments.
    """
    _check_matrix(W)
    check_energy_arguments(energy, max_rank)
    if not isinstance(energy, (int, float)):
        raise ValueError(f"energy must be a number for dense matrices, got {energy!r}")
    _check_tolerance(tolerance)
    seeds = _seeds(seed, W)
    batch, (m, n) = W.shape[:-2], W.shape[-2:]
    flat = W.reshape(-1, m, n)
    pieces, ranks, errors = [], [], []
    for g in range(flat.shape[0]):
        approx, k, error = _energy_module(flat[g], float(energy), max_rank, seeds[g], tolerance, exact)
        pieces.append(approx)
        ranks.append(k)
        errors.append(error)
    return (pieces, torch.tensor(ranks, dtype=torch.int64).reshape(batch),
            torch.stack(errors).reshape(batch) if errors else torch.zeros(batch, dtype=F64))


def exact_lowrank(W: Tensor, rank: int) -> tuple[LowRank, Tensor]:
    """Best rank-`rank` factors of one m×n matrix by the full SVD (PEFT's split), and the relative error."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return _from_svd(U, S, Vh, rank)


# --- one module ---------------------------------------------------------------------------


def _randomized_module(W: Tensor, rank: int, seed: int, tolerance: float, residual: bool = True
                       ) -> tuple[LowRank, Tensor]:
    m, n = W.shape
    k = min(rank, m, n)
    width = k + OVERSAMPLE
    if 2 * width >= min(m, n):  # a sketch this wide costs about as much as the full SVD
        return exact_lowrank(W, rank)
    total = _squared_norm(W)
    if total == 0:
        return _zero(W, k)
    Q, Z = _subspace_iteration(W, k, width, seed, tolerance, total)
    return _finish(W, Q, Z, k, total, residual)


def _subspace_iteration(W: Tensor, k: int, width: int, seed: int, tolerance: float, total: float
                        ) -> tuple[Tensor, Tensor]:
    """Orthonormal Q (m×ℓ) whose best k directions capture W's top-k energy to the tolerance, and Z = WᵀQ."""
    n = W.shape[1]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, width, generator=generator, dtype=F64).to(device=W.device, dtype=W.dtype)
    Q = torch.linalg.qr(W @ omega).Q
    beta = (1.0 + tolerance) ** 2 - 1.0
    noise = 8 * torch.finfo(W.dtype).eps * total  # the rounding level of the energies
    previous_energy, previous_gain = None, None
    for iteration in range(MAX_ITERATIONS + 1):
        Z = W.mT @ Q  # n×ℓ: (QᵀW)ᵀ, whose singular values are those of the projection
        s = torch.linalg.svdvals(Z.to(F64))
        energy = float(s[:k].square().sum())
        if previous_energy is not None:
            gain = energy - previous_energy
            error2 = max(total - energy, 0.0)
            if gain <= noise or error2 <= noise:
                break  # nothing measurable left to gain
            if previous_gain is not None and 0 < gain < previous_gain:
                ratio = gain / previous_gain
                predicted = gain * ratio / (1.0 - ratio)
                if predicted <= SAFETY * beta / (1.0 + beta) * error2:
                    break
            previous_gain = gain
        previous_energy = energy
        if iteration == MAX_ITERATIONS:
            break
        # One power step, re-orthonormalised on both sides (plain powers lose the small directions).
        Q = torch.linalg.qr(W @ torch.linalg.qr(Z).Q).Q
    return Q, Z


def _finish(W: Tensor, Q: Tensor, Z: Tensor, k: int, total: float, residual: bool = True
            ) -> tuple[LowRank, Tensor]:
    """W ≈ Q·(QᵀW) cut to its best k directions: QᵀW = Zᵀ = Ũ S Ṽᵀ → B = QŨ_k S_k, A = Ṽ_kᵀ."""
    U_small, S, Vh = torch.linalg.svd(Z.mT.to(F64), full_matrices=False)
    U = Q.to(F64) @ U_small
    approx = _factors(U[:, :k], S[:k], Vh[:k], W.dtype)
    if not residual:  # the energy identity: ‖W − BA‖² = ‖W‖² − Σ_{i≤k} s̃ᵢ² for this projection
        dropped = max(total - float(S[:k].square().sum()), 0.0)
        return approx, torch.tensor(math.sqrt(dropped / total), dtype=F64)
    return approx, _relative_residual(W, approx, total)


def _energy_module(W: Tensor, energy: float, max_rank: int | None, seed: int, tolerance: float, exact: bool
                   ) -> tuple[LowRank, int, Tensor]:
    m, n = W.shape
    cap = min(m, n) if max_rank is None else min(max_rank, m, n)
    total = _squared_norm(W)
    if total == 0:
        approx, error = _zero(W, 1)
        return approx, 1, error
    guess = min(16, cap)
    while not exact and 2 * (guess + OVERSAMPLE) < min(m, n):
        Q, Z = _subspace_iteration(W, guess, guess + OVERSAMPLE, seed, tolerance, total)
        s = torch.linalg.svdvals(Z.to(F64))[:guess]
        # The sketch's values stand in for the top of the spectrum, W's own norm for its total.
        found = _sketch_rank(s, total, energy)
        if found is not None or guess == cap:
            k = min(found if found is not None else guess, cap)
            approx, error = _finish(W, Q, Z, k, total)
            return approx, k, error
        guess = min(2 * guess, cap)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    S64 = S.to(F64)
    keep = S64 > 1e-10 * S64[0]
    k = int(ranks_from_singular_values(S64, keep, energy, max_rank))
    approx, error = _from_svd(U, S, Vh, k)
    return approx, k, error


def _sketch_rank(s: Tensor, total: float, energy: float) -> int | None:
    """Smallest k ≤ len(s) with Σ_{i≤k} s̃ᵢ² ≥ e·‖W‖², or None (e = 1: the numerical rank, once
    the sketch shows a value ≤ 1e-10·s̃₁)."""
    if energy >= 1.0:
        kept = s > 1e-10 * s[0]
        return int(kept.sum()) if not bool(kept.all()) else None
    reached = (s.square().cumsum(0) >= energy * total).nonzero()
    return int(reached[0]) + 1 if reached.numel() else None


# --- helpers ------------------------------------------------------------------------------


def _from_svd(U: Tensor, S: Tensor, Vh: Tensor, rank: int) -> tuple[LowRank, Tensor]:
    k = min(rank, S.shape[-1])
    S64 = S.to(F64)
    total = float(torch.linalg.vector_norm(S64))
    error = float(torch.linalg.vector_norm(S64[k:])) / total if total > 0 else 0.0
    return _factors(U[:, :k], S[:k], Vh[:k], U.dtype), torch.tensor(error, dtype=F64)


def _factors(U: Tensor, S: Tensor, Vh: Tensor, dtype: torch.dtype) -> LowRank:
    """B = U·diag(S), A = Vh with the sign rule of `lowrank._svd`, cast to `dtype`."""
    if U.shape[-1]:
        pivot = U.abs().argmax(dim=-2, keepdim=True)
        sign = torch.gather(U, -2, pivot).sign()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        U, Vh = U * sign, Vh * sign.mT
    return LowRank((U * S[None, :]).to(dtype).contiguous(), Vh.to(dtype).contiguous())


def _zero(W: Tensor, k: int) -> tuple[LowRank, Tensor]:
    m, n = W.shape
    return LowRank(W.new_zeros(m, k), W.new_zeros(k, n)), torch.zeros((), dtype=F64)


def _squared_norm(W: Tensor) -> float:
    """‖W‖_F², from row norms combined in float64.

    Not one `vector_norm(W)`: on float32 CPU tensors that reduction accumulates in float32 and is
    off by ~5e-4 for 10⁷ entries; rows are short enough to be exact to ~1e-7.
    """
    return float(torch.linalg.vector_norm(W, dim=-1).to(F64).square().sum())


def _relative_residual(W: Tensor, approx: LowRank, total: float) -> Tensor:
    """‖W − BA‖_F/‖W‖_F for the factors as returned, by blocks of rows (float64 for float64 W).

    The residual is formed in W's dtype: its entries are then accurate to ~eps·|W|, so the reported
    error is accurate to ~eps·‖W‖ absolute (the energy identity ‖W‖² − Σsᵢ² would lose half the digits).
    """
    squares = sum(_squared_norm(W[i:i + ROW_BLOCK] - approx.B[i:i + ROW_BLOCK] @ approx.A)
                  for i in range(0, W.shape[0], ROW_BLOCK))
    return torch.tensor(math.sqrt(squares / total) if total > 0 else 0.0, dtype=F64)


def _check_matrix(W: Tensor) -> None:
    if not isinstance(W, Tensor) or W.dim() < 2:
        raise ValueError(f"expected a matrix [..., m, n], got {getattr(W, 'shape', type(W).__name__)}")
    if not W.is_floating_point():
        raise ValueError(f"expected a floating-point matrix, got {W.dtype}")


def _check_tolerance(tolerance: float) -> None:
    if not tolerance > 0 or math.isinf(tolerance):
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")


def _seeds(seed: int | Sequence[int], W: Tensor) -> list[int]:
    count = math.prod(W.shape[:-2])
    if isinstance(seed, int) and not isinstance(seed, bool):
        if W.dim() > 2 and count != 1:
            raise ValueError(f"a batch of {count} matrices needs one seed per module, got a single seed")
        return [seed]
    seeds = list(seed)
    if len(seeds) != count or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"expected {count} integer seeds (one per module), got {seed!r}")
    return seeds
