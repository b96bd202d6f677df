"""The merge baselines (SPEC §3 "Baselines"): every combination type of PEFT 0.21's
`add_weighted_adapter`, one table row each, declared as a family (mergekit's idea: one class
parameterised into many methods).

- *factor* methods (`linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`) combine the
  stored LoRA factors `A` and `B` of adapters entry by entry, separately, with PEFT's √-weights:
  `A' = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ`, `B' = Σ √|wᵢsᵢ|·Bᵢ` (sᵢ the source's LoRA scale), so
  `linear([x, y], [1, 1])` is *not* `x + y`; their items must be adapters of equal rank per module;
- *delta* methods (`svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`)
  combine the updates `Σ wᵢ·ΔWᵢ` (pruned / elected as the method says), then keep the best
  rank-`rank` approximation (default: the largest source rank, as PEFT);
- `cat` is `Σ wᵢ·xᵢ` exactly, written as arithmetic (fused into one factor concatenation).
"""

from __future__ import annotations

from dipm_lang.backend.merge_method import MergeMethod
from dipm_lang.ir.node import Node
from dipm_lang.ir.operator import Builder, Operator
from dipm_lang.ir.signature import (REQUIRED, Choice, Flag, Int, Numbers, Param, Real, Typing, UpdateList,
                                    require_adapters)
from dipm_lang.ir.types import DELTA
from dipm_lang.ops.backend import merges, merges_dense

SIGN_METHODS = ("total", "frequency")


_SQRT = ("PEFT's square-root weights: A' = Σ sign(wᵢsᵢ)√|wᵢsᵢ|·Aᵢ, B' = Σ √|wᵢsᵢ|·Bᵢ "
         "(sᵢ = the source's LoRA scale); items must be adapters of equal rank per module")
_SVD = "then the best rank-`rank` approximation (default: the largest source rank, as PEFT)"
_RANDOMIZED = (" The m×n merge is built in row tiles and truncated by a randomized SVD whose error is within "
               "1.01× the optimal one (seeded per module); exact=true takes PEFT's full SVD.")
_DARE = ("DARE: keep each entry with probability density and divide by density; the mask depends only "
         "on (seed, module, item position)")
_TIES = ("TIES: keep the top density fraction by |value|, elect a sign per entry from the unweighted "
         "pruned tensors (majority_sign_method \"total\": sign of the sum, \"frequency\": of the count), "
         "average the weighted entries that agree")

METHODS: dict[str, MergeMethod] = {m.name: m for m in [
    MergeMethod("linear", "linear", "factors",
                doc=f"PEFT's linear merge on the factors, {_SQRT}. Not a sum of updates (it has cross terms); "
                    "use cat or x + y for that."),
    MergeMethod("ties", "ties", "factors", density=True, sign=True, doc=f"{_TIES}, on A and B separately with {_SQRT}."),
    MergeMethod("dare_linear", "dare_linear", "factors", density=True, seed=True,
                doc=f"{_DARE}; then the weighted sum, on A and B separately with {_SQRT}."),
    MergeMethod("dare_ties", "dare_ties", "factors", density=True, sign=True, seed=True,
                doc=f"{_DARE}; then TIES sign election and disjoint mean, on A and B separately with {_SQRT}."),
    MergeMethod("magnitude_prune", "magnitude_prune", "factors", density=True,
                doc=f"Keep the top density fraction of each factor by |value|, then the weighted sum, with {_SQRT}."),
    MergeMethod("svd", "task_arithmetic", "delta",
                doc=f"Σ wᵢ·ΔWᵢ, {_SVD}. Computed on the factors (QR + small SVD), never as an m×n matrix."),
    MergeMethod("ties_svd", "ties", "delta", density=True, sign=True, doc=f"{_TIES}, on the updates wᵢ·ΔWᵢ; {_SVD}."),
    MergeMethod("dare_linear_svd", "dare_linear", "delta", density=True, seed=True,
                doc=f"{_DARE}; Σ wᵢ·prune(ΔWᵢ), {_SVD}."),
    MergeMethod("dare_ties_svd", "dare_ties", "delta", density=True, sign=True, seed=True,
                doc=f"{_DARE}; TIES election on the updates, {_SVD}."),
    MergeMethod("magnitude_prune_svd", "magnitude_prune", "delta", density=True,
                doc=f"Σ wᵢ·(top density fraction of ΔWᵢ by |value|), {_SVD}."),
]}

XS = Param("xs", UpdateList(weights=True))  # cat: Σ wᵢ·xᵢ, of updates or weights (SPEC §7.8)
WEIGHTS = Param("weights", Numbers(of="xs"), None)


def _params(method: MergeMethod) -> tuple[Param, ...]:
    why = (f"{method.name} combines the stored LoRA factors A and B entry by entry (as PEFT does)"
           if method.space == "factors" else None)
    params = [Param("xs", UpdateList(adapters=why)), WEIGHTS]
    if method.density:
        params.append(Param("density", Real(0.0, 1.0, open_low=method.random,
                                            why=" (DARE rescales by 1/density)" if method.random else "",
                                            schedules=True), REQUIRED))
    if method.sign:
        params.append(Param("majority_sign_method", Choice(SIGN_METHODS, {"sum": "total", "magnitude": "total",
                                                                          "count": "frequency"}), "total"))
    if method.rank:
        params.append(Param("rank", Int(minimum=1, optional=True), None))
    if method.seed:
        params.append(Param("seed", Int(minimum=0), 0))
    if method.dense:
        params.append(Param("exact", Flag(), False))
    return tuple(params)


def _default_rank_needs_adapters(t: Typing) -> None:
    if t.value("rank") is None:
        require_adapters(t, "xs", "the default rank is the largest LoRA rank of the source adapters (as PEFT's), "
                                  "so give rank=N for computed updates",
                         hint="give load(...) results (or names bound to them)"
                              + ("; or give rank=N" if t.op.name == "svd" else "; svd(...) and cat(...) take any update"))


def _declare(method: MergeMethod) -> Operator:
    return Operator(method.name, _params(method), DELTA, method.doc + (_RANDOMIZED if method.dense else ""),
                    factored=lambda ctx, node, xs: merges.merge_kernel(method, ctx, node, xs),
                    dense=lambda ctx, node, xs: merges_dense.merge_dense_kernel(method, ctx, node, xs),
                    check=_default_rank_needs_adapters if method.rank else None)


def _cat(b: Builder) -> Node:
    """Σ wᵢ·xᵢ as arithmetic nodes (fused into one factor concatenation)."""
    total = None
    for item, w in zip(b.typing.items("xs"), b.typing.value("weights")):
        term = item if w == 1.0 else b.emit("mul", b.const(w), item)
        total = term if total is None else b.emit("add", total, term)
    if total is not None and total.type != DELTA:  # one unweighted Dir item: the result is an update
        total = b.emit("mul", b.const(1.0), total)
    return total  # type: ignore[return-value]


OPERATORS = [
    *(_declare(method) for method in METHODS.values()),
    Operator("cat", (XS, WEIGHTS), DELTA, "Σ wᵢ·xᵢ exactly (PEFT's cat: the factors concatenated, ranks add).",
             expand=_cat),
]
