"""op → kernel registries: the factored backend (LowRank values, batched over same-shape
modules) and the dense float64 reference (full matrices, one module at a time).

A kernel is `fn(node, args, ctx)`; `args` are the operand values in order. Values are:
updates — `LowRank` (factored) or a dense `Tensor` [m, n]; magnitudes and factors —
tensors; numbers, strings and lists — Python values (lists of per-module values for
list nodes). Operators that are plain tensor arithmetic are shared by both registries.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dipm_lang.backend import dense as D
from dipm_lang.backend import lowrank as L
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.node import Node

Kernel = Callable[[Node, list, "GroupContext"], Any]


@dataclass
class GroupContext:
    """What kernels need to know about the modules being processed together."""

    names: list[str]            # module names in the group (batch order)
    eps: float
    load: Callable[[Node], Any]  # reads the group's factors of one input
    # For the merge baselines, which work on stored LoRA factors as PEFT does (backend/baselines.py):
    adapter: Callable[[Node], Any] | None = None  # the AdapterInfo a `load` reads (scales, ranks; no I/O)
    factors: Callable[[Node], Any] | None = None  # a `load`'s LowRank [G, …] (scale in B), also when dense
    _norms: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor]] = field(default_factory=dict, repr=False)

    def unit_norms(self, x: LowRank, by: str, operand: Node) -> torch.Tensor:
        """The unit norms of `x` (the value of `operand`) in x's dtype, computed once per value:
        `dir(x)` and `mag(x)` (as in every DiPM recipe) share one QR. Entries hold `x` weakly,
        so no value outlives its last use.

        A computed value may cancel to exact zero units, whose rounding noise must not pass for
        a unit (`L.exact_unit_norms`); a loaded adapter cannot, so its norms need no float64."""
        key = (id(x), by)
        hit = self._norms.get(key)
        if hit is not None and hit[0]() is x:
            return hit[1]
        norms = L.unit_norms(x, by) if operand.op == "load" else L.exact_unit_norms(x, by)
        self._norms[key] = (weakref.ref(x), norms)
        return norms

    def layer_of(self, name: str) -> int | None:
        match = re.search(r"\.(\d+)\.", f".{name}.")
        return int(match.group(1)) if match else None

    def selected(self, node: Node) -> bool:
        """Whether this group's modules match a select/replace node (uniform per group)."""
        return module_matches(self.names[0], node.attr("pattern"), node.attr("layers"))


def module_matches(name: str, pattern: str | None, layers: tuple[int, int] | None) -> bool:
    if pattern is not None and not re.search(pattern, name):
        return False
    if layers is not None:
        match = re.search(r"\.(\d+)\.", f".{name}.")
        if match is None or not layers[0] <= int(match.group(1)) <= layers[1]:
            return False
    return True


def _num(value: Any) -> float:
    return float(value)


# ---- shared: numbers, magnitudes, factors -------------------------------------------------

def _arith(op: str) -> Kernel:
    def kernel(node: Node, args: list, ctx: GroupContext) -> Any:
        a, b = args
        if op == "div" and isinstance(b, float) and b == 0.0:
            raise ExecutionError("division by zero")
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape \
                and node.type.kind == "Factor":
            raise ExecutionError(f"factor shapes differ: {tuple(a.shape)} and {tuple(b.shape)} "
                                 "(factors of adapters with different ranks)")
        return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b}[op]()

    return kernel


def _mean(node: Node, args: list, ctx: GroupContext) -> Any:
    mags, weights = args
    total = sum(weights)
    if total == 0.0:
        raise ExecutionError("mean: the weights sum to zero")
    return sum(w * m for w, m in zip(weights, mags)) / total


SHARED: dict[str, Kernel] = {
    "const": lambda node, args, ctx: node.value,
    "list": lambda node, args, ctx: list(args),
    "mul": _arith("mul"),
    "div": _arith("div"),
    "add": _arith("add"),
    "sub": _arith("sub"),
    "neg": lambda node, args, ctx: -args[0],
    "mean": _mean,
    "max": lambda node, args, ctx: max(args) if node.type.kind == "Num" else torch.maximum(*_tensors(args)),
    "min": lambda node, args, ctx: min(args) if node.type.kind == "Num" else torch.minimum(*_tensors(args)),
    "abs": lambda node, args, ctx: abs(args[0]),
    "load": lambda node, args, ctx: ctx.load(node),
}


def _tensors(args: list) -> list[torch.Tensor]:
    like = next(a for a in args if isinstance(a, torch.Tensor))
    return [a if isinstance(a, torch.Tensor) else torch.full_like(like, float(a)) for a in args]


# ---- factored ----------------------------------------------------------------------------

def _f_lincomb(node: Node, args: list, ctx: GroupContext) -> LowRank:
    return L.linear_combination(args, list(node.attr("coeffs")))


def _f_arith_update(op: str) -> Kernel:
    shared = _arith(op)

    def kernel(node: Node, args: list, ctx: GroupContext) -> Any:
        a, b = args
        if not (isinstance(a, LowRank) or isinstance(b, LowRank)):
            return shared(node, args, ctx)
        if op == "add":
            return L.linear_combination([a, b], [1.0, 1.0])
        if op == "sub":
            return L.linear_combination([a, b], [1.0, -1.0])
        if op == "mul":
            k, x = (a, b) if isinstance(b, LowRank) else (b, a)
            return L.linear_combination([x], [_num(k)])
        if _num(b) == 0.0:
            raise ExecutionError("division by zero")
        return L.linear_combination([a], [1.0 / _num(b)])

    return kernel


