"""The merge baselines as built-in functions (SPEC §3 "Baselines"; PEFT's `add_weighted_adapter`).

Each function checks its operands and constant parameters and emits one `merge` node
(ir/merge.py); `cat` is plain arithmetic. Importing this module registers the functions in
`BUILTINS` (builtins.py imports it at its end, so either import order works).

Weights follow PEFT 0.21 exactly, method by method:
- `cat` and the `*_svd` methods weight the updates: `Σ wᵢ·ΔWᵢ` (then prune/elect/truncate);
- the factor methods split `wᵢ·sᵢ` (weight times the source's LoRA scale) as square roots over
  the two factors: `A' = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ`, `B' = Σ √|wᵢsᵢ|·Bᵢ` (before pruning for
  ties/dare/magnitude_prune), so `linear([x, y], [1, 1])` is *not* `x + y`: it has cross terms.
"""

from __future__ import annotations

from dipm_lang.frontend.builtins import (BUILTINS, REQUIRED, Builtin, Call, Param, _type_error, check_number,
                                         check_string)
from dipm_lang.frontend.suggest import did_you_mean
from dipm_lang.ir.merge import METHODS, SIGN_METHODS, MergeMethod
from dipm_lang.ir.node import Node
from dipm_lang.ir.types import DELTA, NUM


def _items(call: Call) -> list[Node]:
    node = call.node("xs")
    if node.type.kind != "List" or node.op != "list":
        raise _type_error(call, "xs", f"'xs' must be a list [..] of adapters or updates, got {node.type}",
                          hint=f"{call.name}([x, y], [1, 1], …)")
    if not node.args:
        raise _type_error(call, "xs", "'xs' must not be empty")
    for i, item in enumerate(node.args, 1):
        if not item.type.is_update:
            raise _type_error(call, "xs", f"item {i} of 'xs' must be a Delta, got {item.type}")
    return list(node.args)


def _static_weights(call: Call, count: int) -> tuple[float, ...]:
    value = call.static("weights")
    if value is None or value == []:
        return (1.0,) * count
    if not isinstance(value, list) or not all(isinstance(v, float) for v in value):
        raise _type_error(call, "weights", f"'weights' must be a list of numbers, got {value!r}")
    if len(value) != count:
        raise _type_error(call, "weights", f"{count} items but {len(value)} weights")
    return tuple(float(v) for v in value)


def _density(call: Call, method: MergeMethod) -> float:
    density = check_number(call, "density")
    low_ok = density > 0.0 if method.random else density >= 0.0
    if not (low_ok and density <= 1.0):
        interval = "(0, 1] (DARE rescales by 1/density)" if method.random else "[0, 1]"
        raise _type_error(call, "density", f"density must be in {interval}, got {density:g}")
    return density


def _sign_method(call: Call) -> str:
    value = check_string(call, "majority_sign_method")
    if value not in SIGN_METHODS:
        guess = did_you_mean(value, SIGN_METHODS, {"sum": "total", "magnitude": "total", "count": "frequency"})
        raise _type_error(call, "majority_sign_method",
                          f"majority_sign_method must be \"total\" or \"frequency\", not {value!r}",
                          hint=f"did you mean \"{guess}\"?" if guess else None)
    return value


def _require_adapters(call: Call, items: list[Node], why: str) -> None:
    for i, item in enumerate(items, 1):
        if item.op != "load":
            raise _type_error(call, "xs", f"item {i} of 'xs' is a computed {item.type}, not an adapter: {why}",
                              hint="give load(...) results (or names bound to them)"
                              + ("; svd(...) and cat(...) take any update" if call.name != "svd" else
                                 "; or give rank=N"))


def _build(method: MergeMethod):
    def build(call: Call) -> Node:
        items = _items(call)
        weights = _static_weights(call, len(items))
        if method.space == "factors":
            _require_adapters(call, items, f"{call.name} combines the stored LoRA factors A and B entry by entry "
                                           "(as PEFT does)")
        attrs = {"method": method.name, "weights": weights, "density": None, "majority_sign_method": None,
                 "seed": None, "rank": None}
        if method.density:
            attrs["density"] = _density(call, method)
        if method.sign:
            attrs["majority_sign_method"] = _sign_method(call)
        if method.seed:
            attrs["seed"] = check_number(call, "seed", integer=True, minimum=0)
        if method.rank:
            if call.static("rank") is not None:
                attrs["rank"] = check_number(call, "rank", integer=True, minimum=1)
            else:
                _require_adapters(call, items, "the default rank is the largest LoRA rank of the source adapters "
                                               "(as PEFT's), so give rank=N for computed updates")
        return call.make("merge", items, attrs, DELTA)

    return build


