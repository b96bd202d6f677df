"""Kernels on factored values: SPEC §3 laws and differential tests against the dense oracle.

Hypothesis draws the structure (shapes, ranks, batch dims, which units are zero, parallel
or antiparallel, the operator's parameters); a drawn seed fills in the numbers, so examples
stay cheap and reproducible. Everything runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from dipm_lang.backend import dense
from dipm_lang.backend import lowrank as lr
from dipm_lang.backend.lowrank import LowRank

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

F64 = torch.float64
BYS = ["out", "in", "matrix"]
# Local settings (not a global profile) so this file does not change other test files' settings.
KERNELS = settings(deadline=None, derandomize=True, max_examples=60)
TOL = 1e-9

# A grid keeps t away from the cancellation point of antiparallel units (t = ½ gives an
# exact zero, t = ½ ± 1e-12 an ill-conditioned direction) while covering extrapolation.
T_VALUES = [-0.5, 0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0, 1.25, 2.0]
# Weights chosen so that sums of (anti)parallel units cancel exactly or not at all.
WEIGHTS = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0]


# --- building random factored inputs -----------------------------------------------------


@dataclass
class Case:
    by: str
    batch: tuple[int, ...]
    m: int
    n: int
    xs: list[LowRank]
    scale: float


def unit_shape(by: str, batch: tuple[int, ...], m: int, n: int) -> tuple[int, ...]:
    return {"out": (*batch, m), "in": (*batch, n), "matrix": batch}[by]


def scale_units_raw(x: LowRank, s: Tensor, by: str) -> LowRank:
    """Per-unit scaling done directly on the factors (independent of the code under test)."""
    if by == "out":
        return LowRank(x.B * s[..., :, None], x.A)
    if by == "in":
        return LowRank(x.B, x.A * s[..., None, :])
    return LowRank(x.B * s[..., None, None], x.A)


def cat(x: LowRank, y: LowRank) -> LowRank:
    return LowRank(torch.cat([x.B, y.B], -1), torch.cat([x.A, y.A], -2))


def random_lowrank(gen: torch.Generator, batch, m: int, n: int, k: int, scale: float) -> LowRank:
    B = torch.randn(*batch, m, k, generator=gen, dtype=F64) * scale
    A = torch.randn(*batch, k, n, generator=gen, dtype=F64)
    return LowRank(B, A)


@st.composite
def cases(draw, count: int = 1, by: str | None = None) -> Case:
    """`count` same-shape operands; later ones relate to the first unit by unit.

    A related operand has, per unit, one of: an independent unit, +c·(unit of xs[0]),
    −c·(unit of xs[0]), or a zero unit. Any operand may also have zeroed units (zero
    rows of B for "out", zero columns of A for "in", everything for "matrix").
    """
    by = by or draw(st.sampled_from(BYS))
    batch = draw(st.sampled_from([(), (), (3,), (2, 2)]))
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    scale = 10.0 ** draw(st.integers(-3, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = unit_shape(by, batch, m, n)
    xs: list[LowRank] = []
    for i in range(count):
        z = random_lowrank(gen, batch, m, n, draw(st.integers(0, 5)), scale)
        if i > 0 and draw(st.booleans()):
            codes = torch.randint(0, 4, shape, generator=gen)
            c = torch.rand(shape, generator=gen, dtype=F64) * 3 + 0.1
            a = torch.where(codes == 1, c, torch.where(codes == 2, -c, torch.zeros_like(c)))
            b = (codes == 0).to(F64)
            z = cat(scale_units_raw(xs[0], a, by), scale_units_raw(z, b, by))
        zero_frac = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
        keep = (torch.rand(shape, generator=gen) >= zero_frac).to(F64)
        xs.append(scale_units_raw(z, keep, by))
    return Case(by, batch, m, n, xs, scale)


def items(v: LowRank | Tensor, batch: tuple[int, ...]) -> list[Tensor]:
    """Per-module dense values (matrices, or Mag tensors) of a possibly batched value."""
    t = v.dense() if isinstance(v, LowRank) else v
    return list(flat_batch(t, batch))


def flat_batch(t: Tensor, batch: tuple[int, ...]) -> Tensor:
    """Batch dims → one leading dim (reshape(-1, …) is ambiguous for empty tensors)."""
    return t.reshape(math.prod(batch), *t.shape[len(batch) :])


def item_lowranks(x: LowRank, batch: tuple[int, ...]) -> list[LowRank]:
    return [LowRank(b, a) for b, a in zip(flat_batch(x.B, batch), flat_batch(x.A, batch))]


def close(actual: Tensor, expected: Tensor, atol: float = TOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=atol)


def check_dense(fact: LowRank | Tensor, case: Case, oracle, *inputs: LowRank, atol: float = TOL) -> None:
    """Factored result ≡ the dense oracle applied module by module."""
    per_item = [items(x, case.batch) for x in inputs]
    for got, args in zip(items(fact, case.batch), zip(*per_item)):
        close(got, oracle(*args), atol)


def dirs(case: Case) -> list[LowRank]:
    return [lr.dir(x, case.by) for x in case.xs]


# --- decoupler / recombiner --------------------------------------------------------------


@KERNELS
@given(cases())
def test_mag_dir_match_dense(case: Case) -> None:
    x, by = case.xs[0], case.by
    check_dense(lr.mag(x, by), case, lambda w: dense.mag(w, by), x, atol=TOL * case.scale)
    check_dense(lr.unit_norms(x, by), case, lambda w: dense.unit_norms(w, by), x, atol=TOL * case.scale)
    check_dense(lr.dir(x, by), case, lambda w: dense.dir(w, by), x)
    check_dense(lr.normalize(x, by), case, lambda w: dense.normalize(w, by), x)


@KERNELS
@given(cases())
def test_recombine_dir_mag_is_identity(case: Case) -> None:
    x, by = case.xs[0], case.by
    check_dense(lr.recombine(lr.dir(x, by), lr.mag(x, by), by), case, lambda w: w, x, atol=TOL * case.scale)


@KERNELS
@given(cases())
def test_dir_has_unit_norms_or_zero(case: Case) -> None:
    x, by = case.xs[0], case.by
    norms = lr.unit_norms(lr.dir(x, by), by)
    dense_norms = torch.stack([dense.unit_norms(w, by) for w in items(lr.dir(x, by), case.batch)])
    expected = (lr.mag(x, by) > lr.EPS).to(F64)
    close(norms, expected)
    close(dense_norms.reshape(expected.shape), expected)


@KERNELS
@given(cases(), st.floats(1e-3, 1e3), st.booleans())
def test_homogeneity(case: Case, k: float, negative: bool) -> None:
    x, by = case.xs[0], case.by
    k = -k if negative else k
    kx = LowRank(x.B * k, x.A)
    close(lr.dir(kx, by).dense(), math.copysign(1.0, k) * lr.dir(x, by).dense())
    close(lr.mag(kx, by), abs(k) * lr.mag(x, by), atol=TOL * case.scale * abs(k))


@KERNELS
@given(cases(count=2))
def test_unit_dots_and_scaling_match_dense(case: Case) -> None:
    x, y = case.xs
    by = case.by
    dot_scale = case.scale**2 * 25
    check_dense(lr.unit_dots(x, y, by), case, lambda a, b: dense.unit_dots(a, b, by), x, y, atol=TOL * dot_scale)
    s = lr.mag(y, by)  # any Mag[by]-shaped tensor will do
    got = lr.scale_units(x, s, by)
    for w, sv, g in zip(items(x, case.batch), items(s, case.batch), items(got, case.batch)):
        close(g, dense.scale_units(w, sv, by), atol=TOL * dot_scale)


@KERNELS
@given(cases(count=3), st.lists(st.sampled_from(WEIGHTS), min_size=3, max_size=3))
def test_linear_combination_and_combine_units_match_dense(case: Case, ws: list[float]) -> None:
    by = case.by
    got = lr.linear_combination(case.xs, ws)
    assert got.rank == sum(x.rank for x in case.xs)  # exact: ranks add
    check_dense(got, case, lambda *w: dense.linear_combination(w, ws), *case.xs, atol=TOL * case.scale * 10)
    cs = [lr.mag(x, by) for x in reversed(case.xs)]
    got = lr.combine_units(case.xs, cs, by)
    per_x = zip(*(items(x, case.batch) for x in case.xs))
    per_c = zip(*(items(c, case.batch) for c in cs))
    for g, ws_, cs_ in zip(items(got, case.batch), per_x, per_c):
        close(g, dense.combine_units(ws_, cs_, by), atol=TOL * case.scale**2 * 100)


# --- modulators --------------------------------------------------------------------------


@KERNELS
@given(cases())
def test_reverse(case: Case) -> None:
    d = lr.dir(case.xs[0], case.by)
    check_dense(lr.reverse(d), case, dense.reverse, d)
    close(lr.reverse(lr.reverse(d)).dense(), d.dense())


@KERNELS
@given(cases(count=2), st.sampled_from(T_VALUES))
def test_shift_matches_dense(case: Case, t: float) -> None:
    d, e = dirs(case)
    check_dense(lr.shift(d, e, t, case.by), case, lambda a, b: dense.shift(a, b, t, case.by), d, e)


@KERNELS
@given(cases(count=2))
def test_shift_endpoints(case: Case) -> None:
    # On directions (unit or zero units) both branches give d at t=0 and e at t=1: the
    # fallback normalize(d) is d itself, and a zero d stays zero.
    d, e = dirs(case)
    by = case.by
    close(lr.shift(d, e, 0.0, by).dense(), d.dense())
    close(lr.shift(d, e, 1.0, by).dense(), e.dense())


@KERNELS
@given(cases(), st.sampled_from(T_VALUES))
def test_shift_degenerate_units(case: Case, t: float) -> None:
    d = lr.dir(case.xs[0], case.by)
    by = case.by
    # Parallel: the linear path normalises back to d for every t (zero units stay zero).
    close(lr.shift(d, d, t, by).dense(), d.dense())
    # Antiparallel: normalize((1-t)d - t d) = sign(1-2t)·d, and exactly zero at t = ½.
    expected = 0.0 if t == 0.5 else math.copysign(1.0, 1 - 2 * t)
    close(lr.shift(d, lr.reverse(d), t, by).dense(), expected * d.dense())
    # A zero unit on either side: the linear path, i.e. the other direction's sign or zero.
    zero = LowRank.zeros(case.m, case.n, case.batch, dtype=F64)
    close(lr.shift(d, zero, t, by).dense(), (0.0 if t == 1.0 else math.copysign(1.0, 1 - t)) * d.dense())
    close(lr.shift(zero, d, t, by).dense(), (0.0 if t == 0.0 else math.copysign(1.0, t)) * d.dense())


def angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle between matching rows of a and b (atan2 is accurate near 0 and π, arccos is not)."""
    b_hat = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    dot = (a * b_hat).sum(-1)
    cross = torch.linalg.vector_norm(a - dot[..., None] * b_hat, dim=-1)
    return torch.atan2(cross, dot)


