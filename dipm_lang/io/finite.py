"""Fast NaN/Inf and zero checks for whole stacks of factors.

`torch.isfinite(x).all()` builds a boolean tensor as large as `x` and runs about 30× slower
than a vectorised reduction; on a 7B-sized adapter it cost more than reading the file.
`aminmax` propagates NaN, so a tensor is all finite exactly when its minimum and maximum are.
"""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN, +Inf or -Inf (an empty tensor is finite)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def any_nonzero(tensor: torch.Tensor) -> bool:
    """`bool(tensor.any())` in one vectorised pass: a float tensor's `any()` builds a boolean copy
    and costs ~13× more, which at 70B shapes (560 modules) added seconds to every save. NaN counts
    as nonzero (the finiteness checks report it)."""
    if tensor.numel() == 0:
        return False
    if tensor.dtype == torch.bool or not tensor.is_floating_point():
        return bool(tensor.any())
    low, high = torch.aminmax(tensor)
    return bool((low != 0) | (high != 0) | low.isnan())


def first_non_finite(stack: torch.Tensor) -> int | None:
    """Index along dim 0 of the first slice holding NaN or Inf (None when all are finite)."""
    for index in range(stack.shape[0]):
        if not all_finite(stack[index]):
            return index
    return None
