"""The merge baselines as one IR op, `merge`, parameterised by method (SPEC §3 "Baselines").

Every baseline of PEFT's `add_weighted_adapter` is one of two kinds, and one attribute table
describes them all (front end, verifier and both backends read it):

- *factor* methods (`linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`) combine the
  stored LoRA factors `A` and `B` of adapters entry by entry, separately, with PEFT's √-weights;
  their operands must be adapters (`load` nodes) of equal rank per module;
- *delta* methods (`svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`)
  combine the updates ΔWᵢ with the weights, then keep the best rank-`rank` approximation.

Attributes of a `merge` node: `method` (a name below), `weights` (one float per operand),
`density`, `majority_sign_method`, `seed` (each None where the method has no such parameter)
and `rank` (delta methods; None = the largest source rank, resolved at run time like PEFT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from dipm_lang.ir.types import DELTA, Type

SIGN_METHODS = ("total", "frequency")


@dataclass(frozen=True)
class MergeMethod:
    name: str        # the language's function name (PEFT's combination_type)
    base: str        # task_arithmetic | linear | ties | dare_linear | dare_ties | magnitude_prune
    space: str       # "factors" (A and B separately) or "delta" (ΔW, then truncated SVD)
    density: bool = False  # which parameters it takes
    sign: bool = False     # majority_sign_method
    seed: bool = False

    @property
    def rank(self) -> bool:
        """Takes `rank` (the delta methods end with a truncated SVD)."""
        return self.space == "delta"

    @property
    def random(self) -> bool:
        """DARE: random pruning, seeded, with density > 0 (it rescales by 1/density)."""
        return self.seed


METHODS: dict[str, MergeMethod] = {m.name: m for m in [
    MergeMethod("linear", "linear", "factors"),
    MergeMethod("ties", "ties", "factors", density=True, sign=True),
    MergeMethod("dare_linear", "dare_linear", "factors", density=True, seed=True),
    MergeMethod("dare_ties", "dare_ties", "factors", density=True, sign=True, seed=True),
    MergeMethod("magnitude_prune", "magnitude_prune", "factors", density=True),
    MergeMethod("svd", "task_arithmetic", "delta"),
    MergeMethod("ties_svd", "ties", "delta", density=True, sign=True),
    MergeMethod("dare_linear_svd", "dare_linear", "delta", density=True, seed=True),
    MergeMethod("dare_ties_svd", "dare_ties", "delta", density=True, sign=True, seed=True),
    MergeMethod("magnitude_prune_svd", "magnitude_prune", "delta", density=True),
]}


class _Bad(Exception):
    pass


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise _Bad(message)


def merge_type(types: Sequence[Type], attrs: dict[str, Any]) -> Type:
    """Typing rule of `merge` for ir/ops.py (raises on a malformed node)."""
    from dipm_lang.ir.ops import IRTypeError

    try:
        method = METHODS.get(attrs.get("method"))  # type: ignore[arg-type]
        _need(method is not None, f"merge: unknown method {attrs.get('method')!r}")
        _need(len(types) >= 1, "merge needs at least one operand")
        for t in types:
            _need(t.is_update, f"merge operands must be Delta or Dir, got {t}")
        weights = attrs.get("weights")
        _need(isinstance(weights, tuple) and len(weights) == len(types)
              and all(isinstance(w, float) for w in weights), "merge: one float weight per operand")
        density = attrs.get("density")
        if method.density:
            _need(isinstance(density, float) and 0.0 <= density <= 1.0, "merge: density must be in [0, 1]")
            _need(not method.random or density > 0.0, "merge: DARE needs density > 0")
        else:
            _need(density is None, f"merge: {method.name} takes no density")
        sign = attrs.get("majority_sign_method")
        _need(sign in SIGN_METHODS if method.sign else sign is None, "merge: bad majority_sign_method")
        seed = attrs.get("seed")
        _need(isinstance(seed, int) if method.seed else seed is None, "merge: bad seed")
        rank = attrs.get("rank")
        _need(rank is None or (method.rank and isinstance(rank, int) and rank >= 1), "merge: bad rank")
    except _Bad as e:
        raise IRTypeError(str(e)) from None
    return DELTA