def _cat(call: Call) -> Node:
    """Σ wᵢ·xᵢ as arithmetic nodes (fused into one factor concatenation)."""
    items = _items(call)
    weights = _static_weights(call, len(items))
    total = None
    for item, w in zip(items, weights):
        term = item if w == 1.0 else call.make("mul", (call.make("const", (), {"value": w}, NUM), item), {}, DELTA)
        total = term if total is None else call.make("add", (total, term), {}, DELTA)
    if total is not None and total.type != DELTA:  # one unweighted Dir item: the result is an update
        total = call.make("mul", (call.make("const", (), {"value": 1.0}, NUM), total), {}, DELTA)
    return total  # type: ignore[return-value]


XS, WEIGHTS = Param("xs"), Param("weights", None, static=True)
DENSITY = Param("density", REQUIRED, static=True)
SIGN = Param("majority_sign_method", "total", static=True)
RANK = Param("rank", None, static=True)
SEED = Param("seed", 0, static=True)

_SQRT = ("PEFT's square-root weights: A' = Σ sign(wᵢsᵢ)√|wᵢsᵢ|·Aᵢ, B' = Σ √|wᵢsᵢ|·Bᵢ "
         "(sᵢ = the source's LoRA scale); items must be adapters of equal rank per module")
_SVD = "then the best rank-`rank` approximation (default: the largest source rank, as PEFT)"
_DARE = ("DARE: keep each entry with probability density and divide by density; the mask depends only "
         "on (seed, module, item position)")
_TIES = ("TIES: keep the top density fraction by |value|, elect a sign per entry from the unweighted "
         "pruned tensors (majority_sign_method \"total\": sign of the sum, \"frequency\": of the count), "
         "average the weighted entries that agree")

_DOCS: dict[str, tuple[str, str]] = {
    "linear": ("linear(xs: List[Delta], weights) -> Delta", f"PEFT's linear merge on the factors, {_SQRT}. "
               "Not a sum of updates (it has cross terms); use cat or x + y for that."),
    "ties": ("ties(xs, weights, density, majority_sign_method=\"total\") -> Delta",
             f"{_TIES}, on A and B separately with {_SQRT}."),
    "dare_linear": ("dare_linear(xs, weights, density, seed=0) -> Delta",
                    f"{_DARE}; then the weighted sum, on A and B separately with {_SQRT}."),
    "dare_ties": ("dare_ties(xs, weights, density, majority_sign_method=\"total\", seed=0) -> Delta",
                  f"{_DARE}; then TIES sign election and disjoint mean, on A and B separately with {_SQRT}."),
    "magnitude_prune": ("magnitude_prune(xs, weights, density) -> Delta",
                        f"Keep the top density fraction of each factor by |value|, then the weighted sum, "
                        f"with {_SQRT}."),
    "svd": ("svd(xs: List[Delta], weights, rank=max source rank) -> Delta",
            f"Σ wᵢ·ΔWᵢ, {_SVD}. Computed on the factors (QR + small SVD), never as an m×n matrix."),
    "ties_svd": ("ties_svd(xs, weights, density, majority_sign_method=\"total\", rank) -> Delta",
                 f"{_TIES}, on the updates wᵢ·ΔWᵢ; {_SVD}."),
    "dare_linear_svd": ("dare_linear_svd(xs, weights, density, rank, seed=0) -> Delta",
                        f"{_DARE}; Σ wᵢ·prune(ΔWᵢ), {_SVD}."),
    "dare_ties_svd": ("dare_ties_svd(xs, weights, density, majority_sign_method=\"total\", rank, seed=0) -> Delta",
                      f"{_DARE}; TIES election on the updates, {_SVD}."),
    "magnitude_prune_svd": ("magnitude_prune_svd(xs, weights, density, rank) -> Delta",
                            f"Σ wᵢ·(top density fraction of ΔWᵢ by |value|), {_SVD}."),
}


def _params(method: MergeMethod) -> tuple[Param, ...]:
    params = [XS, WEIGHTS]
    if method.density:
        params.append(DENSITY)
    if method.sign:
        params.append(SIGN)
    if method.rank:
        params.append(RANK)
    if method.seed:
        params.append(SEED)
    return tuple(params)


BASELINES: dict[str, Builtin] = {
    name: Builtin(name, _params(method), _build(method), *_DOCS[name]) for name, method in METHODS.items()
}
BASELINES["cat"] = Builtin("cat", (XS, WEIGHTS), _cat, "cat(xs: List[Delta], weights) -> Delta",
                           "Σ wᵢ·xᵢ exactly (PEFT's cat: the factors concatenated, ranks add).")

BUILTINS.update(BASELINES)
