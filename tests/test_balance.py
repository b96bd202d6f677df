"""Re-balancing factors before a float32 cast: faithful float32 outputs for results that nearly cancel.

Errors are measured in float64 against the float64 value of the float64 factors; the claim is
that the float32 product is within 1e-6 of it only with balancing, and that factors which are
fine are left bit for bit.
"""

from __future__ import annotations

import torch

from dipm_lang.backend.balance import balance_for_cast, balanced, cast_error, default_rtol
from dipm_lang.backend.lowrank import LowRank, linear_combination, normalize, orth
from svd_reference import BIG, F64, big_bases, core, outside, relative, stack, update

M, N = 60, 50
F32 = torch.float32


def product64(x: LowRank) -> torch.Tensor:
    """The exact value of x's factors, multiplied in float64."""
    return x.B.to(F64) @ x.A.to(F64)


def imbalance(x: LowRank) -> float:
    return float(torch.linalg.vector_norm(x.B) * torch.linalg.vector_norm(x.A) / torch.linalg.vector_norm(product64(x)))


def nearly_cancelling(x: LowRank | None = None, y: LowRank | None = None) -> LowRank:
    """x − z with z = x + 1e-4·y held in its own factors (as a loaded or re-factored adapter would
    be), computed by concatenation (ranks add): the value is −1e-4·y.

    (With z's factors literally [Bx, 1e-4·By], [Ax; Ay] the two copies of Bx would round alike in
    the cast and cancel; an independently factored z is the case that loses precision.)
    """
    x = update(M, N, [3.0, 2.0, 1.0, 0.5], seed=1) if x is None else x
    y = update(M, N, [1.0, 0.7, 0.2], seed=2) if y is None else y
    z = balanced(linear_combination([x, y], [1.0, 1e-4]))
    return linear_combination([x, z], [1.0, -1.0])


def orth_of_nearly_parallel() -> LowRank:
    """orth(d, e) with e ≈ d: each row is d's tiny remainder, renormalised — factors ~1e5 for unit rows."""
    d = normalize(update(M, N, [2.0, 1.0, 0.5], seed=3))
    e = normalize(linear_combination([d, update(M, N, [1.0], seed=4)], [1.0, 1e-5]))
    return orth(d, e)


def test_balanced_is_exact_and_well_conditioned() -> None:
    for x in (nearly_cancelling(), orth_of_nearly_parallel()):
        assert imbalance(x) > 1e3
        y = balanced(x)
        assert y.dtype == F64 and y.rank <= x.rank
        # Exact up to float64's own cancellation in x's product (~eps64 · imbalance).
        assert relative(product64(y), product64(x)) < 1e-14 * imbalance(x)
        assert imbalance(y) <= y.rank ** 0.5 + 1e-9  # Σσ/‖σ‖ ≤ √rank
        # B = U√S and A = √S Vᵀ: the same column norms on both sides.
        assert torch.allclose(torch.linalg.vector_norm(y.B, dim=0), torch.linalg.vector_norm(y.A, dim=1), rtol=1e-10)


def test_float32_is_faithful_only_with_balancing() -> None:
    for x in (nearly_cancelling(), orth_of_nearly_parallel()):
        truth = product64(x)
        plain = x.to(F32)
        assert relative(product64(plain), truth) > 1e-5  # the cast as it is loses ≥ 1e-5
        cast, used = balance_for_cast(x, F32)
        assert bool(used) and cast.dtype == F32 and cast.rank == x.rank
        assert relative(product64(cast), truth) < 1e-6
        assert float(cast_error(x, F32)) > default_rtol(F32) >= float(cast_error(balanced(x), F32))


def test_fine_factors_are_left_bit_for_bit() -> None:
    inputs = [
        update(M, N, [2.0, 1.0, 0.5], seed=5),  # well-balanced float64 factors
        update(M, N, [2.0, 1.0, 0.5], seed=6, dtype=F32).to(F64),  # an input's own float32 factors
    ]
    for x in inputs:
        cast, used = balance_for_cast(x, F32)
        assert not bool(used)
        assert torch.equal(cast.B, x.B.to(F32)) and torch.equal(cast.A, x.A.to(F32))


def test_batch_decides_module_by_module() -> None:
    bad, good = nearly_cancelling(), update(M, N, [1.0] * 11, seed=7)  # both rank 11
    cast, used = balance_for_cast(stack([bad, good]), F32)
    assert used.tolist() == [True, False]
    assert torch.equal(cast.B[1], good.B.to(F32)) and torch.equal(cast.A[1], good.A.to(F32))
    assert relative(product64(cast[0]), product64(bad)) < 1e-6


def test_exact_cancellation_becomes_zero() -> None:
    x = update(M, N, [2.0, 1.0], seed=8)
    zero = balanced(linear_combination([x, x], [1.0, -1.0]))
    assert zero.rank == 0
    cast, used = balance_for_cast(linear_combination([x, x], [1.0, -1.0]), F32)
    assert bool((product64(cast) == 0).all())


def test_huge_module_balances_on_the_factors() -> None:
    """200 000 × 200 000 at rank 4 + 4, never dense: compared on the 12 × 12 cores Pᵀ·ΔW·Q."""
    P, Q = big_bases()
    x = update(BIG, BIG, [4.0, 2.0, 1.0, 0.5], seed=1, left=P[:, :4], right=Q[:, :4])
    y = update(BIG, BIG, [1.0, 0.5, 0.3, 0.2], seed=2, left=P[:, 4:8], right=Q[:, 4:8])
    value = nearly_cancelling(x, y)  # −1e-4·y
    cast, used = balance_for_cast(value, F32)
    assert bool(used) and outside(cast) < 1e-6
    assert relative(core(cast), -1e-4 * core(y)) < 1e-6
    assert relative(core(value.to(F32)), -1e-4 * core(y)) > 1e-5  # as it was, the cast loses precision