@KERNELS
@given(cases(count=2), st.floats(0.0, 1.0))
def test_shift_is_geodesic(case: Case, t: float) -> None:
    d, e = dirs(case)
    by = case.by
    s = lr.shift(d, e, t, by)
    for D, E, S in zip(items(d, case.batch), items(e, case.batch), items(s, case.batch)):
        du, eu, su = (dense._units(w, by) for w in (D, E, S))
        cos = (du * eu).sum(-1).clamp(-1, 1)
        ok = (torch.sin(torch.arccos(cos)) >= 1e-4) & (du.norm(dim=-1) > 0.5) & (eu.norm(dim=-1) > 0.5)
        theta = angle(eu, du)
        close(su.norm(dim=-1)[ok], torch.ones_like(theta[ok]), atol=1e-9)
        close(angle(su, du)[ok], t * theta[ok], atol=1e-8)
        close(angle(su, eu)[ok], (1 - t) * theta[ok], atol=1e-8)


@KERNELS
@given(cases(count=3), st.lists(st.sampled_from(WEIGHTS), min_size=3, max_size=3))
def test_mix_matches_dense(case: Case, ws: list[float]) -> None:
    ds = dirs(case)
    check_dense(lr.mix(ds, ws, case.by), case, lambda *w: dense.mix(w, ws, case.by), *ds)


