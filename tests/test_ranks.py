"""SPEC §7.6 rank by energy on factored updates, against a dense float64 reference."""

from __future__ import annotations

import pytest
import torch

from dipm_lang.backend.ranks import (check_energy_arguments, energy_ranks, ranks_from_singular_values,
                                     truncate_by_energy, truncate_to_ranks)
from svd_reference import BIG, F64, big_bases, core, dense_compact_svd, outside, relative, stack, update

M, N = 30, 20


def ref_rank(W: torch.Tensor, energy: float | None, max_rank: int | None) -> int:
    """SPEC §7.6 on the dense matrix: the smallest k ≥ 1 with Σ_{i≤k}σᵢ² ≥ e·Σσᵢ² (e = 1: the
    numerical rank), capped by max_rank."""
    _, S, _ = dense_compact_svd(W)
    if energy is None or energy == 1:
        k = S.numel()
    else:
        squares = (S ** 2).tolist()
        total, running, k = sum(squares), 0.0, 0
        while k < len(squares) and running < energy * total:
            running += squares[k]
            k += 1
    if max_rank is not None:
        k = min(k, max_rank)
    return max(k, 1)


def ref_truncate(W: torch.Tensor, k: int) -> tuple[torch.Tensor | None, float]:
    """The best rank-k approximation (None where it is not unique: σ_k = σ_{k+1}) and its relative error."""
    U, S, Vh = dense_compact_svd(W)
    k_eff = min(k, S.numel())
    unique = k_eff == S.numel() or float(S[k_eff - 1]) > float(S[k_eff]) * (1 + 1e-8)
    approx = U[:, :k_eff] @ torch.diag(S[:k_eff]) @ Vh[:k_eff] if unique else None
    total = float(S.norm())
    return approx, (float(S[k_eff:].norm()) / total if total > 0 else 0.0)


