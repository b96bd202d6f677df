"""`+ - * /`, unary minus and the elementwise magnitude operators, on the values of either backend.

Values are numbers (Python floats), magnitudes and factors (tensors), and updates — `LowRank` in
the factored backend (sums concatenate factors, exactly), `DoraForm` for DoRA adapters and weights
(SPEC §7.8: c and K combine linearly), or dense m×n tensors in the reference.
"""

from __future__ import annotations

from typing import Any

import torch

from dipm_lang.backend import forms as F
from dipm_lang.backend import lowrank as L
from dipm_lang.backend.dora import DoraForm
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.numbers import numeric

_PLAIN = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b}


def plain(op: str, a: Any, b: Any, *, factors: bool = False) -> Any:
    """`a op b` on numbers, tensors and dense updates (`factors`: the operands are LoRA factors).
    A per-module number (`[G]`, a schedule's values) broadcasts over the other operand's units."""
    if op == "div" and isinstance(b, float) and b == 0.0:
        raise ExecutionError("division by zero")
    if isinstance(b, torch.Tensor) and op == "div" and bool((b == 0).any()):
        raise ExecutionError("division by zero")
    # two factors, not a factor and a per-module number (a number has no unit dimensions)
    factor_pair = factors and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == b.dim()
    a, b = _aligned(a, b)
    if factor_pair and a.shape != b.shape:
        # a module one adapter lacks has a rank-0 factor: a zero factor of its partner's shape (SPEC §7.3)
        if a.numel() == 0 or b.numel() == 0:
            return _PLAIN[op](a if a.numel() else torch.zeros_like(b), b if b.numel() else torch.zeros_like(a))
        # one module's shapes (the factored backend stacks a batch of modules in front)
        raise ExecutionError(f"factor shapes differ: {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])} "
                             "(factors of adapters with different ranks)")
    return _PLAIN[op](a, b)


def factored(op: str, a: Any, b: Any, *, factors: bool = False) -> Any:
    """`a op b` where updates are `LowRank` or `DoraForm`: exact, by concatenating factors (ranks add)."""
    matrices = (LowRank, DoraForm)
    if not (isinstance(a, matrices) or isinstance(b, matrices)):
        return plain(op, a, b, factors=factors)
    if op == "add":
        return F.combine([a, b], [1.0, 1.0])
    if op == "sub":
        return F.combine([a, b], [1.0, -1.0])
    if op == "mul":
        k, x = (a, b) if isinstance(b, matrices) else (b, a)
        return F.combine([x], [_number(k)])
    if bool((torch.as_tensor(b) == 0).any()):
        raise ExecutionError("division by zero")
    return F.combine([a], [1.0 / _number(b)])


def _number(k: Any) -> float | torch.Tensor:
    """A scalar (or one per module) as linear_combination takes it."""
    return k if isinstance(k, torch.Tensor) else float(k)


def _aligned(a: Any, b: Any) -> tuple[Any, Any]:
    """A per-module number (`[G]` float64, a schedule's values) next to a per-unit tensor (`[G, units]`):
    a column in the other's dtype, to broadcast over its units."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() != b.dim():
        if a.dim() < b.dim():
            a = a.to(b.dtype).reshape(*a.shape, *([1] * (b.dim() - a.dim())))
        else:
            b = b.to(a.dtype).reshape(*b.shape, *([1] * (a.dim() - b.dim())))
    return a, b


def negate(x: Any) -> Any:
    return L.reverse(x) if isinstance(x, LowRank) else -x  # DoraForm and tensors negate themselves


def extremum(which: str, a: Any, b: Any) -> Any:
    """Elementwise max/min of magnitudes and numbers (numbers with numbers stay numbers, schedules
    included); a per-module number (`[G]`) broadcasts over a magnitude's units."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return numeric(which, [a, b])
    a, b = _aligned(*_tensors([a, b]))
    return torch.maximum(a, b) if which == "max" else torch.minimum(a, b)


def weighted_mean(values: list, weights: list) -> Any:
    """Σ wᵢ·mᵢ / Σ wᵢ (SPEC §3 `mean`); a weight may be one per module (`[G]`)."""
    total = sum(weights)
    if bool((torch.as_tensor(total) == 0).any()):
        raise ExecutionError("mean: the weights sum to zero")
    weighted = sum(plain("mul", w, m) for w, m in zip(weights, values))
    return plain("div", weighted, total)


def _tensors(args: list) -> list[torch.Tensor]:
    like = next(a for a in args if isinstance(a, torch.Tensor))
    return [a if isinstance(a, torch.Tensor) else torch.full_like(like, float(a)) for a in args]
