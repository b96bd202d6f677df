"""SVD-family merges on factored updates (SPEC §7.9) and a shared-basis alignment of factors.

Each merge takes updates X1…Xn (`LowRank`s of one shape, optionally with the same leading batch
dims) and weights (numbers, or tensors with one number per module), and returns a `LowRank` — LoRA
in, LoRA out, never an m×n matrix. Everything is computed in float64 from the factors
(`factored_svd.compact_svd`) and returned in the inputs' (promoted) dtype.

- `iso` (Iso-C): σ̄ · U Vᵀ from the compact SVD of Σ wᵢXᵢ.
- `knots` (KnOTS): the compact SVD of [X1 … Xn] gives a shared left basis U; each input becomes
  Zᵢ = Uᵀ Xᵢ (= the i-th column block of Σ Vᵀ), the Zᵢ are merged (linear or TIES), result U·merged.
- `tsv` (Task Singular Vectors): the top singular triplets of each input, their stacked vectors
  orthogonalised by the compact polar factor, result U⊥ · blockdiag(wᵢΣᵢ) · V⊥ᵀ.
- `align`: every adapter re-expressed over one shared orthonormal A (or B) per module.

All three merges are invariant under the SVDs' sign choices (a flip of uⱼ, vⱼ flips row j of every
Zᵢ in KnOTS and is undone by U; TSV's polar factors absorb it). They are not invariant under
rotations inside a repeated singular value for KnOTS-TIES, whose entry-wise pruning is defined on
one particular basis — as in KnOTS' own code; `iso`, `tsv` (when kᵢ does not split a repeated
value) and KnOTS-linear are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dipm_lang.backend.factored_svd import F64, RTOL, compact_svd, polar, svd_from_core
from dipm_lang.backend.lowrank import LowRank

__all__ = ["iso", "knots", "tsv", "align", "KNOTS_METHODS", "TILE_ENTRIES", "Z_ROWS", "CHUNK_BYTES", "tile_columns",
           "z_block_rows"]

KNOTS_METHODS = ("ties", "linear")

TILE_ENTRIES = 1 << 20
"""KnOTS-TIES computes Zᵢ in tiles of about this many entries (whole multiples of 512 columns, the
width depending only on the module's own rank k), always the same tiles, so every entry has the
same bits whether the merge runs chunked or not: a pruning cut compares entries with one of them,
and an entry one ulp off could fall to the other side."""


Z_ROWS = 64
"""KnOTS-TIES computes Zᵢ in GEMMs of at most this many rows (blocks from row 0, so each block starts
64-row, 64-byte aligned), always the same blocks for a given k, so a merge may hold a few row blocks of
every input instead of all k rows. (With MKL, float64 GEMMs over such aligned row blocks gave the bits
of one k-row GEMM in every case tried — 450 random shapes, ranks 1–300; unaligned or 1–7-row slices
did not.)"""

CHUNK_BYTES = 64 * 2**20
"""Bytes of the stack of all inputs' Z pieces KnOTS-TIES works on at once (whole row blocks, at least
one): 50 inputs of k = 800 in tiles of 1536 columns give pieces of 64 rows (39 MB), where whole
tiles (all 800 rows) held 490 MB, and the pruning and election about twice that."""


def tile_columns(k: int) -> int:
    """Columns per tile of a k-row Zᵢ: ≥ 512, a multiple of 512, about TILE_ENTRIES entries."""
    return 512 * max(1, -(-TILE_ENTRIES // (512 * max(k, 1))))


Weight = float | Tensor


# --- inputs ------------------------------------------------------------------------------


def _check_inputs(fn: str, xs: Sequence[LowRank]) -> None:
    if len(xs) == 0:
        raise ValueError(f"{fn} needs at least one update")
    first = xs[0]
    for i, x in enumerate(xs):
        if (x.m, x.n) != (first.m, first.n):
            raise ValueError(f"{fn}: update {i + 1} is {x.m}×{x.n}, update 1 is {first.m}×{first.n}")
        if x.batch_shape != first.batch_shape:
            raise ValueError(f"{fn}: update {i + 1} has batch dims {tuple(x.batch_shape)}, "
                             f"update 1 has {tuple(first.batch_shape)}")


def _out_dtype(xs: Sequence[LowRank]) -> torch.dtype:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _weights(fn: str, weights: Sequence[Weight] | None, xs: Sequence[LowRank]) -> list[Tensor]:
    """One float64 tensor of shape `batch` per input (default 1; used as given, SPEC §7.9)."""
    batch, device = xs[0].batch_shape, xs[0].device
    if weights is None:
        weights = [1.0] * len(xs)
    if len(weights) != len(xs):
        raise ValueError(f"{fn}: {len(xs)} updates but {len(weights)} weights")
    out = []
    for w in weights:
        t = torch.as_tensor(w, dtype=F64, device=device)
        try:
            out.append(t.expand(batch))
        except RuntimeError:
            raise ValueError(f"{fn}: a weight of shape {tuple(t.shape)} does not fit modules of batch "
                             f"shape {tuple(batch)} (give a number or one per module)") from None
    return out


def _per_module(fn: str, name: str, value: Weight, batch: torch.Size, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, dtype=F64, device=device)
    try:
        return t.expand(batch)
    except RuntimeError:
        raise ValueError(f"{fn}: {name} of shape {tuple(t.shape)} does not fit modules of batch shape "
                         f"{tuple(batch)}") from None


# --- Iso-C -------------------------------------------------------------------------------


def iso(xs: Sequence[LowRank], weights: Sequence[Weight] | None = None) -> LowRank:
    """Iso-C: with the compact SVD Σ wᵢXᵢ = U Σ Vᵀ, the result is σ̄ · U Vᵀ, σ̄ the mean of the kept σ.

    Returns B = σ̄·U [..., m, k], A = Vᵀ [..., k, n] (k the batch's largest numerical rank of the sum);
    a zero sum gives zero.
    """
    _check_inputs("iso", xs)
    w = _weights("iso", weights, xs)
    total = LowRank(torch.cat([x.B.to(F64) * wi[..., None, None] for x, wi in zip(xs, w)], dim=-1),
                    torch.cat([x.A.to(F64) for x in xs], dim=-2))
    U, S, Vh, keep = compact_svd(total)
    count = keep.sum(-1)
    mean = S.sum(-1) / count.clamp(min=1).to(F64)  # 0 where the sum is zero
    dtype = _out_dtype(xs)
    return LowRank((U * mean[..., None, None]).to(dtype), Vh.to(dtype))


# --- KnOTS -------------------------------------------------------------------------------


def knots(xs: Sequence[LowRank], weights: Sequence[Weight] | None = None, method: str = "ties",
          density: Weight | None = None, chunk_columns: int | None = 1024,
          chunk_bytes: int | None = CHUNK_BYTES) -> LowRank:
    """KnOTS: merge the inputs in the shared basis U of the compact SVD [X1 … Xn] = U Σ Vᵀ (SPEC §7.9).

    Zᵢ = (Σ Vᵀ)'s i-th column block = Uᵀ Xᵢ (k×n). `linear`: merged = Σ wᵢ Zᵢ. `ties` (`density`
    required, a number or one per module, 0 ≤ density ≤ 1): each Zᵢ keeps its int(density·k·n)
    largest-|·| entries (ties at the cut all kept, as `baselines.prune_magnitude`; entries ≤ 1e-10·σ₁
    are rounding noise and count as exact zeros, see `_ties_module`), each entry's sign
    is elected from the sum of the unweighted pruned blocks (a zero sum elects +, as
    `baselines.majority_sign_mask`), and merged = Σ wᵢ·(agreeing entries of Zᵢ) / max(#agreeing, 1).
    KnOTS' own code (gstoica27/KnOTS, `task_merger.apply_svd`) likewise scales V by Σ before merging.

    Returns B = U [..., m, k] and A = merged [..., k, n] (k ≤ Σ ranks). TIES runs module by module
    and processes Zᵢ in column chunks of `chunk_columns` (rounded up to whole tiles, see
    `tile_columns`; None: all columns at once) and row chunks that keep the stack of all inputs'
    pieces within `chunk_bytes` (whole blocks of `Z_ROWS` rows; None: all rows at once). Peak
    memory: about k·n·8 bytes (one Zᵢ's magnitudes at a time, for its cut) plus about
    2.1·chunk_bytes, the inputs' A and the basis U in float64; for 50 adapters of rank 16 (k = 800)
    at 4096×11008, 0.31 GB measured (whole column tiles held about 1.5 GB). The result has the same
    bits for every chunk size.
    """
    if method not in KNOTS_METHODS:
        raise ValueError(f"knots: method must be one of {KNOTS_METHODS}, got {method!r}")
    _check_inputs("knots", xs)
    w = _weights("knots", weights, xs)
    batch, device = xs[0].batch_shape, xs[0].device
    if method == "ties":
        if density is None:
            raise ValueError("knots: method='ties' needs a density (the fraction of entries each input keeps)")
        density_t = _per_module("knots", "density", density, batch, device)
        if bool(((density_t < 0) | (density_t > 1) | density_t.isnan()).any()):
            raise ValueError(f"knots: density must be between 0 and 1, got {density}")
    if chunk_columns is not None and chunk_columns < 1:
        raise ValueError(f"knots: chunk_columns must be ≥ 1 or None, got {chunk_columns}")
    if chunk_bytes is not None and chunk_bytes < 1:
        raise ValueError(f"knots: chunk_bytes must be ≥ 1 or None, got {chunk_bytes}")

    U, S, keep, coefficients = _knots_basis(xs)  # U [..., m, k]; coefficients[i] = Uᵀ Bᵢ [..., k, rᵢ]
    dtype = _out_dtype(xs)
    # Module by module, each k×n result written straight into the output dtype (memory: the
    # result's A is k×n per module already). TIES uses each module's own kept rank, so a
    # batch-mate never changes the cut.
    count = batch.numel()
    k, n = U.shape[-1], xs[0].n
    merged = torch.zeros(count, k, n, dtype=dtype, device=device)
    flat_c = [c.reshape(count, k, c.shape[-1]) for c in coefficients]
    flat_a = [x.A.reshape(count, x.rank, n) for x in xs]
    flat_w = torch.stack([wi.reshape(count) for wi in w], dim=-1)  # [count, N]
    ranks = keep.reshape(count, k).sum(-1)  # each module's own kept rank
    floors = RTOL * S.reshape(count, k)[:, :1]  # entries of Z at or below this are rounding noise
    for g in range(count):
        kg = int(ranks[g])
        if kg == 0:
            continue
        module_c = [c[g, :kg] for c in flat_c]
        module_a = [a[g].to(F64) for a in flat_a]
        if method == "linear":
            weighted = torch.cat([c * wi for c, wi in zip(module_c, flat_w[g])], dim=-1)
            merged[g, :kg] = (weighted @ torch.cat(module_a, dim=-2)).to(dtype)
        else:
            _ties_module(module_c, module_a, flat_w[g], float(density_t.reshape(count)[g]), floors[g, 0],
                         chunk_columns, chunk_bytes, merged[g, :kg])
    return LowRank(U.to(dtype), merged.reshape(*batch, k, n))


def _knots_basis(xs: Sequence[LowRank]) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """U of the compact SVD of [X1 … Xn] = [B1 … Bn]·blockdiag(A1 … An), and Uᵀ Bᵢ for each input.

    With [B1 … Bn] = Q_B R_B and Aᵢᵀ = Qᵢ Rᵢ: [X1 … Xn] = Q_B [R_B,ᵢ Rᵢᵀ]ᵢ blockdiag(Qᵢᵀ), and
    blockdiag(Qᵢ) has orthonormal columns, so the small core [R_B,ᵢ Rᵢᵀ]ᵢ has the concatenation's
    singular values and Q_B·u its left vectors — without the Σr × n·N block-diagonal matrix.
    """
    Bs = [x.B.to(F64) for x in xs]
    qb, rb = torch.linalg.qr(torch.cat(Bs, dim=-1))  # [..., m, p], [..., p, R]
    blocks, start = [], 0
    for x, b in zip(xs, Bs):
        r = b.shape[-1]
        ra = torch.linalg.qr(x.A.to(F64).mT, mode="r").R  # [..., pᵢ, rᵢ]
        blocks.append(rb[..., :, start:start + r] @ ra.mT)
        start += r
    U, S, _, keep = svd_from_core(qb, torch.cat(blocks, dim=-1))
    # Uᵀ Bᵢ (= uᵀ R_B,ᵢ): the dropped directions, zero columns of U, give zero rows.
    return U, S, keep, [U.mT @ b for b in Bs]


def _ties_module(coefficients: list[Tensor], As: list[Tensor], w: Tensor, density: float, floor: Tensor,
                 chunk_columns: int | None, chunk_bytes: int | None, out: Tensor) -> None:
    """KnOTS-TIES for one module: Zᵢ = coefficients[i] @ As[i] (k×n), pruned, elected, merged into
    `out` (k×n, any float dtype: each entry is computed in float64 and rounded once).

    Entries |z| ≤ floor (= 1e-10·σ₁, SPEC §7's zero rule applied to Z) are exact zeros: Zᵢ is
    exactly zero where Xᵢ has no component (a zero input; inputs on disjoint subspaces), but
    computed it carries ~1e-16·σ₁ of rounding, and TIES counts every nonzero agreeing entry in
    its denominator — noise would halve real entries.

    TIES is entry-wise once each block's cut is known, so the merge runs over pieces of whole Z
    blocks (`z_block_rows` × `tile_columns`): columns in chunks of `chunk_columns` (whole tiles) and
    rows in as many whole blocks as keep the pieces' stack of all inputs within `chunk_bytes`.

    Memory: a handful of buffers made once per module and reused for every input and chunk — the
    magnitudes of one Zᵢ for its cut, the pieces' stack with one float and one flag buffer of its
    size — rather than fresh tensors per piece: with two worker threads, the ~10⁶ short-lived
    allocations of a 50-input merge fragmented glibc's arenas until the process held 3 GB for
    0.9 GB of live tensors (measured with memray against the peak RSS).
    """
    k, n, device = coefficients[0].shape[0], As[0].shape[-1], As[0].device
    tile, block = tile_columns(k), z_block_rows(k)
    magnitudes = torch.empty(k * n, dtype=F64, device=device)
    thresholds = torch.stack([_prune_threshold(c, a, density, floor, tile, magnitudes)
                              for c, a in zip(coefficients, As)])
    del magnitudes
    columns = n if chunk_columns is None else chunk_columns
    chunk = max(1, -(-columns // tile)) * tile  # whole tiles
    rows = k
    if chunk_bytes is not None:  # whole row blocks, at least one
        rows = block * max(1, chunk_bytes // max(1, len(As) * block * min(chunk, n) * 8))
    size = len(As) * min(rows, k) * min(chunk, n)
    stack, scratch = torch.empty(size, dtype=F64, device=device), torch.empty(size, dtype=F64, device=device)
    flags = torch.empty(size, dtype=torch.bool, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        for top in range(0, k, rows):
            bottom = min(k, top + rows)
            shape = (len(As), bottom - top, stop - start)
            used = shape[0] * shape[1] * shape[2]  # contiguous views: the shapes and strides of fresh tensors
            pruned, other, agree = (t[:used].view(shape) for t in (stack, scratch, flags))
            for piece, c, a in zip(pruned, coefficients, As):
                _z_piece(c, a, top, bottom, start, stop, tile, block, piece)
            torch.abs(pruned, out=other)
            pruned.masked_fill_(torch.le(other, floor, out=agree), 0.0)  # rounding noise: exact zeros
            pruned.masked_fill_(torch.lt(other, thresholds[:, None, None], out=agree), 0.0)  # [N, rows, c]
            elected = torch.where(pruned.sum(0) >= 0, 1.0, -1.0).to(F64)  # a zero sum elects +
            torch.eq(torch.sign(pruned, out=other), elected, out=agree)
            count = agree.sum(0).clamp(min=1).to(F64)
            weighted = pruned.mul_(w[:, None, None]).mul_(agree).sum(0)
            out[top:bottom, start:stop] = weighted / count


def z_block_rows(k: int) -> int:
    """Rows of the GEMM blocks Z is computed in: Z_ROWS from row 0 (all k rows when k ≤ Z_ROWS)."""
    return min(max(k, 1), Z_ROWS)


def _z_piece(coefficient: Tensor, A: Tensor, top: int, bottom: int, start: int, stop: int, tile: int, block: int,
             out: Tensor) -> None:
    """Rows top:bottom (block-aligned) and columns start:stop (tile-aligned) of Z = coefficient @ A
    into `out`, always computed block by block and tile by tile (see TILE_ENTRIES, Z_ROWS). Each
    GEMM writes a fresh tensor that is then copied: MKL's bits change when it writes into a strided or
    unaligned view (see `delta_tiles.aligned_stack`), and these pieces are column slices."""
    for r in range(top, bottom, block):
        end = min(bottom, r + block)
        for s in range(start, stop, tile):
            edge = min(stop, s + tile)
            out[r - top:end - top, s - start:edge - start] = coefficient[r:end] @ A[:, s:edge]


def _prune_threshold(coefficient: Tensor, A: Tensor, density: float, floor: Tensor, tile: int,
                     magnitudes: Tensor) -> Tensor:
    """The |value| an entry of Z = coefficient @ A needs to survive pruning (a 0-dim tensor);
    `magnitudes` is k·n float64 scratch.

    Keep the int(density·N) largest entries of the whole k×n block (N = k·n); entries equal to
    the cut are all kept. density ≥ 1 keeps everything (threshold 0), a count of 0 nothing (inf).
    Entries |z| ≤ floor count as zeros.
    """
    k, n, device = coefficient.shape[0], A.shape[-1], A.device
    size = k * n
    count = int(density * size)
    if density >= 1.0 or size == 0:
        return torch.zeros((), dtype=F64, device=device)
    if count == 0:
        return torch.full((), torch.inf, dtype=F64, device=device)
    # The same blocks as the merge pass (multiples of `tile` from column 0, of z_block_rows from row 0),
    # laid out tile after tile: the cut does not depend on where an entry sits.
    block = z_block_rows(k)
    for s in range(0, n, tile):
        edge = min(n, s + tile)
        _z_piece(coefficient, A, 0, k, s, edge, tile, block, magnitudes[k * s:k * edge].view(k, edge - s))
    magnitudes.abs_()
    magnitudes.masked_fill_(magnitudes <= floor, 0.0)
    index = size - count  # 0-based: the (size - count + 1)-th smallest
    if device.type == "cpu":  # numpy selects in place; torch's kthvalue copies values and indices
        selected = magnitudes.numpy()
        selected.partition(index)
        return torch.tensor(selected[index], dtype=F64)
    return magnitudes.kthvalue(index + 1).values


# --- Task Singular Vectors ---------------------------------------------------------------


def tsv(xs: Sequence[LowRank], weights: Sequence[Weight] | None = None, k: int | Tensor | None = None
        ) -> LowRank:
    """Task Singular Vectors (SPEC §7.9): U⊥ · blockdiag(wᵢΣᵢ) · V⊥ᵀ.

    Per input the top kᵢ = min(k, rank Xᵢ) compact singular triplets UᵢΣᵢVᵢᵀ; U = [U1 … Un] and
    V = [V1 … Vn] are orthogonalised by their compact polar factors (U = P S Qᵀ → U⊥ = P Qᵀ).
    `k` (a number ≥ 1 or one per module) defaults per module to max(1, ⌊r/n⌋), r the smallest
    numerical rank among the inputs. Returns B = U⊥·blockdiag(wᵢΣᵢ) [..., m, K], A = V⊥ᵀ [..., K, n]
    (K = Σ of the batch's largest kᵢ).
    """
    _check_inputs("tsv", xs)
    w = _weights("tsv", weights, xs)
    batch, device = xs[0].batch_shape, xs[0].device
    svds = [compact_svd(x) for x in xs]
    ranks = torch.stack([s.ranks for s in svds])  # [N, ...]
    if k is None:
        per_module = torch.clamp(ranks.min(dim=0).values // len(xs), min=1)
    else:
        per_module = torch.as_tensor(k, device=device)
        if per_module.is_floating_point() or per_module.is_complex() or bool((per_module < 1).any()):
            raise ValueError(f"tsv: k must be a whole number ≥ 1 (or one per module), got {k}")
        per_module = _per_module("tsv", "k", per_module, batch, device).to(torch.int64)
    Us, Vs, Ss = [], [], []
    for svd, wi, rank in zip(svds, w, ranks):
        ki = torch.minimum(per_module, rank)  # [...]
        width = int(ki.max()) if ki.numel() else 0
        top = (torch.arange(width, device=device) < ki[..., None]).to(F64)  # [..., width]
        Us.append(svd.U[..., :width] * top[..., None, :])
        Vs.append(svd.Vh[..., :width, :].mT * top[..., None, :])
        Ss.append(svd.S[..., :width] * top * wi[..., None])
    u_perp = polar(torch.cat(Us, dim=-1))  # [..., m, K]
    v_perp = polar(torch.cat(Vs, dim=-1))  # [..., n, K]
    dtype = _out_dtype(xs)
    return LowRank((u_perp * torch.cat(Ss, dim=-1)[..., None, :]).to(dtype), v_perp.mT.to(dtype))


# --- shared basis ------------------------------------------------------------------------


def align(xs: Sequence[LowRank], side: str = "A") -> list[LowRank]:
    """Express every adapter over ONE shared, orthonormal factor per module; every ΔWᵢ unchanged.

    side="A": from the compact SVD of the stacked [A1; …; An] (Σr × n) = U S V, write Aᵢ = Cᵢ V
    with Cᵢ = Aᵢ Vᵀ, and return B'ᵢ = Bᵢ Cᵢ, A'ᵢ = V (the same tensor for every adapter).
    side="B": symmetric, from [B1 … Bn] (m × Σr) = U S V: B'ᵢ = U, A'ᵢ = Uᵀ Bᵢ Aᵢ.
    Directions with σ ≤ 1e-10·σ₁ of the stack are dropped (their share of each ΔWᵢ is below that).

    When it is meaningful: factor-level recipes (SPEC §7.3: `dir(H.B)`, `shift` of B's, `lora(B, A)`)
    compare or mix factors entry by entry, which only means something when the adapters' factors are
    written in one rank basis — true for adapters whose A share an initialisation, false for
    independently trained ones. After `align(side="A")` they all share A' = V with orthonormal rows,
    so (a) any linear combination of the B'ᵢ with A' is the same combination of the ΔWᵢ, and (b) the
    row norms of B'ᵢ equal the row norms of ΔWᵢ (units by="out" of B' are those of ΔW), so per-row
    operators on B' act on ΔW's rows. side="B" gives the same for columns (by="in") on A'. The price:
    the shared rank k is the rank of the stack (up to Σrᵢ), so each aligned adapter grows to rank k;
    it is worth it when the adapters' A (or B) spaces largely overlap (k ≪ Σrᵢ), and it is not a
    merge by itself — the ΔWᵢ are exactly the inputs'.
    """
    if side not in ("A", "B"):
        raise ValueError(f"align: side must be 'A' or 'B', got {side!r}")
    _check_inputs("align", xs)
    batch, device = xs[0].batch_shape, xs[0].device
    out = []
    if side == "A":
        stacked = torch.cat([x.A.to(F64) for x in xs], dim=-2)  # [..., Σr, n]
        eye = torch.eye(stacked.shape[-2], dtype=F64, device=device).expand(*batch, -1, -1)
        V = compact_svd(LowRank(eye, stacked)).Vh  # [..., k, n], orthonormal rows (zero rows padded)
        for x in xs:
            out.append(LowRank((x.B.to(F64) @ (x.A.to(F64) @ V.mT)).to(x.dtype), V.to(x.dtype)))
        return _share(out, "A")
    stacked = torch.cat([x.B.to(F64) for x in xs], dim=-1)  # [..., m, Σr]
    eye = torch.eye(stacked.shape[-1], dtype=F64, device=device).expand(*batch, -1, -1)
    U = compact_svd(LowRank(stacked, eye)).U  # [..., m, k]
    for x in xs:
        out.append(LowRank(U.to(x.dtype), ((U.mT @ x.B.to(F64)) @ x.A.to(F64)).to(x.dtype)))
    return _share(out, "B")


def _share(out: list[LowRank], side: str) -> list[LowRank]:
    """Make the shared factor the very same tensor in every result of one dtype (not equal copies)."""
    shared: dict[torch.dtype, Tensor] = {}
    result = []
    for y in out:
        if side == "A":
            result.append(LowRank(y.B, shared.setdefault(y.dtype, y.A)))
        else:
            result.append(LowRank(shared.setdefault(y.dtype, y.B), y.A))
    return result
