"""Randomized low-rank approximation of dense matrices, against full SVDs (SPEC §7.8 extract, §7.11).

The promise tested: the truncation error of the returned factors is within (1 + tolerance)× the
optimal (full-SVD) error, plus the dtype's rounding of the factors themselves; the reported error
is the true one; results are deterministic per seed and independent of batching; `exact=True`
gives PEFT's bits.
"""

from __future__ import annotations

import math

import pytest
import torch

from dipm_lang.backend import randomized as rnd
from dipm_lang.backend.lowrank import LowRank
from svd_reference import F64, orthonormal

F32 = torch.float32


def matrix(m: int, n: int, spectrum: list[float], seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    r = len(spectrum)
    left, right = orthonormal(m, r, generator), orthonormal(n, r, generator)
    return ((left * torch.tensor(spectrum, dtype=F64)) @ right.T).to(dtype)


def optimal_error(W: torch.Tensor, k: int) -> float:
    S = torch.linalg.svdvals(W.to(F64))
    total = float(S.norm())
    return float(S[k:].norm()) / total if total > 0 else 0.0


def true_error(W: torch.Tensor, approx: LowRank) -> float:
    W64 = W.to(F64)
    total = float(W64.norm())
    return float((W64 - approx.B.to(F64) @ approx.A.to(F64)).norm()) / total if total > 0 else 0.0


def floor(dtype: torch.dtype) -> float:
    """What casting factors to the dtype may cost on top of the optimal error."""
    return 16 * torch.finfo(dtype).eps


R = 200  # spectrum length for 400 × 200 matrices
SPECTRA = {
    "flat": [1.0] * R,
    "geometric": [0.9 ** i for i in range(R)],
    "slow": [0.99 ** i for i in range(R)],
    "harmonic": [1.0 / (i + 1) for i in range(R)],
    "sqrt": [1.0 / math.sqrt(i + 1) for i in range(R)],
    "shelf": [1.0] * 12 + [0.95] * 30 + [1e-3] * (R - 42),
    "low-rank-3": [3.0, 2.0, 1.0],
    "rank-10": [float(10 - i) for i in range(10)],  # exactly the requested rank
}


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
def test_error_within_tolerance_of_the_optimum(spectrum: str, dtype: torch.dtype, monkeypatch) -> None:
    calls = []
    iterate = rnd._subspace_iteration
    monkeypatch.setattr(rnd, "_subspace_iteration", lambda *a: calls.append(1) or iterate(*a))
    W = matrix(400, 200, SPECTRA[spectrum], seed=len(spectrum), dtype=dtype)
    approx, error = rnd.randomized_lowrank(W, 10, seed=7)
    assert calls, "the randomized path ran"
    assert approx.B.shape == (400, 10) and approx.A.shape == (10, 200) and approx.dtype == dtype
    optimum = optimal_error(W, 10)
    actual = true_error(W, approx)
    assert actual <= 1.01 * optimum + floor(dtype), (actual, optimum)
    assert abs(float(error) - actual) <= 1e-5 * actual + floor(dtype)  # the reported error is the true one


@pytest.mark.parametrize("tolerance", [0.1, 0.001])
def test_tolerance_is_honoured(tolerance: float) -> None:
    W = matrix(400, 200, SPECTRA["sqrt"], seed=3)
    approx, _ = rnd.randomized_lowrank(W, 20, seed=1, tolerance=tolerance)
    assert true_error(W, approx) <= (1 + tolerance) * optimal_error(W, 20)


@pytest.mark.parametrize("shape", [(500, 60), (60, 500)])
def test_tall_and_wide(shape: tuple[int, int]) -> None:
    m, n = shape
    W = matrix(m, n, [0.8 ** i for i in range(60)], seed=4, dtype=F32)
    approx, error = rnd.randomized_lowrank(W, 8, seed=2)
    assert approx.B.shape == (m, 8) and approx.A.shape == (8, n)
    assert true_error(W, approx) <= 1.01 * optimal_error(W, 8) + floor(F32)


def test_rank_below_request_and_zero_matrix() -> None:
    W = matrix(300, 100, [2.0, 1.0], seed=5)
    approx, error = rnd.randomized_lowrank(W, 6, seed=0)
    assert approx.rank == 6 and true_error(W, approx) < 1e-13 and float(error) < 1e-13
    zero = torch.zeros(300, 100)
    approx, error = rnd.randomized_lowrank(zero, 6, seed=0)
    assert bool((approx.dense() == 0).all()) and float(error) == 0.0
    # A rank above min(m, n) is capped; an equal-or-larger sketch takes the full SVD.
    small = matrix(30, 12, [1.0] * 12, seed=6)
    approx, error = rnd.randomized_lowrank(small, 50, seed=0)
    assert approx.rank == 12 and float(error) < 1e-13


def test_deterministic_per_seed_and_independent_of_batching() -> None:
    Ws = [matrix(300, 150, SPECTRA["harmonic"][:150], seed=s, dtype=F32) for s in range(3)]
    seeds = [11, 12, 13]
    batched, errors = rnd.randomized_lowrank(torch.stack(Ws), 6, seed=seeds)
    assert batched.B.shape == (3, 300, 6) and errors.shape == (3,)
    for g, (W, seed) in enumerate(zip(Ws, seeds)):
        alone, error = rnd.randomized_lowrank(W, 6, seed=seed)
        assert torch.equal(alone.B, batched.B[g]) and torch.equal(alone.A, batched.A[g])
        assert float(error) == float(errors[g])
    again, _ = rnd.randomized_lowrank(Ws[0], 6, seed=11)
    other, _ = rnd.randomized_lowrank(Ws[0], 6, seed=99)
    assert torch.equal(again.B, batched.B[0])
    assert not torch.equal(other.B, again.B)


def test_exact_is_peft_full_svd_split() -> None:
    W = matrix(120, 80, SPECTRA["geometric"][:80], seed=8, dtype=F32)
    approx, error = rnd.randomized_lowrank(W, 5, seed=0, exact=True)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    U, S, Vh = U[:, :5], S[:5], Vh[:5]
    # The sign rule of lowrank._svd: the largest-|·| entry of each column of U positive.
    sign = U.gather(0, U.abs().argmax(dim=0, keepdim=True)).sign()
    assert torch.equal(approx.B, U * sign * S) and torch.equal(approx.A, Vh * sign.T)
    assert abs(float(error) - optimal_error(W, 5)) < 1e-6


# --- rank by energy -----------------------------------------------------------------------


def dense_energy_rank(W: torch.Tensor, energy: float, max_rank: int | None) -> int:
    S = torch.linalg.svdvals(W.to(F64))
    S = S[S > 1e-10 * S[0]] if float(S[0]) > 0 else S[:0]
    if energy >= 1:
        k = S.numel()
    else:
        fractions = (S ** 2).cumsum(0) / (S ** 2).sum()
        k = int((fractions < energy).sum()) + 1
    return max(1, min(k, max_rank) if max_rank else k)


@pytest.mark.parametrize("spectrum,energy,max_rank", [
    ("geometric", 0.5, None),  # k = 7
    ("geometric", 0.95, None),  # k = 29: the sketch grows past its first guess of 16
    ("harmonic", 0.9, None),
    ("geometric", 0.95, 12),  # capped
    ("low-rank-3", 1.0, None),  # the numerical rank, found by the sketch
    ("low-rank-3", 0.999, None),
    ("flat", 0.5, None),  # needs half the matrix: the full SVD
])
def test_energy_rank_matches_the_dense_rule(spectrum: str, energy: float, max_rank: int | None) -> None:
    W = matrix(400, 200, SPECTRA[spectrum], seed=9)
    expected = dense_energy_rank(W, energy, max_rank)
    pieces, ranks, errors = rnd.randomized_lowrank_energy(W, energy, seed=3, max_rank=max_rank)
    assert int(ranks) == expected and pieces[0].rank == expected
    assert true_error(W, pieces[0]) <= 1.01 * optimal_error(W, expected) + floor(F64)
    assert abs(float(errors) - true_error(W, pieces[0])) < 1e-9
    exact_pieces, exact_ranks, _ = rnd.randomized_lowrank_energy(W, energy, seed=3, max_rank=max_rank, exact=True)
    assert int(exact_ranks) == expected


def test_energy_of_zero_and_batches() -> None:
    pieces, ranks, errors = rnd.randomized_lowrank_energy(torch.zeros(2, 50, 40), 0.9, seed=[1, 2])
    assert ranks.tolist() == [1, 1] and all(bool((p.dense() == 0).all()) for p in pieces)
    assert errors.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("call,message", [
    (lambda: rnd.randomized_lowrank(torch.ones(5, 4), 0, seed=0), "rank must be a whole number"),
    (lambda: rnd.randomized_lowrank(torch.ones(5, 4), 2, seed=0, tolerance=0.0), "tolerance must be"),
    (lambda: rnd.randomized_lowrank(torch.ones(2, 5, 4), 2, seed=0), "needs one seed per module"),
    (lambda: rnd.randomized_lowrank(torch.ones(2, 5, 4), 2, seed=[1]), "expected 2 integer seeds"),
    (lambda: rnd.randomized_lowrank(torch.ones(5, dtype=torch.int64), 2, seed=0), "expected a matrix"),
    (lambda: rnd.randomized_lowrank(torch.ones(5, 4, dtype=torch.int64), 2, seed=0), "floating-point"),
    (lambda: rnd.randomized_lowrank_energy(torch.ones(5, 4), 0.0, seed=0), "0 < energy ≤ 1"),
    (lambda: rnd.randomized_lowrank_energy(torch.ones(5, 4), 0.5, seed=0, max_rank=0), "max_rank"),
])
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