@KERNELS
@given(cases(count=3), st.integers(0, 2))
def test_mix_one_hot_returns_that_direction(case: Case, hot: int) -> None:
    ds = dirs(case)
    ws = [1.0 if i == hot else 0.0 for i in range(3)]
    close(lr.mix(ds, ws, case.by).dense(), ds[hot].dense())
    close(lr.mix(case.xs, ws, case.by).dense(), lr.dir(case.xs[hot], case.by).dense())


@KERNELS
@given(cases(count=2))
def test_orth_matches_dense_and_is_orthogonal(case: Case) -> None:
    d, e = dirs(case)
    by = case.by
    o = lr.orth(d, e, by)
    check_dense(o, case, lambda a, b: dense.orth(a, b, by), d, e)
    close(lr.unit_dots(o, e, by), torch.zeros_like(lr.mag(e, by)))
    # Raw (unnormalised) d: SPEC subtracts ⟨d,e⟩·e literally, e still a direction.
    check_dense(lr.orth(case.xs[0], e, by), case, lambda a, b: dense.orth(a, b, by), case.xs[0], e)


# --- lowrank -----------------------------------------------------------------------------


@KERNELS
@given(cases(count=2), st.integers(0, 6))
def test_lowrank_is_eckart_young(case: Case, r: int) -> None:
    x = cat(case.xs[0], case.xs[1])  # ranks up to 10, often above min(m, n)
    approx, err = lr.lowrank(x, r)
    assert approx.rank <= max(r, 0) or approx is x
    assert err.shape == x.batch_shape
    for W, Wr, e in zip(items(x, case.batch), items(approx, case.batch), err.reshape(-1)):
        sv = torch.linalg.svdvals(W)
        total = sv.norm()
        expected = sv[r:].norm() / total if total > 0 else torch.zeros((), dtype=F64)
        close(e, expected, atol=1e-8)
        # Eckart–Young: the returned approximation attains the optimal error it reports.
        achieved = (W - Wr).norm() / total if total > 0 else torch.zeros((), dtype=F64)
        close(achieved, expected, atol=1e-8)
        Wd, ed = dense.lowrank(W, r)
        close(ed, expected, atol=1e-8)
        # W_r is unique unless σ_r = σ_{r+1} > 0.
        if 0 < r < len(sv) and sv[r - 1] - sv[r] < 1e-6 * sv[0]:
            continue
        close(Wr, Wd, atol=1e-8 * max(float(sv[0]) if len(sv) else 1.0, 1e-300))


