"""The merge baselines on the factored backend, with PEFT 0.21's numbers (`add_weighted_adapter`).

`merge_kernel` runs one baseline node (declared in ops/baselines.py, whose `MergeMethod` row says
what to do) for a group of same-shape modules; its operand is the list of items:

- *factor* methods (`linear`, `ties`, `dare_*`, `magnitude_prune`) work on the small factors,
  batched over the group: per source `i` with weight `wᵢ` and LoRA scale `sᵢ`, PEFT's weights
  `√|wᵢsᵢ|·sign(wᵢsᵢ)` for `A` and `√|wᵢsᵢ|` for `B`, applied to the *stored* factors. A loaded
  value has its scale folded into `B` (`B̃ = s·B`, io/reader.py), so the stored `B` is `B̃/s`;
  `s` comes from the adapter's header through `ctx.adapter`. A source absent from a module is
  skipped (as PEFT does); the others must have equal ranks there.
- `svd` stays factored: the weighted sum is a factor concatenation and the truncation is
  `lowrank.lowrank` (QR of both factors + SVD of the small core) — never an m×n matrix.
- the other *delta* methods need ΔW entry by entry (`_delta_merge`), one module at a time: the
  sources' ΔWᵢ are produced in row tiles (backend/delta_tiles.py: exact pruning cuts from one pass
  over the tiles), pruned, elected and merged tile by tile into the one m×n matrix the truncation
  needs, which a randomized SVD (backend/randomized.py, seeded per (seed, module), error within
  1.01× the optimum; SPEC §7.11) or, with `exact=true` or below EXACT_BELOW, the full SVD cuts to
  `rank`. The m×n work of the modules in flight is bounded by memory (backend/scratch.py).

DARE masks are schedule-independent: the mask of item `i` of a merge in module `name` (factor
`part` A, B or the whole ΔW) is drawn on the CPU from a generator seeded with a SHA-256 of
`(seed, name, i, part)`, so it is the same whatever the batching, device or compute dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from dipm_lang.backend import lowrank as L
from dipm_lang.backend import scratch
from dipm_lang.backend.delta_tiles import TILE_BYTES, merge_delta
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.backend.randomized import randomized_lowrank
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.node import Node

if TYPE_CHECKING:
    from dipm_lang.backend.context import GroupContext
    from dipm_lang.backend.merge_method import MergeMethod

# ---- PEFT's merge_utils, batched: tensors are stacked [S, ..., a, b] over the S sources ------

def prune_magnitude(t: Tensor, density: float) -> Tensor:
    """Keep the int(density·N) entries of largest |value| of each [a, b] matrix (N = a·b), zero the rest.

    As `merge_utils.magnitude_based_pruning` (density ≥ 1 keeps everything); the cut is a
    threshold at the k-th largest |value|, so exact ties at the cut are all kept (deterministic,
    where `topk` would pick among them arbitrarily).
    """
    if density >= 1.0:
        return t
    n = t.shape[-1] * t.shape[-2]
    k = int(density * n)
    if k == 0:
        return torch.zeros_like(t)
    flat = t.abs().reshape(*t.shape[:-2], n)
    threshold = flat.kthvalue(n - k + 1, dim=-1).values
    return t * (flat >= threshold[..., None]).reshape(t.shape)


def majority_sign_mask(t: Tensor, method: str) -> Tensor:
    """Where each source's entry has the elected sign (stacked on dim 0; a tie elects +)."""
    sign = t.sign()
    strength = t.sum(dim=0) if method == "total" else sign.sum(dim=0)
    majority = torch.where(strength >= 0, 1.0, -1.0).to(t.dtype)
    return sign == majority


def combine(method: MergeMethod, t: Tensor, w: Tensor, density: float | None, sign_method: str | None,
            keep: Tensor | None = None) -> Tensor:
    """One PEFT merge function (`task_arithmetic`, `ties`, `dare_linear`, …) on stacked tensors.

    `t` [S, ..., a, b], `w` [S, ...] (one weight per source and module), `keep` [S, ..., a, b]
    the DARE masks (only for dare methods with density < 1).
    """
    base = method.base
    if base in ("ties", "magnitude_prune"):
        t = prune_magnitude(t, density)  # type: ignore[arg-type]
    elif base in ("dare_linear", "dare_ties") and keep is not None:
        t = t * keep / density
    return merge_pruned(method, t, w, sign_method)


def merge_pruned(method: MergeMethod, t: Tensor, w: Tensor, sign_method: str | None) -> Tensor:
    """The merge after pruning: Σ wᵢ·tᵢ, or for TIES the mean of the weighted entries whose sign agrees
    with the elected one (`t` [S, ..., a, b] pruned, `w` [S, ...])."""
    weighted = t * w[..., None, None]
    if method.base in ("ties", "dare_ties"):
        agree = majority_sign_mask(t, sign_method)  # type: ignore[arg-type]
        return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1).to(t.dtype)
    return weighted.sum(dim=0)


