"""SPEC §7 compact SVD and §7.9 merges (Iso-C, KnOTS, TSV) and `align`, against dense float64 oracles.

Each reference below is written straight from SPEC §7.9 on the m×n matrices with
`torch.linalg.svd`, with random sign flips of every singular pair (the merges must not depend on
them). Inputs cover flat and decaying spectra, ranks that differ between inputs, a zero input,
negative and zero weights, batches of modules (a module's result must not depend on its
batch-mates), float32 inputs, and a 200 000 × 200 000 module that only the factored path can do.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from dipm_lang.backend import svd_merges as sm
from dipm_lang.backend.factored_svd import compact_svd, polar
from dipm_lang.backend.lowrank import LowRank, unit_norms
from svd_reference import (BIG, F64, big_bases, big_update, core, dense_compact_svd, orthonormal, outside, ref_iso,
                           ref_knots, ref_tsv, relative, stack, update)

M, N = 40, 30
TIGHT = 1e-9  # float64 factored vs float64 dense


# --- inputs ------------------------------------------------------------------------------

# Spectra per input: distinct values where a method's result would depend on the basis chosen
# inside a repeated singular value (KnOTS-TIES' pruning; TSV's top-k cut).
CASES = {
    "decaying": ([[3.0, 1.5, 0.7, 0.2], [2.0, 0.5, 0.1], [1.0, 0.9, 0.3, 0.05, 0.01]], [1.0, 0.5, 2.0]),
    "flat": ([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], [1.0, 1.0]),
    "negative-zero-weights": ([[3.0, 1.0, 0.5], [1.0, 0.8], [2.0, 0.4, 0.3]], [-1.0, 0.0, 0.7]),
    "zero-input": ([[2.0, 1.0, 0.5], [0.0, 0.0], [1.5, 0.6, 0.2]], [1.0, 1.0, -0.5]),
    "single": ([[4.0, 2.0, 1.0, 0.5]], [0.8]),
    "wide-gap": ([[1e3, 1.0, 1e-3], [5.0, 2.0]], [1.0, 2.0]),
}
# The methods a repeated singular value does not affect (TSV's default k cuts inside one: its own test).
FLAT_OK = {"iso", "knots-linear"}


def inputs(case: str, dtype: torch.dtype = F64) -> tuple[list[LowRank], list[float]]:
    spectra, w = CASES[case]
    return [update(M, N, s, seed=10 * i + len(case), dtype=dtype) for i, s in enumerate(spectra)], w


def dense(xs: list[LowRank]) -> list[Tensor]:
    """The exact value of each input's factors (float32 factors multiplied in float64)."""
    return [x.B.to(F64) @ x.A.to(F64) for x in xs]


# --- compact SVD -------------------------------------------------------------------------


def test_compact_svd_matches_dense_and_drops_zero_directions() -> None:
    x = update(M, N, [5.0, 2.0, 1e-3, 0.0, 1e-12], seed=1)  # 1e-12 ≤ 1e-10·σ₁: counts as zero
    U, S, Vh, keep = compact_svd(x)
    W = x.dense()
    _, S_ref, _ = dense_compact_svd(W)
    assert keep.tolist() == [True, True, True]
    assert torch.allclose(S, S_ref, rtol=1e-12, atol=0)
    assert relative(U @ torch.diag(S) @ Vh, W) < 1e-12  # all but the dropped 1e-12 direction
    assert torch.allclose(U.mT @ U, torch.eye(3, dtype=F64), atol=1e-13)
    assert torch.allclose(Vh @ Vh.mT, torch.eye(3, dtype=F64), atol=1e-13)
    # Deterministic signs: the largest-|·| entry of each left vector is positive.
    pivot = U.abs().argmax(dim=0)
    assert bool((U[pivot, torch.arange(3)] > 0).all())