@KERNELS
@given(cases(), st.integers(0, 6))
def test_lowrank_at_or_above_rank_is_identity(case: Case, extra: int) -> None:
    x = case.xs[0]
    approx, err = lr.lowrank(x, x.rank + extra)
    assert approx is x
    assert torch.equal(err, torch.zeros(x.batch_shape, dtype=F64))


@KERNELS
@given(cases(count=2), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_lowrank_depends_only_on_delta(case: Case, r: int, seed: int) -> None:
    """Deterministic signs: the same ΔW in another factor basis gives the same factors."""
    x = cat(case.xs[0], case.xs[1])
    k = x.rank
    if k == 0 or r >= k:
        return
    gen = torch.Generator().manual_seed(seed)
    # A well-conditioned change of the inner basis: B M, M⁻¹ A.
    M = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=F64)).Q * 2.0
    y = LowRank(x.B @ M, M.mT / 4.0 @ x.A)
    a, _ = lr.lowrank(x, r)
    b, _ = lr.lowrank(y, r)
    for W, fa, fb in zip(items(x, case.batch), item_lowranks(a, case.batch), item_lowranks(b, case.batch)):
        sv = torch.linalg.svdvals(W)
        p = min(r, len(sv))
        gaps = sv[:p] - torch.cat([sv[1 : p + 1], sv.new_zeros(1)])[:p]
        if len(sv) == 0 or sv[0] == 0 or (gaps < 1e-4 * sv[0]).any():
            continue  # singular vectors not unique
        top2 = fa.B.abs().topk(min(2, fa.m), dim=0).values
        if fa.m > 1 and ((top2[0] - top2[1]) < 1e-6 * top2[0]).any():
            continue  # sign pivot nearly tied
        close(fb.B, fa.B, atol=1e-8 * float(sv[0]))
        close(fb.A, fa.A, atol=1e-8)


def test_lowrank_of_zero_and_compact() -> None:
    zero = LowRank(torch.zeros(4, 3, dtype=F64), torch.randn(3, 5, dtype=F64))
    approx, err = lr.lowrank(zero, 1)
    assert err.item() == 0.0
    assert approx.dense().abs().max().item() == 0.0
    # compact drops exactly the redundant directions: rank 6 factors of a rank-2 matrix.
    gen = torch.Generator().manual_seed(0)
    x = random_lowrank(gen, (2,), 7, 9, 2, 1.0)
    padded = LowRank(torch.cat([x.B, x.B], -1), torch.cat([x.A, x.A], -2))
    padded = cat(padded, LowRank(torch.zeros(2, 7, 2, dtype=F64), torch.randn(2, 2, 9, dtype=F64, generator=gen)))
    c = lr.compact(padded)
    assert c.rank == 2
    close(c.dense(), padded.dense())
    assert lr.compact(c) is c


# --- batching, rank 0, dtype -------------------------------------------------------------


