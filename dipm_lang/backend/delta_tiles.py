"""The ΔW-space merges of the `*_svd` baselines, in row tiles: never more than one m×n matrix.

`ties_svd`, `dare_linear_svd`, `dare_ties_svd` and `magnitude_prune_svd` need each source's update
ΔWᵢ = BᵢAᵢ entry by entry. Stacking the S updates ([S, m, n]) and the copies that pruning and sign
election make of the stack is what made them hold 2 GB per 7B-shaped module for two sources, and
would hold 45 GB for fifty. Here every ΔWᵢ is produced tile by tile — rows `start:stop` are
`Bᵢ[start:stop] @ Aᵢ`, whole rows so that a tile is a contiguous block of ΔW and of DARE's row-major
mask stream — and the only m×n matrix is the merged one (`merge_delta`), which the truncation needs.

Bits. A tile's entries come from one GEMM whose shape depends only on (m, n, number of sources,
dtype) (`tile_rows`), and the same tiles serve the pruning cut and the merge, so the entry compared
with the cut is bit for bit the entry then kept or dropped. The merge is PEFT's (`merge_utils`) with
the same roundings as `baselines.combine`; only its masks are spelled in floating point — `ge`
into a 1.0/0.0 tensor, a ±1 elected sign — because torch's CPU kernels that produce bool tensors
(comparisons, `masked_fill`, `where`) run 5–15× slower than its float kernels on this work.

The cut (`magnitude_threshold`; PEFT's `magnitude_based_pruning`: keep the int(density·N) entries
of largest |value|, entries equal to the cut all kept, as `baselines.prune_magnitude`) is found
exactly in one pass over the tiles without sorting N entries: `SAMPLE` entries of ΔW at random
places (independent draws, so the bracket's width follows the binomial law) bracket the cut; the pass counts the entries above the bracket and keeps those inside
it (a few percent of N), among which `kthvalue` finds the cut. If the sample misjudged the bracket
(the counts put the cut outside it), a second pass takes all magnitudes — exact either way, only
slower. Zeros are counted, never kept: the cut is 0 when fewer than int(density·N) entries are
nonzero. On the CPU the pass uses NumPy's comparisons and selection (4× faster than torch's bool
kernels here); elsewhere torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.backend.merge_method import MergeMethod

__all__ = ["TILE_BYTES", "SAMPLE", "tile_rows", "row_tiles", "delta_tile", "aligned_stack", "magnitude_threshold",
           "merge_delta"]

TILE_BYTES = 4 * 2**20
"""Bytes of a merge's two tile stacks ([S, rows, n] each): small enough to stay in the CPU's caches
between the merge's passes (rows 16–128 of 4096 columns ran alike; 512 rows 2× slower)."""

SAMPLE = 1 << 17
"""Entries of ΔW, at random places, that bracket the pruning cut. The bracket spans 6 binomial
standard deviations (≤ 0.8 % of the entries) and MARGIN more on each side, so about 2 % of the
entries are kept for the exact cut. (A grid of rows × columns is cheaper but misjudges: rows and
columns of a low-rank ΔW differ in scale, and a 256×256 grid's quantiles were off by up to 7 %.)"""

GROUP_ENTRIES = 1 << 20
"""Entries of |ΔW| the pruning cut's pass counts at once (whole tiles, at least one)."""

MARGIN = 0.002
"""Extra fraction of the sample on each side of the bracket (ties, rounding)."""

Masks = Sequence[Callable[[int], Tensor]]
"""DARE: per source, `next_rows(rows)` gives the uniform draws of its next `rows`×n mask rows."""