def test_compact_svd_batch_masks_each_module_alone() -> None:
    modules = [update(M, N, s, seed=i) for i, s in enumerate([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])]
    U, S, Vh, keep = compact_svd(stack(modules))
    assert keep.sum(-1).tolist() == [3, 1, 0]
    for g, x in enumerate(modules):
        alone = compact_svd(x)
        k = alone.S.shape[-1]
        assert torch.allclose(S[g, :k], alone.S, rtol=1e-13, atol=0)
        assert bool((S[g, k:] == 0).all()) and bool((U[g, :, k:] == 0).all()) and bool((Vh[g, k:] == 0).all())
        assert relative(U[g] @ torch.diag(S[g]) @ Vh[g], x.dense()) < 1e-13 if k else bool((S[g] == 0).all())


def test_compact_svd_of_zero_and_float32() -> None:
    svd = compact_svd(LowRank.zeros(M, N, batch=(2,)))
    assert svd.U.shape == (2, M, 0) and svd.S.shape == (2, 0) and svd.Vh.shape == (2, 0, N)
    x32 = update(M, N, [2.0, 1.0], seed=3, dtype=torch.float32)
    U, S, Vh, _ = compact_svd(x32)
    assert U.dtype == S.dtype == Vh.dtype == F64
    assert relative(U @ torch.diag(S) @ Vh, x32.dense().to(F64)) < 1e-6


def test_polar_of_orthonormal_columns_is_itself() -> None:
    generator = torch.Generator().manual_seed(0)
    Q = orthonormal(M, 5, generator)
    assert torch.allclose(polar(Q), Q, atol=1e-13)
    padded = torch.cat([Q, torch.zeros(M, 2, dtype=F64)], dim=1)
    assert torch.allclose(polar(padded), padded, atol=1e-13)


# --- the merges against the dense references ---------------------------------------------

MERGES = {
    "iso": (lambda xs, w: sm.iso(xs, w), lambda Ws, w, flips: ref_iso(Ws, w, flips)),
    "knots-linear": (lambda xs, w: sm.knots(xs, w, "linear"),
                     lambda Ws, w, flips: ref_knots(Ws, w, "linear", None, flips)),
    "knots-ties": (lambda xs, w: sm.knots(xs, w, "ties", 0.4),
                   lambda Ws, w, flips: ref_knots(Ws, w, "ties", 0.4, flips)),
    "tsv": (lambda xs, w: sm.tsv(xs, w), lambda Ws, w, flips: ref_tsv(Ws, w, None, flips)),
}


# KnOTS-TIES prunes in one particular basis, undefined inside a repeated singular value: no flat case.
@pytest.mark.parametrize("merge,case", [(merge, case) for merge in sorted(MERGES) for case in sorted(CASES)
                                        if case != "flat" or merge in FLAT_OK])
def test_merge_matches_dense_reference_under_any_signs(merge: str, case: str) -> None:
    xs, w = inputs(case)
    factored, reference = MERGES[merge]
    got = factored(xs, w)
    assert got.dtype == F64 and (got.m, got.n) == (M, N)
    Ws = dense(xs)
    for flip_seed in range(3):  # each reference run draws different signs for every SVD pair
        expected = reference(Ws, w, torch.Generator().manual_seed(flip_seed))
        assert relative(got.dense(), expected) < TIGHT, (merge, case, flip_seed)


@pytest.mark.parametrize("merge", sorted(MERGES))
def test_merge_float32_inputs(merge: str) -> None:
    xs, w = inputs("decaying", torch.float32)
    got = MERGES[merge][0](xs, w)
    assert got.dtype == torch.float32
    expected = MERGES[merge][1](dense(xs), w, None)
    assert relative(got.dense(), expected) < 1e-5