def sqrt_weights(w: float, scales: Tensor) -> tuple[Tensor, Tensor]:
    """PEFT's split of `w·s` over the factors: (`sign(ws)·√|ws|` for A, `√|ws|` for B)."""
    ws = w * scales
    root = ws.abs().sqrt()
    return torch.where(ws >= 0, root, -root), root


# ---- DARE masks ---------------------------------------------------------------------------

def dare_seed(seed: int, name: str, index: int, part: str) -> int:
    digest = hashlib.sha256(f"dipm-dare\0{seed}\0{name}\0{index}\0{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_keep(seed: int, name: str, index: int, part: str, shape: Sequence[int], density: float) -> Tensor:
    """The Bernoulli(density) keep-mask of one item's tensor in one module (CPU, bool)."""
    generator = torch.Generator(device="cpu").manual_seed(dare_seed(seed, name, index, part))
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32) < density


def dare_rows(seed: int, name: str, index: int, part: str, n: int) -> Callable[[int], Tensor]:
    """The draws behind `dare_keep`'s mask of an m×n tensor, a block of rows at a time: `next_rows(rows)`
    gives the next `rows`×n uniform floats (keep where < density). The same bits as `dare_keep(…, (m, n),
    density)` cut into rows: torch draws uniform floats on the CPU one after another in row-major order
    (tests/test_svd_baselines.py checks it)."""
    generator = torch.Generator(device="cpu").manual_seed(dare_seed(seed, name, index, part))
    return lambda rows: torch.rand((rows, n), generator=generator, dtype=torch.float32)


def needs_masks(method: MergeMethod, density: float | None) -> bool:
    return method.random and density is not None and density < 1.0


# ---- ranks and scales from the inputs -----------------------------------------------------

def source_rank(info: Any) -> int:
    """An adapter's rank as PEFT's merge counts it: max(r, *rank_pattern values) (and of its modules)."""
    config = getattr(info, "config", None) or {}
    ranks = [m.rank for m in info.modules.values()]
    if isinstance(config.get("r"), int):
        ranks.append(config["r"])
    pattern = config.get("rank_pattern") or {}
    ranks += [v for v in pattern.values() if isinstance(v, int)]
    return max(ranks, default=0)


def _adapter(ctx: GroupContext, load: Node, fn: str) -> Any:
    if load.op != "load" or ctx.adapter is None:
        raise ExecutionError(f"{fn}: this item is not an adapter read from a folder (load(...))")
    return ctx.adapter(load)


def items(node: Node) -> tuple[Node, ...]:
    """A baseline node's items: the operands of its `xs` list."""
    return node.args[0].args


def merge_rank(node: Node, ctx: GroupContext) -> int:
    """The `rank` attribute, or PEFT's default: the largest rank among the source adapters."""
    rank = node.attr("rank")
    if rank is not None:
        return rank
    return max(source_rank(_adapter(ctx, arg, node.op)) for arg in items(node))


def module_scales(ctx: GroupContext, load: Node, fn: str) -> list[float]:
    """The LoRA scale s of each module of the group in the adapter `load` reads (0 where absent)."""
    info = _adapter(ctx, load, fn)
    return [info.modules[name].scale if name in info.modules else 0.0 for name in ctx.names]


def unscale_b(b: Tensor, scales: Tensor) -> Tensor:
    """The stored B from a loaded one (B̃ = s·B); a zero-scale module has B̃ = 0 and gives 0."""
    inv = torch.where(scales != 0, 1.0 / torch.where(scales != 0, scales, 1.0), 0.0)
    return b * inv.to(b.dtype).reshape(*inv.shape, 1, 1)


def rank_error(fn: str, ranks: dict[int, int]) -> str | None:
    """The message for sources of unequal ranks in one module (item position -> rank), or None."""
    if len(set(ranks.values())) <= 1:
        return None
    listed = ", ".join(f"item {i + 1}: rank {r}" for i, r in ranks.items())
    return (f"{fn}: the adapters' LoRA ranks differ ({listed}); {fn} combines the factors A and B entry by "
            "entry (as PEFT does) and needs equal ranks — use svd(…), cat(…) or the *_svd variant instead")


def check_ranks(fn: str, ranks: dict[int, int]) -> None:
    message = rank_error(fn, ranks)
    if message:
        raise ExecutionError(message)  # the executor adds the node's position and the module


# ---- the factored kernel -----------------------------------------------------------------