OPS = {
    "mag": lambda xs, by: lr.mag(xs[0], by),
    "dir": lambda xs, by: lr.dir(xs[0], by),
    "dots": lambda xs, by: lr.unit_dots(xs[0], xs[1], by),
    "recombine": lambda xs, by: lr.recombine(lr.dir(xs[0], by), lr.mag(xs[1], by), by),
    "reverse": lambda xs, by: lr.reverse(xs[0]),
    "shift": lambda xs, by: lr.shift(lr.dir(xs[0], by), lr.dir(xs[1], by), 0.3, by),
    "mix": lambda xs, by: lr.mix(xs, [0.5, 1.5], by),
    "orth": lambda xs, by: lr.orth(lr.dir(xs[0], by), lr.dir(xs[1], by), by),
    "lowrank": lambda xs, by: lr.lowrank(cat(xs[0], xs[1]), 2)[0],
    "lowrank_err": lambda xs, by: lr.lowrank(cat(xs[0], xs[1]), 2)[1],
    "combine_units": lambda xs, by: lr.combine_units(xs, [lr.mag(xs[1], by), -1.0], by),
}


@KERNELS
@given(cases(count=2).filter(lambda c: c.batch != ()), st.sampled_from(sorted(OPS)))
def test_batched_equals_per_item(case: Case, op: str) -> None:
    batched = OPS[op](case.xs, case.by)
    singles = [OPS[op](list(xs), case.by) for xs in zip(*(item_lowranks(x, case.batch) for x in case.xs))]
    for got, single in zip(items(batched, case.batch), singles):
        close(got, single.dense() if isinstance(single, LowRank) else single, atol=TOL * case.scale**2 * 10)


@pytest.mark.parametrize("by", BYS)
def test_rank_zero_modules(by: str) -> None:
    z = LowRank.zeros(5, 3, batch=(2,), dtype=F64)
    assert (z.m, z.n, z.rank, tuple(z.batch_shape)) == (5, 3, 0, (2,))
    assert torch.equal(lr.mag(z, by), torch.zeros(unit_shape(by, (2,), 5, 3), dtype=F64))
    assert torch.equal(lr.dir(z, by).dense(), torch.zeros(2, 5, 3, dtype=F64))
    gen = torch.Generator().manual_seed(1)
    d = lr.dir(random_lowrank(gen, (2,), 5, 3, 2, 1.0), by)
    close(lr.shift(z, d, 0.4, by).dense(), d.dense())  # zero unit → linear path → normalize(0.4·d)
    close(lr.orth(d, z, by).dense(), d.dense())
    close(lr.mix([z, d], [1.0, 2.0], by).dense(), d.dense())