@pytest.mark.parametrize("merge", sorted(MERGES))
def test_batch_gives_each_module_its_own_result(merge: str) -> None:
    """Modules of different numerical ranks and per-module weights, batched vs one by one."""
    spectra = [([3.0, 1.0, 0.5, 0.2], [2.0, 0.7, 0.1, 0.05]),
               ([1.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.0, 0.0]),
               ([0.0, 0.0, 0.0, 0.0], [4.0, 1.0, 0.3, 0.0])]
    modules = [[update(M, N, s, seed=7 * g + i) for i, s in enumerate(pair)] for g, pair in enumerate(spectra)]
    w_per_module = torch.tensor([[1.0, -0.5], [2.0, 1.0], [0.5, 3.0]], dtype=F64)  # [G, inputs]
    batched = MERGES[merge][0]([stack([mods[i] for mods in modules]) for i in range(2)],
                               [w_per_module[:, i] for i in range(2)])
    for g, mods in enumerate(modules):
        w = w_per_module[g].tolist()
        alone = MERGES[merge][0](mods, w)
        assert relative(batched[g].dense(), alone.dense()) < 1e-12
        assert relative(batched[g].dense(), MERGES[merge][1](dense(mods), w, None)) < TIGHT


# --- specifics ---------------------------------------------------------------------------


def test_iso_zero_sum_is_zero_and_singular_values_are_equal() -> None:
    x = update(M, N, [2.0, 1.0, 0.5], seed=4)
    assert bool((sm.iso([LowRank.zeros(M, N)]).dense() == 0).all())
    cancelled = sm.iso([x, x], [1.0, -1.0])  # an exact zero sum, computed by concatenation
    assert float(torch.linalg.vector_norm(cancelled.dense())) < 1e-12 * float(torch.linalg.vector_norm(x.dense()))
    S = torch.linalg.svdvals(sm.iso([x, update(M, N, [1.0, 0.3], seed=5)]).dense())
    assert torch.allclose(S[:5], S[0].expand(5), rtol=1e-12) and float(S[5:].abs().max()) < 1e-12


def test_knots_linear_is_the_weighted_sum() -> None:
    """U spans every input's columns, so U·Σ wᵢUᵀXᵢ = Σ wᵢXᵢ (KnOTS-linear is task arithmetic)."""
    xs, w = inputs("decaying")
    assert relative(sm.knots(xs, w, "linear").dense(), sum(wi * Wi for wi, Wi in zip(w, dense(xs)))) < 1e-12


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_knots_ties_densities(density: float) -> None:
    xs, w = inputs("decaying")
    got = sm.knots(xs, w, "ties", density)
    expected = ref_knots(dense(xs), w, "ties", density)
    if density == 0.0:
        assert bool((got.dense() == 0).all())
    assert relative(got.dense(), expected) < TIGHT


def test_knots_ties_density_per_module() -> None:
    pair = [[update(M, N, [2.0, 1.0, 0.4], seed=s), update(M, N, [1.5, 0.6], seed=s + 1)] for s in (1, 2)]
    density = torch.tensor([0.2, 0.7], dtype=F64)
    batched = sm.knots([stack([p[i] for p in pair]) for i in range(2)], None, "ties", density)
    for g in range(2):
        assert relative(batched[g].dense(), ref_knots(dense(pair[g]), [1.0, 1.0], "ties", float(density[g]))) < TIGHT


@pytest.fixture
def one_thread():
    """One intra-op thread, as dipm's executor runs kernels (backend/parallel.py): these tests make
    thousands of tiny GEMMs, which on a busy 2-core machine cost 10× more with two threads."""
    from dipm_lang.backend.parallel import single_threaded_kernels

    with single_threaded_kernels():
        yield