def merge_kernel(method: MergeMethod, ctx: GroupContext, node: Node, args: list) -> LowRank:
    numbers = [*node.attr("weights"), *([node.attr("density")] if node.attr("density") is not None else [])]
    if len(ctx.names) > 1 and any(len(set(ctx.numbers(v))) > 1 for v in numbers):
        # a weight or the density is a schedule that differs across this batch: module by module
        parts = [merge_kernel(method, dataclasses.replace(ctx, names=[name]), node, [x[i:i + 1] for x in args])
                 for i, name in enumerate(ctx.names)]
        return LowRank(torch.cat([p.B for p in parts]), torch.cat([p.A for p in parts]))
    weights = [ctx.numbers(w)[0] for w in node.attr("weights")]
    if method.space == "factors":
        return _factor_merge(method, node, args, weights, ctx)
    rank = merge_rank(node, ctx)
    if method.base == "task_arithmetic":
        return L.lowrank(L.linear_combination(args, weights), rank)[0]
    return _delta_merge(method, node, args, weights, rank, ctx)


def _density(node: Node, ctx: GroupContext) -> float | None:
    """The merge's density for this batch (its modules agree; see merge_kernel)."""
    density = node.attr("density")
    return None if density is None else ctx.numbers(density)[0]


def _factor_merge(method: MergeMethod, node: Node, args: list[LowRank], weights: list[float],
                  ctx: GroupContext) -> LowRank:
    first = args[0]
    present = [i for i, x in enumerate(args) if x.rank > 0]
    if not present:  # no source has this module: no update
        return LowRank.zeros(first.m, first.n, first.batch_shape, first.dtype, first.device)
    check_ranks(method.name, {i: args[i].rank for i in present})
    a_parts, b_parts, wa, wb = [], [], [], []
    for i in present:
        scales = torch.tensor(module_scales(ctx, items(node)[i], method.name), dtype=torch.float64)
        w_a, w_b = sqrt_weights(weights[i], scales)
        a_parts.append(args[i].A)
        b_parts.append(unscale_b(args[i].B, scales.to(args[i].device)))
        wa.append(w_a)
        wb.append(w_b)
    density, sign = _density(node, ctx), node.attr("majority_sign_method")
    out = []
    for part, tensors, w in (("A", a_parts, wa), ("B", b_parts, wb)):
        t = torch.stack(tensors)  # [S, G, a, b]
        keep = None
        if needs_masks(method, density):
            shape = t.shape[-2:]
            keep = torch.stack([torch.stack([dare_keep(node.attr("seed"), name, i, part, shape, density)
                                             for name in ctx.names]) for i in present]).to(t.device)
        out.append(combine(method, t, torch.stack(w).to(t.dtype).to(t.device), density, sign, keep))
    return LowRank(out[1].contiguous(), out[0].contiguous())


EXACT_BELOW = 128
"""Below this many rows or columns the `*_svd` baselines take the full SVD: it costs under 2 ms
there and is the optimum (a randomized sketch pays off from about 100; benchmarks/randomized_svd.py)."""


def svd_seed(seed: int, name: str) -> int:
    """The randomized SVD's seed for one module: from the merge's `seed` (0 where it has none) and
    the module's name only, so a module's result is independent of batching and of other modules."""
    digest = hashlib.sha256(f"dipm-svd\0{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def scratch_bytes(m: int, n: int, itemsize: int, exact: bool) -> int:
    """What one module's ΔW-space merge holds at its peak: the merged m×n matrix (the full SVD's
    factors and workspace about three more), the tiles' stack and temporaries, the pruning cut's
    candidates (a few percent of one matrix)."""
    return m * n * itemsize * (4 if exact else 1) + 4 * TILE_BYTES + m * n * itemsize // 10


def _delta_merge(method: MergeMethod, node: Node, args: list[LowRank], weights: list[float], rank: int,
                 ctx: GroupContext) -> LowRank:
    """ΔW-space methods, one module at a time: merge the sources' updates into one m×n matrix tile by
    tile, truncate it to `rank`, free it before the next module of the batch."""
    density, sign = _density(node, ctx), node.attr("majority_sign_method")
    seed = node.attr("seed") or 0
    first = args[0]
    batch = list(first.batch_shape)
    count = math.prod(batch)
    # float16/bfloat16 runs merge and truncate in float32 (no half-precision SVD or QR on the CPU)
    work = first.dtype if first.dtype.itemsize >= 4 else torch.float32
    flat = [LowRank(x.B.reshape(count, x.m, x.rank).to(work), x.A.reshape(count, x.rank, x.n).to(work))
            for x in args]
    m, n = first.m, first.n
    exact = bool(node.attr("exact")) or min(m, n) < EXACT_BELOW
    results = []
    for g in range(count):
        name = ctx.names[g]
        masks = ([dare_rows(seed, name, i, "delta", n) for i in range(len(args))]
                 if needs_masks(method, density) else None)
        with scratch.budget().hold(scratch_bytes(m, n, work.itemsize, exact)):
            merged = merge_delta(method, [x[g] for x in flat], weights, density, sign, masks)
            approx, _ = randomized_lowrank(merged, rank, seed=svd_seed(seed, name), exact=exact, residual=False)
            del merged
        results.append(approx.to(first.dtype))
    return LowRank(torch.stack([r.B for r in results]).reshape(*batch, m, -1),
                   torch.stack([r.A for r in results]).reshape(*batch, -1, n))