def tile_rows(m: int, n: int, sources: int, itemsize: int) -> int:
    """Rows per tile: two stacks of `sources` tiles of rows×n fit in TILE_BYTES (at least one row)."""
    return max(1, min(m, TILE_BYTES // max(1, 2 * sources * n * itemsize)))


def row_tiles(m: int, rows: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of every tile, in order."""
    for start in range(0, m, rows):
        yield start, min(m, start + rows)


def delta_tile(x: LowRank, start: int, stop: int, out: Tensor | None = None) -> Tensor:
    """Rows start:stop of one module's ΔW = B·A (x unbatched: B [m, r], A [r, n]), into `out` if given."""
    if x.rank == 0:
        return x.B.new_zeros(stop - start, x.n) if out is None else out.zero_()
    return torch.matmul(x.B[start:stop], x.A, out=out)


ALIGN_BYTES = 64
"""Where a fresh CPU tensor starts (torch aligns its allocations to 64 bytes)."""


def aligned_stack(count: int, rows: int, n: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """An empty [count, rows, n] stack whose every [rows, n] slot starts on an ALIGN_BYTES boundary,
    as a fresh tile does: MKL's GEMM writing to an address that is not so aligned gave other last
    bits in 8 % of random tile shapes (torch 2.13), and the pruning cut is taken on fresh tiles —
    an entry at the cut must be bit for bit the one the merge keeps or drops."""
    per = max(1, ALIGN_BYTES // dtype.itemsize)
    slot = -(-rows * n // per) * per
    return torch.empty(count * slot, dtype=dtype, device=device).as_strided((count, rows, n), (slot, n, 1))


# ---- the pruning cut ------------------------------------------------------------------------


def magnitude_threshold(x: LowRank, density: float, rows: int) -> Tensor:
    """The |value| an entry of ΔW = B·A needs to survive magnitude pruning (0-dim, x's dtype and device).

    Keeps the int(density·m·n) largest-|·| entries; density ≥ 1 keeps all (cut 0), a count of 0 none
    (cut inf). The entries are `delta_tile`'s with `rows` rows per tile.
    """
    m, n = x.m, x.n
    size = m * n
    count = int(density * size)
    if density >= 1.0 or size == 0:
        return x.B.new_zeros(())
    if count == 0:
        return x.B.new_full((), math.inf)
    if x.rank == 0:  # an absent source is all zeros: fewer nonzero entries than kept ones, cut 0
        return x.B.new_zeros(())
    lo, hi = _bracket(x, count / size)
    above = zeros = 0
    pieces = []
    for magnitudes in _magnitude_groups(x, rows):
        group_above, group_zeros, inside = _split(magnitudes, lo, hi)
        above, zeros = above + group_above, zeros + group_zeros
        pieces.append(inside)
    if size - zeros < count:  # fewer nonzero entries than kept ones: the cut is zero
        return x.B.new_zeros(())
    inside = torch.cat(pieces)
    del pieces
    wanted = count - above  # the cut's place among the entries inside the bracket, from the top
    if 0 < wanted <= inside.numel():
        return inside.kthvalue(inside.numel() - wanted + 1).values
    del inside
    everything, at = x.B.new_empty(size), 0
    for magnitudes in _magnitude_groups(x, rows):
        everything[at:at + magnitudes.numel()] = magnitudes.reshape(-1)
        at += magnitudes.numel()
    return everything.kthvalue(size - count + 1).values


def _magnitude_groups(x: LowRank, rows: int) -> Iterator[Tensor]:
    """|ΔW| in groups of whole tiles of about GROUP_ENTRIES entries, each tile `delta_tile`'s own GEMM
    (so bit for bit the merge's entries), copied into one buffer that every group reuses — a group is
    valid until the next is asked for. With many sources a tile is 1–2 rows, and counting the cut
    tile by tile spent as much in per-call overhead as in arithmetic: 50 cuts of 4096×11008 took
    10.6 s that way, 7.6 s in groups."""
    per_group = rows * max(1, GROUP_ENTRIES // max(1, rows * x.n))
    buffer = x.B.new_empty(min(x.m, per_group), x.n)
    for first in range(0, x.m, per_group):
        last = min(x.m, first + per_group)
        for start, stop in row_tiles(last - first, rows):
            buffer[start:stop] = delta_tile(x, first + start, first + stop)
        yield buffer[:last - first].abs_()


def _bracket(x: LowRank, fraction: float) -> tuple[float, float]:
    """(lo, hi) with the cut — the entry `fraction` of the way down the sorted |entries| — likely inside."""
    m, n = x.m, x.n
    generator = torch.Generator(device="cpu").manual_seed(0)  # where to look changes the speed, not the cut
    pick_rows = torch.randint(m, (SAMPLE,), generator=generator).to(x.device)
    pick_cols = torch.randint(n, (SAMPLE,), generator=generator).to(x.device)
    sample = (x.B[pick_rows] * x.A[:, pick_cols].mT).sum(-1).abs().sort(descending=True).values
    s = sample.numel()
    position = fraction * s
    spread = 6.0 * math.sqrt(s * fraction * (1.0 - fraction)) + MARGIN * s + 2.0
    top, bottom = math.floor(position - spread), math.ceil(position + spread)
    hi = float(sample[top]) if top >= 0 else math.inf
    lo = float(sample[bottom]) if bottom < s else 0.0
    return lo, hi


def _split(tile: Tensor, lo: float, hi: float) -> tuple[int, int, Tensor]:
    """For a tile of magnitudes: (#entries > hi, #zeros, the nonzero entries in [lo, hi])."""
    if tile.device.type == "cpu" and tile.dtype in (torch.float32, torch.float64):
        a = tile.numpy()
        inside = a[(a >= lo) & (a <= hi) & (a > 0)] if lo == 0 else a[(a >= lo) & (a <= hi)]
        zeros = int(np.count_nonzero(a == 0)) if lo == 0 else 0  # lo > 0: a zero is below the bracket anyway
        return int(np.count_nonzero(a > hi)), zeros, torch.from_numpy(inside)
    keep = (tile >= lo) & (tile <= hi)
    if lo == 0:
        keep &= tile > 0
    zeros = int((tile == 0).sum()) if lo == 0 else 0
    return int((tile > hi).sum()), zeros, tile[keep]


# ---- the merge ------------------------------------------------------------------------------


def merge_delta(method: MergeMethod, xs: Sequence[LowRank], weights: Sequence[float], density: float | None,
                sign_method: str | None, masks: Masks | None = None) -> Tensor:
    """The merged m×n matrix of one module: PEFT's `method.base` on the updates of `xs` (unbatched
    LowRanks of one shape), tile by tile.

    `ties`/`magnitude_prune` prune each source at its whole-matrix cut; `dare_*` multiply by the
    source's keep-mask (uniform draw < density, `masks`) and divide by density; `ties`/`dare_ties`
    then keep, per entry, the weighted values whose sign agrees with the elected one (the sign of the
    sum of the pruned values, or of their signs' sum for "frequency"; a zero sum elects +) and
    divide by their number (at least 1); the others sum the weighted values.
    """
    m, n = xs[0].m, xs[0].n
    dtype, device = xs[0].dtype, xs[0].device
    count = len(xs)
    rows = tile_rows(m, n, count, dtype.itemsize)
    cuts = None
    if method.base in ("ties", "magnitude_prune") and density is not None and density < 1.0:
        cuts = torch.stack([magnitude_threshold(x, density, rows) for x in xs]).reshape(count, 1, 1)
    w = torch.tensor(list(weights), dtype=dtype, device=device).reshape(count, 1, 1)
    ties = method.base in ("ties", "dare_ties")
    out = torch.empty(m, n, dtype=dtype, device=device)
    stack = aligned_stack(count, rows, n, dtype, device)
    scratch = torch.empty(count, rows, n, dtype=dtype, device=device)
    sign = torch.empty(rows, n, dtype=dtype, device=device)
    for start, stop in row_tiles(m, rows):
        k = stop - start
        t, f = stack[:, :k], scratch[:, :k]
        for i, x in enumerate(xs):
            delta_tile(x, start, stop, out=t[i])
        if cuts is not None:  # keep |t| ≥ cut: t·(1.0 or 0.0)
            torch.abs(t, out=f)
            t.mul_(f.ge_(cuts))
        elif masks is not None:  # DARE: t·keep / density, keep = (draw < density)
            for i, next_rows in enumerate(masks):
                torch.lt(next_rows(k).to(device), density, out=f[i])
            t.mul_(f).div_(density)
        if ties:
            _elect_and_merge(t, f, sign[:k], w, sign_method, out[start:stop])
        else:
            torch.sum(t.mul_(w), dim=0, out=out[start:stop])
    return out


def _elect_and_merge(t: Tensor, f: Tensor, sign: Tensor, w: Tensor, sign_method: str | None, out: Tensor) -> None:
    """TIES on a stack of pruned tiles t [S, k, n] (f: scratch of t's shape, sign: [k, n]).

    With the elected sign e = ±1, an entry agrees when tᵢ·e > 0, and then wᵢ·tᵢ = e·(wᵢ·relu(tᵢ·e))
    exactly, so the merge is e·Σ wᵢ·relu(tᵢ·e) / max(Σ [tᵢ·e > 0], 1) — `baselines.merge_pruned`'s
    numbers, with float masks.
    """
    if sign_method == "frequency":
        torch.sum(torch.sign(t, out=f), dim=0, out=sign)
    else:
        torch.sum(t, dim=0, out=sign)
    sign.ge_(0).mul_(2).sub_(1)  # +1 where the sum is ≥ 0 (a tie elects +), else −1
    t.mul_(sign)
    agree = torch.sum(torch.gt(t, 0, out=f), dim=0)
    total = torch.sum(t.clamp_(min=0).mul_(w), dim=0)
    torch.div(total.mul_(sign), agree.clamp_(min=1), out=out)