def test_knots_ties_chunking_gives_identical_bits(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.setattr(sm, "TILE_ENTRIES", 4096)  # tiles of 512 columns, to keep the matrices small
    tile = sm.tile_columns(9)  # k = 9: the concatenation's rank
    assert tile == 512
    n = 3 * tile + 77  # several tiles and a ragged last one
    xs = [update(24, n, s, seed=i) for i, s in enumerate([[3.0, 1.0, 0.2], [2.0, 0.9], [1.0, 0.5, 0.4, 0.1]])]
    w = [1.0, -0.3, 0.8]
    whole = sm.knots(xs, w, "ties", 0.3, chunk_columns=None)
    for chunk in (1, tile, tile + 1, 2 * tile):
        part = sm.knots(xs, w, "ties", 0.3, chunk_columns=chunk)
        assert torch.equal(part.A, whole.A) and torch.equal(part.B, whole.B), chunk
    assert relative(whole.dense(), ref_knots(dense(xs), w, "ties", 0.3)) < TIGHT


def test_knots_ties_row_chunks_give_identical_bits(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """Many inputs: the pieces' stack is cut into whole row blocks of Z to stay within chunk_bytes
    (here blocks of 8 rows, so k = 18 has a ragged last block); every cut gives the bits of all rows
    and columns at once, and the result is KnOTS-TIES' (dense float64 reference)."""
    monkeypatch.setattr(sm, "TILE_ENTRIES", 4096)
    monkeypatch.setattr(sm, "Z_ROWS", 8)
    spectra = [[3.0, 1.0, 0.2], [2.0, 0.9, 0.5], [1.0, 0.5, 0.4], [2.5, 0.3, 0.1], [1.2, 1.1, 0.7], [0.8, 0.6, 0.3]]
    n = 700  # k = 18: tiles of 512 columns, the last ragged
    xs = [update(30, n, spectrum, seed=10 + i) for i, spectrum in enumerate(spectra)]
    w = [1.0, -0.3, 0.8, 0.5, 1.5, -1.0]
    whole = sm.knots(xs, w, "ties", 0.3, chunk_columns=None, chunk_bytes=None)
    assert whole.rank == 18 and sm.z_block_rows(18) == 8
    for chunk_columns, chunk_bytes in ((None, 1), (1, 1), (512, 6 * 16 * 512 * 8)):
        part = sm.knots(xs, w, "ties", 0.3, chunk_columns=chunk_columns, chunk_bytes=chunk_bytes)
        assert torch.equal(part.A, whole.A) and torch.equal(part.B, whole.B), (chunk_columns, chunk_bytes)
    assert relative(whole.dense(), ref_knots(dense(xs), w, "ties", 0.3)) < TIGHT
    with pytest.raises(ValueError, match="chunk_bytes"):
        sm.knots(xs, w, "ties", 0.3, chunk_bytes=0)


def test_knots_ties_row_blocks_keep_the_bits_of_one_gemm(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """Z computed in aligned blocks of Z_ROWS rows has the bits of one k-row GEMM per tile (what
    KnOTS-TIES computed before row blocks), so bounding a 50-input merge's memory changed no result.
    k = 150 here: two full 64-row blocks and a ragged one."""
    xs = [update(200, 700, [3.0, 1.0 + 0.1 * i, 0.5, 0.2, 0.1], seed=40 + i, dtype=torch.float32) for i in range(30)]
    w = [0.5 + 0.05 * i for i in range(30)]
    blocked = sm.knots(xs, w, "ties", 0.4)
    assert blocked.rank == 150 and sm.z_block_rows(150) == 64
    monkeypatch.setattr(sm, "Z_ROWS", 1 << 30)
    one_gemm = sm.knots(xs, w, "ties", 0.4, chunk_bytes=None)
    assert torch.equal(blocked.A, one_gemm.A) and torch.equal(blocked.B, one_gemm.B)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_tsv_explicit_k(k: int) -> None:
    xs, w = inputs("decaying")
    assert relative(sm.tsv(xs, w, k=k).dense(), ref_tsv(dense(xs), w, k)) < TIGHT


def test_tsv_flat_spectra_when_k_keeps_whole_clusters() -> None:
    xs, w = inputs("flat")
    assert relative(sm.tsv(xs, w, k=3).dense(), ref_tsv(dense(xs), w, 3)) < TIGHT


def test_tsv_default_k_uses_the_smallest_numerical_rank() -> None:
    # Ranks 4, 2 (one factor column is a zero direction), 5 → r = 2, n = 3 → k = max(1, 0) = 1.
    spectra = [[3.0, 1.0, 0.5, 0.1], [2.0, 1.0, 0.0], [1.0, 0.6, 0.4, 0.2, 0.1]]
    xs = [update(M, N, s, seed=i) for i, s in enumerate(spectra)]
    w = [1.0, 1.0, 1.0]
    assert relative(sm.tsv(xs, w).dense(), ref_tsv(dense(xs), w, 1)) < TIGHT
    assert relative(sm.tsv(xs[:1], w[:1]).dense(), xs[0].dense()) < 1e-12  # one input: k = rank, exact


def test_tsv_of_identical_inputs_drops_the_repeated_directions() -> None:
    """[U1 U1] is rank deficient: the compact polar factor is a partial isometry (SPEC's compact rule)."""
    x = update(M, N, [2.0, 1.0], seed=9)
    got = sm.tsv([x, x], [1.0, 1.0], k=2)
    assert relative(got.dense(), ref_tsv(dense([x, x]), [1.0, 1.0], 2)) < TIGHT


def test_align_keeps_every_update_and_shares_one_factor() -> None:
    xs = [update(M, N, s, seed=i) for i, s in enumerate([[3.0, 1.0, 0.5], [2.0, 0.3], [1.0, 1.0, 0.2, 0.1]])]
    for side in ("A", "B"):
        aligned = sm.align(xs, side)
        for x, y in zip(xs, aligned):
            assert relative(y.dense(), x.dense()) < 1e-13
        shared = [getattr(y, side) for y in aligned]
        assert all(s is shared[0] for s in shared)
        # k = rank of the stacked factors (generic: Σ rᵢ = 9 ≤ 30), with orthonormal rows / columns.
        basis = shared[0] if side == "A" else shared[0].mT
        assert basis.shape[-2] == 9
        assert torch.allclose(basis @ basis.mT, torch.eye(9, dtype=F64), atol=1e-13)
    # With a shared orthonormal A, B' rows carry ΔW's row norms (by="out" units of the update).
    aligned = sm.align(xs, "A")
    for x, y in zip(xs, aligned):
        assert torch.allclose(torch.linalg.vector_norm(y.B, dim=-1), unit_norms(x, "out"), rtol=1e-12)


def test_align_shared_basis_of_overlapping_adapters() -> None:
    """Adapters whose A rows span one 4-dim space share a basis of rank 4, not Σ rᵢ = 10."""
    generator = torch.Generator().manual_seed(3)
    basis = torch.randn(4, N, generator=generator, dtype=F64)
    xs = [LowRank(torch.randn(M, r, generator=generator, dtype=F64), torch.randn(r, 4, generator=generator,
                                                                              dtype=F64) @ basis)
          for r in (2, 4, 4)]
    aligned = sm.align(xs, "A")
    assert aligned[0].A.shape == (4, N)
    for x, y in zip(xs, aligned):
        assert relative(y.dense(), x.dense()) < 1e-12


def test_align_batch_and_float32() -> None:
    modules = [[update(M, N, s, seed=3 * g + i) for i, s in enumerate(pair)]
               for g, pair in enumerate([([2.0, 1.0], [1.0, 0.5, 0.1]), ([1.0, 0.0], [3.0, 0.0, 0.0])])]
    batched = sm.align([stack([mods[i] for mods in modules]) for i in range(2)], "B")
    for i in range(2):
        for g, mods in enumerate(modules):
            assert relative(batched[i][g].dense(), mods[i].dense()) < 1e-13
    xs32 = [update(M, N, [2.0, 1.0], seed=1, dtype=torch.float32), update(M, N, [1.0], seed=2, dtype=torch.float32)]
    for x, y in zip(xs32, sm.align(xs32)):
        assert y.dtype == torch.float32 and relative(y.dense(), x.dense()) < 1e-6


def test_bad_arguments_raise_value_errors() -> None:
    x, y = update(M, N, [1.0], seed=1), update(M, N + 1, [1.0], seed=2)
    with pytest.raises(ValueError, match="needs at least one"):
        sm.iso([])
    with pytest.raises(ValueError, match="update 2 is"):
        sm.tsv([x, y])
    with pytest.raises(ValueError, match="2 updates but 1 weights"):
        sm.iso([x, x], [1.0])
    with pytest.raises(ValueError, match="needs a density"):
        sm.knots([x, x])
    with pytest.raises(ValueError, match="density must be between 0 and 1"):
        sm.knots([x, x], density=1.5)
    with pytest.raises(ValueError, match="method must be one of"):
        sm.knots([x, x], method="dare")
    with pytest.raises(ValueError, match="k must be a whole number"):
        sm.tsv([x, x], k=0)
    with pytest.raises(ValueError, match="side must be"):
        sm.align([x], side="C")
    with pytest.raises(ValueError, match="does not fit"):
        sm.iso([stack([x, x])], [torch.ones(3)])


# --- never m×n: 200 000 × 200 000 modules at rank 4 -------------------------------------
# Inputs live in span(P) × span(Q) (P, Q orthonormal, 200 000 × 12). Iso-C, TSV, KnOTS-linear and
# align commute with such bases, so their results are P·f(cores)·Qᵀ: the dense references run on the
# 12 × 12 cores Pᵀ Xᵢ Q.


def big_inputs() -> tuple[list[LowRank], list[Tensor]]:
    generator = torch.Generator().manual_seed(5)
    lefts = [torch.randn(12, 4, generator=generator, dtype=F64) * (i + 1) for i in range(3)]
    rights = [torch.randn(4, 12, generator=generator, dtype=F64) for _ in range(3)]
    return [big_update(L, R) for L, R in zip(lefts, rights)], [L @ R for L, R in zip(lefts, rights)]


def test_huge_modules_stay_factored() -> None:
    xs, cores = big_inputs()
    w = [1.0, -0.5, 2.0]
    assert torch.allclose(compact_svd(xs[0]).S, dense_compact_svd(cores[0])[1], rtol=1e-12)
    for name, got, expected in [
        ("iso", sm.iso(xs, w), ref_iso(cores, w)),
        ("tsv", sm.tsv(xs, w, k=2), ref_tsv(cores, w, 2)),
        ("knots-linear", sm.knots(xs, w, "linear"), ref_knots(cores, w, "linear")),
    ]:
        assert outside(got) < 1e-12, name
        assert relative(core(got), expected) < 1e-10, name
    for x, c, y in zip(xs, cores, sm.align(xs, "A")):
        assert outside(y) < 1e-12 and relative(core(y), c) < 1e-12


def test_huge_knots_ties() -> None:
    """Inputs on disjoint 4-dim subspaces: each entry of Z is nonzero in one input only, so every
    entry elects its own sign and merged = Σ wᵢ·prune(Zᵢ), with Zᵢ = diag(sᵢ)·Qᵢᵀ known."""
    P, Q = big_bases()
    spectra = [[4.0, 3.0, 2.0, 1.1], [2.5, 1.2, 0.6, 0.3], [1.0, 0.8, 0.5, 0.1]]  # all distinct
    xs = [update(BIG, BIG, s, seed=i, left=P[:, 4 * i:4 * i + 4], right=Q[:, 4 * i:4 * i + 4])
          for i, s in enumerate(spectra)]
    w = [1.0, -0.5, 2.0]
    density = 0.3
    got = sm.knots(xs, w, "ties", density)
    count = int(density * (12 * BIG))  # of each 12 × BIG block Zᵢ, whose nonzero rows are diag(sᵢ)·Qᵢᵀ
    expected = torch.zeros(12, BIG, dtype=F64)  # Pᵀ · result, row block i = wᵢ·prune(diag(sᵢ) Qᵢᵀ)
    for i, s in enumerate(spectra):
        block = torch.tensor(s, dtype=F64)[:, None] * Q[:, 4 * i:4 * i + 4].T
        cut = block.abs().flatten().kthvalue(block.numel() - count + 1).values
        expected[4 * i:4 * i + 4] = w[i] * torch.where(block.abs() >= cut, block, torch.zeros_like(block))
    B = got.B.to(F64)
    assert float(torch.linalg.vector_norm(B - P @ (P.T @ B))) < 1e-12 * float(torch.linalg.vector_norm(B))
    assert relative((P.T @ B) @ got.A, expected) < 1e-9  # entries ≤ 1e-10·σ₁ count as zero