def _f_neg(node: Node, args: list, ctx: GroupContext) -> Any:
    x = args[0]
    return L.reverse(x) if isinstance(x, LowRank) else -x


def _f_unit_scale(node: Node, args: list, ctx: GroupContext) -> LowRank:
    by, coeff = node.attr("by"), node.attr("coeff")
    x = args[0]
    scale = L._safe_inv(ctx.unit_norms(x, by, node.args[0]), ctx.eps) if node.attr("normalize") else None
    if len(args) == 2:
        scale = args[1] if scale is None else scale * args[1]
    if scale is None:
        return L.linear_combination([x], [coeff])
    return L.scale_units(x, scale * coeff, by)


def _f_lowrank(node: Node, args: list, ctx: GroupContext) -> LowRank:
    return L.lowrank(args[0], node.attr("rank"))[0]


def _f_factor(node: Node, args: list, ctx: GroupContext) -> torch.Tensor:
    x = args[0]
    return x.A if node.attr("which") == "A" else x.B


def _f_lora(node: Node, args: list, ctx: GroupContext) -> LowRank:
    B, A = args
    if B.shape[-1] != A.shape[-2]:
        raise ExecutionError(f"lora: B has rank {B.shape[-1]} but A has rank {A.shape[-2]} "
                             f"in module {ctx.names[0]}")
    return LowRank(B, A)


def _select(zero: Callable[[Any], Any]) -> Kernel:
    def kernel(node: Node, args: list, ctx: GroupContext) -> Any:
        chosen = ctx.selected(node)
        if node.op == "select":
            return args[0] if chosen else zero(args[0])
        return args[1] if chosen else args[0]

    return kernel


FACTORED: dict[str, Kernel] = {
    **SHARED,
    "add": _f_arith_update("add"),
    "sub": _f_arith_update("sub"),
    "mul": _f_arith_update("mul"),
    "div": _f_arith_update("div"),
    "neg": _f_neg,
    "dir": lambda node, args, ctx: L.dir(args[0], node.attr("by"), ctx.eps,
                                         ctx.unit_norms(args[0], node.attr("by"), node.args[0])),
    "mag": lambda node, args, ctx: ctx.unit_norms(args[0], node.attr("by"), node.args[0]),
    "reverse": lambda node, args, ctx: L.reverse(args[0]),
    "shift": lambda node, args, ctx: L.shift(args[0], args[1], _num(args[2]), node.type.by, ctx.eps),
    "orth": lambda node, args, ctx: L.orth(args[0], args[1], node.type.by, ctx.eps),
    "mix": lambda node, args, ctx: L.mix(args[0], [_num(w) for w in args[1]], node.type.by, ctx.eps),
    "recombine": lambda node, args, ctx: L.recombine(args[0], args[1], node.attr("by")),
    "lowrank": _f_lowrank,
    "factor": _f_factor,
    "lora": _f_lora,
    "select": _select(lambda x: LowRank.zeros(x.m, x.n, x.batch_shape, x.dtype, x.device)),
    "replace": _select(lambda x: x),
    "lincomb": _f_lincomb,
    "unit_scale": _f_unit_scale,
}


# ---- dense reference ---------------------------------------------------------------------

def _d_arith_update(op: str) -> Kernel:
    shared = _arith(op)

    def kernel(node: Node, args: list, ctx: GroupContext) -> Any:
        return shared(node, args, ctx)  # dense matrices and numbers: plain tensor arithmetic

    return kernel


def _d_unit_scale(node: Node, args: list, ctx: GroupContext) -> torch.Tensor:
    by, coeff = node.attr("by"), node.attr("coeff")
    x = D.dir(args[0], by, ctx.eps) if node.attr("normalize") else args[0]
    if len(args) == 2:
        x = D.recombine(x, args[1], by)
    return coeff * x


def _d_factor(node: Node, args: list, ctx: GroupContext) -> torch.Tensor:
    raise ExecutionError("x.A / x.B have no dense reference (factors are not a function of ΔW)")


DENSE: dict[str, Kernel] = {
    **SHARED,
    "add": _d_arith_update("add"),
    "sub": _d_arith_update("sub"),
    "dir": lambda node, args, ctx: D.dir(args[0], node.attr("by"), ctx.eps),
    "mag": lambda node, args, ctx: D.mag(args[0], node.attr("by")),
    "reverse": lambda node, args, ctx: D.reverse(args[0]),
    "shift": lambda node, args, ctx: D.shift(args[0], args[1], _num(args[2]), node.type.by, ctx.eps),
    "orth": lambda node, args, ctx: D.orth(args[0], args[1], node.type.by, ctx.eps),
    "mix": lambda node, args, ctx: D.mix(args[0], [_num(w) for w in args[1]], node.type.by, ctx.eps),
    "recombine": lambda node, args, ctx: D.recombine(args[0], args[1], node.attr("by")),
    "lowrank": lambda node, args, ctx: D.lowrank(args[0], node.attr("rank"))[0],
    "factor": _d_factor,
    "lora": _d_factor,
    "select": _select(torch.zeros_like),
    "replace": _select(lambda x: x),
    "lincomb": lambda node, args, ctx: sum(c * x for c, x in zip(node.attr("coeffs"), args)),
    "unit_scale": _d_unit_scale,
}


# The merge baselines (linear, ties, dare_*, magnitude_prune, svd and the *_svd variants).
from dipm_lang.backend.baselines import merge_kernel  # noqa: E402
from dipm_lang.backend.baselines_dense import merge_dense_kernel  # noqa: E402

FACTORED["merge"] = merge_kernel
DENSE["merge"] = merge_dense_kernel