# Spectra whose cumulative energy fractions sit clearly between the energies asked below.
SPECTRA = {
    "decaying": [4.0, 2.0, 1.0, 0.5, 0.25],
    "flat": [1.0, 1.0, 1.0, 1.0],
    "one-direction": [3.0, 0.0, 0.0],
    "zero": [0.0, 0.0],
    "tiny-tail": [2.0, 1.0, 1e-11],  # 1e-11 ≤ 1e-10·σ₁: not part of the numerical rank
}


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("energy", [None, 0.3, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("max_rank", [None, 2])
def test_energy_ranks_and_truncation_match_dense(spectrum: str, energy: float | None, max_rank: int | None) -> None:
    x = update(M, N, SPECTRA[spectrum], seed=len(spectrum))
    W = x.dense()
    expected_k = ref_rank(W, energy, max_rank)
    assert int(energy_ranks(x, energy, max_rank)) == expected_k
    pieces, ranks, errors = truncate_by_energy(x, energy, max_rank)
    approx, error = ref_truncate(W, expected_k)
    assert int(ranks) == expected_k and pieces[0].rank == expected_k
    if spectrum == "zero":
        assert bool((pieces[0].dense() == 0).all())
    elif approx is not None:
        assert relative(pieces[0].dense(), approx) < 1e-12
    assert abs(float(errors) - error) < 1e-12


def test_batch_truncates_each_module_to_its_own_rank() -> None:
    spectra = [[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.1, 0.01]]
    modules = [update(M, N, s, seed=i) for i, s in enumerate(spectra)]
    energy = torch.tensor([0.9, 0.6, 0.5, 0.999], dtype=F64)  # one per module
    pieces, ranks, errors = truncate_by_energy(stack(modules), energy, max_rank=3)
    for g, x in enumerate(modules):
        k = ref_rank(x.dense(), float(energy[g]), 3)
        approx, error = ref_truncate(x.dense(), k)
        assert int(ranks[g]) == k and pieces[g].rank == k and pieces[g].batch_shape == ()
        assert abs(float(errors[g]) - error) < 1e-12
        alone_pieces, alone_ranks, alone_errors = truncate_by_energy(x, float(energy[g]), 3)
        assert int(alone_ranks) == k and float(alone_errors) == pytest.approx(float(errors[g]), abs=1e-14)
        if float(approx.norm()) > 0:
            assert relative(pieces[g].dense(), approx) < 1e-12
            assert relative(alone_pieces[0].dense(), pieces[g].dense()) < 1e-13
        else:  # the zero module: one zero direction
            assert bool((pieces[g].dense() == 0).all())
    assert ranks.tolist() == [2, 2, 1, 3]


def test_truncate_to_given_ranks_pads_missing_directions_and_keeps_dtype() -> None:
    x = update(M, N, [2.0, 1.0], seed=5, dtype=torch.float32)  # rank 2: a third direction is padding
    pieces, errors = truncate_to_ranks(x, 3)
    assert pieces[0].rank == 3 and pieces[0].dtype == torch.float32
    assert bool((pieces[0].B[:, 2] == 0).all())
    assert relative(pieces[0].dense(), x.dense()) < 1e-6 and float(errors) == 0.0
    pieces, errors = truncate_to_ranks(x, 1)
    assert abs(float(errors) - 1.0 / 5 ** 0.5) < 1e-6


def test_rule_on_singular_values_directly() -> None:
    S = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    keep = S > 0
    # cumulative energy: 9/14, 13/14, 14/14 | 1/4, 2/4, 3/4, 1
    assert ranks_from_singular_values(S, keep, 0.9).tolist() == [2, 4]
    assert ranks_from_singular_values(S, keep, 0.5).tolist() == [1, 2]
    assert ranks_from_singular_values(S, keep, 9 / 14).tolist() == [1, 3]  # reached exactly: smallest k
    assert ranks_from_singular_values(S, keep, None, max_rank=torch.tensor([5, 2])).tolist() == [3, 2]


@pytest.mark.parametrize("energy,max_rank,message", [
    (0.0, None, "0 < energy ≤ 1"), (1.5, None, "0 < energy ≤ 1"), (-0.1, None, "0 < energy ≤ 1"),
    (float("nan"), None, "0 < energy ≤ 1"), (None, 0, "max_rank must be a whole number ≥ 1"),
    (None, 2.5, "max_rank must be a whole number ≥ 1"), (None, True, "max_rank must be a whole number ≥ 1"),
    (torch.tensor([0.5, 2.0]), None, "0 < energy ≤ 1"),
])
def test_bad_arguments(energy, max_rank, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_energy_arguments(energy, max_rank)
    with pytest.raises(ValueError, match=message):
        energy_ranks(update(M, N, [1.0], seed=0), energy, max_rank)


def test_huge_module_ranks_on_the_factors() -> None:
    """200 000 × 200 000 at rank 4 (never dense): ranks and errors from the singular values we built."""
    P, Q = big_bases()
    x = update(BIG, BIG, [4.0, 2.0, 1.0, 0.5], seed=2, left=P[:, :4], right=Q[:, :4])
    pieces, ranks, errors = truncate_by_energy(x, 0.9)
    assert int(ranks) == 2  # 16/21.25 < 0.9 ≤ 20/21.25
    assert abs(float(errors) - (1.25 / 21.25) ** 0.5) < 1e-12
    assert pieces[0].B.shape == (BIG, 2) and pieces[0].A.shape == (2, BIG)
    expected = torch.zeros(12, 12, dtype=F64)
    expected[0, 0], expected[1, 1] = 4.0, 2.0
    assert relative(core(pieces[0]), expected) < 1e-12 and outside(pieces[0]) < 1e-12


def test_truncate_to_ranks_rejects_bad_ranks() -> None:
    x = update(M, N, [1.0], seed=0)
    for bad in (0, 1.5, torch.tensor([1, 0])):
        with pytest.raises(ValueError, match="ranks must be whole numbers ≥ 1"):
            truncate_to_ranks(x, bad)