@pytest.mark.parametrize("by", BYS)
def test_float32_stays_float32(by: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = random_lowrank(gen, (3,), 6, 4, 3, 1.0).to(torch.float32)
    y = random_lowrank(gen, (3,), 6, 4, 2, 1.0).to(torch.float32)
    d, e = lr.dir(x, by), lr.dir(y, by)
    for v in (lr.mag(x, by), d.B, lr.shift(d, e, 0.25, by).B, lr.orth(d, e, by).A, lr.lowrank(x, 1)[1]):
        assert v.dtype == torch.float32
    close_f32 = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    close_f32(lr.shift(d, e, 0.25, by).dense().double(), lr.shift(d.to(F64), e.to(F64), 0.25, by).dense())


def test_bad_by_and_mismatched_factors() -> None:
    x = LowRank.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError):
        lr.mag(x, "row")
    with pytest.raises(ValueError):
        LowRank(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        lr.linear_combination([x, LowRank.zeros(3, 2, dtype=F64)], [1.0, 1.0])


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_shift_antiparallel_in_float32_takes_the_fallback(by, t):
    """float32 rounding must not turn e = reverse(d) into a slerp through a tiny sin θ."""
    g = torch.Generator().manual_seed(0)
    x = LowRank(torch.randn(40, 4, generator=g), torch.randn(4, 30, generator=g))
    d = lr.dir(x, by)
    got = lr.unit_norms(lr.shift(d, lr.reverse(d), t, by), by)
    want = dense.unit_norms(dense.shift(dense.dir(x.dense().double(), by), -dense.dir(x.dense().double(), by), t, by), by)
    assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
def test_float32_shift_of_a_module_does_not_depend_on_its_batch(by):
    """float32 shift recomputes near-degenerate units in float64, unit by unit: a module gets the
    same bits alone or batched with a module that needs the float64 path."""
    g = torch.Generator().manual_seed(3)
    x = LowRank(torch.randn(2, 40, 4, generator=g), torch.randn(2, 4, 30, generator=g))
    y = LowRank(torch.randn(2, 40, 4, generator=g), torch.randn(2, 4, 30, generator=g))
    d, e = lr.dir(x, by), lr.dir(y, by)
    e = LowRank(torch.stack([e.B[0], -d.B[1]]), torch.stack([e.A[0], d.A[1]]))  # module 1: antiparallel
    both = lr.shift(d, e, 0.3, by)
    for i in range(2):
        alone = lr.shift(d[i], e[i], 0.3, by)
        assert torch.equal(both.B[i], alone.B) and torch.equal(both.A[i], alone.A)


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
def test_float32_shift_agrees_with_float64(by):
    g = torch.Generator().manual_seed(4)
    x = LowRank(torch.randn(3, 50, 6, generator=g), torch.randn(3, 6, 20, generator=g))
    y = LowRank(torch.randn(3, 50, 6, generator=g), torch.randn(3, 6, 20, generator=g))
    d, e = lr.dir(x, by), lr.dir(y, by)
    got = lr.shift(d, e, 0.3, by).dense().double()
    want = lr.shift(d.to(F64), e.to(F64), 0.3, by).dense()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dir_and_mag_of_one_value_share_its_norms(monkeypatch):
    """A transfer needs the norms of src for both dir(src) and mag(src): one QR, not two."""
    import dipm_lang
    from dipm_lang.backend import context

    g = torch.Generator().manual_seed(5)
    module = "model.layers.0.self_attn.q_proj"
    src = {module: LowRank(torch.randn(12, 3, generator=g), torch.randn(3, 10, generator=g))}
    tgt = {module: LowRank(torch.randn(12, 3, generator=g), torch.randn(3, 10, generator=g))}
    calls = []
    real = context.L.unit_norms
    monkeypatch.setattr(context.L, "unit_norms", lambda x, by="out": calls.append(by) or real(x, by))
    shared = dipm_lang.evaluate("transfer(S, T, t=0.3)", S=src, T=tgt).modules[module]
    assert len(calls) == 2  # src and tgt, once each
    monkeypatch.setattr(context.L, "unit_norms", real)
    d, e = lr.dir(src[module]), lr.dir(tgt[module])
    alone = lr.recombine(lr.shift(d, e, 0.3), lr.mag(src[module]))
    assert torch.allclose(shared.dense(), alone.dense(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("by", ["out", "in", "matrix"])
def test_float32_cancellation_gives_zero_units_not_normalised_noise(by):
    """orth(d, d) and mix([d, d], [1, −1]) cancel exactly: SPEC's zero units, also in float32
    (whose rounding noise, ~1e-7, is far above eps = 1e-12)."""
    g = torch.Generator().manual_seed(6)
    d = lr.dir(LowRank(torch.randn(30, 4, generator=g), torch.randn(4, 20, generator=g)), by)
    assert d.dtype == torch.float32
    for value in (lr.orth(d, d, by), lr.mix([d, d], [1.0, -1.0], by)):
        assert float(lr.unit_norms(value.to(F64), by).max()) == 0.0
    # and a non-degenerate orth is still a unit direction orthogonal to e
    e = lr.dir(LowRank(torch.randn(30, 4, generator=g), torch.randn(4, 20, generator=g)), by)
    o = lr.orth(d, e, by)
    assert torch.allclose(lr.unit_norms(o.to(F64), by), torch.ones(()).double(), atol=1e-5)
    assert float(lr.unit_dots(o.to(F64), e.to(F64), by).abs().max()) < 1e-5


def test_programs_in_float32_keep_cancelled_units_zero():
    import dipm_lang

    g = torch.Generator().manual_seed(8)
    module = "model.layers.0.self_attn.q_proj"
    a = {module: LowRank(torch.randn(12, 3, generator=g), torch.randn(3, 10, generator=g))}
    b = {module: LowRank(torch.randn(12, 3, generator=g), torch.randn(3, 10, generator=g))}
    for expr in ("orth(dir(A), dir(A)) + 0 * B", "dir((A + B) - B - A)", "mag(dir(A) - dir(A) + 0 * B)"):
        for level in (0, 2):
            value = dipm_lang.evaluate(expr, A=a, B=b, level=level).modules[module]
            if isinstance(value, LowRank):  # a direction: exactly zero units
                assert float(value.dense().abs().max()) == 0.0, (expr, level)
            else:  # a magnitude: zero units, i.e. at most eps
                assert float(value.abs().max()) <= lr.EPS, (expr, level)
