"""The decoupling operators on factors (SPEC §7.3): the same kernels, handed factors as updates.

`dir`, `mag`, `normalize`, `reverse`, `shift`, `lerp`, `mix`, `orth`, `recombine` (and `mean`, `max`,
`min` on their magnitudes) accept `x.A` / `x.B` and directions of them. Their kernels are written for
updates; `factorwise` adapts a kernel once, from the node's types:

- operands that are factors (or directions or magnitudes of one) first get the SPEC's rule for a
  module one adapter lacks — a zero factor of its partner's shape (`factor_units.fill_missing`);
- in the factored backend each factor becomes the update it is (`factor_units.as_update`: B as B·I,
  A as I·A; once per value, so `dir(x.B)` and `mag(x.B)` share their norms), and a result that is a
  factor is multiplied back (`as_factor`);
- the dense reference needs no wrapping: its kernels take any matrix, and a factor is one.
"""

from __future__ import annotations

from typing import Any, Callable

from dipm_lang.ir.types import Type
from dipm_lang.ops.backend import FX

Kernel = Callable[..., Any]


def _of_factor(type_: Type) -> str | None:
    """The factor whose units a value (or a list's items) holds, or None."""
    if type_.kind == "List":
        return None if type_.item is None else type_.item.factor
    return type_.factor


def _module_dims(type_: Type) -> int:
    return 1 if type_.kind == "Mag" else 2


def _filled(node, values: tuple) -> list:
    """The operand values with rank-0 factors widened to their partners' rank (lists item by item)."""
    flat, axes, dims, places = [], [], [], []
    for i, (arg, value) in enumerate(zip(node.args, values)):
        items = list(enumerate(value)) if arg.type.kind == "List" else [(None, value)]
        type_ = arg.type.item if arg.type.kind == "List" else arg.type
        if type_ is None or type_.factor is None:
            continue
        for j, item in items:
            flat.append(item)
            axes.append(type_.rank_axis)
            dims.append(_module_dims(type_))
            places.append((i, j))
    out = [list(v) if arg.type.kind == "List" else v for arg, v in zip(node.args, values)]
    for (i, j), value in zip(places, FX.fill_missing(flat, axes, dims)):
        if j is None:
            out[i] = value
        else:
            out[i][j] = value
    return out


def _as_update(ctx, type_: Type, value: Any) -> Any:
    """A factor (or a direction of one) as the update it is; anything else unchanged."""
    if not type_.is_factor:
        return value
    side = type_.factor
    return ctx.shared(f"factor {side} as update", (value,), lambda: FX.as_update(value, side))


def factorwise(kernel: Kernel, *, wrap: bool = True) -> Kernel:
    """`kernel` (written for updates, magnitudes and numbers) extended to factors; `wrap=False` for
    kernels that take any matrix (the dense reference) or only magnitudes: then only the missing-module
    rule applies."""

    def run(ctx, node, *values):
        if node.type.factor is None and not any(_of_factor(arg.type) for arg in node.args):
            return kernel(ctx, node, *values)
        values = _filled(node, values)
        if wrap:
            values = [[_as_update(ctx, arg.type.item, v) for v in value] if arg.type.kind == "List"
                      else _as_update(ctx, arg.type, value) for arg, value in zip(node.args, values)]
        out = kernel(ctx, node, *values)
        if wrap and node.type.is_factor:
            out = FX.as_factor(out, node.type.factor)
        return out

    return run
