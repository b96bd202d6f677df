"""What kernels know about the modules they run on: `GroupContext`, one per batch of modules."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dipm_lang.backend import forms as F
from dipm_lang.backend import lowrank as L
from dipm_lang.backend.dora import DoraForm
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.node import Node
from dipm_lang.ir.schedules import LayerError, is_schedule, value_at


@dataclass
class GroupContext:
    """A batch of same-shape modules processed together (names in batch order), and how to read
    its inputs."""

    names: list[str]
    eps: float
    load: Callable[[Node], Any]  # reads the group's value of one `load` node (LowRank, or dense in the reference)
    layers: int = 1              # L of the program's modules: one plus the highest layer index (SPEC §7.2)
    # For the merge baselines, which work on stored LoRA factors as PEFT does (backend/baselines.py):
    adapter: Callable[[Node], Any] | None = None  # the source a `load` reads (scales, ranks; no I/O)
    factors: Callable[[Node], Any] | None = None  # a `load`'s LowRank [G, …] (scale in B), also when dense
    # With base weights (SPEC §7.8): the batch's W0 ([G, m, n] in the LoRA layout; [m, n] float64 in
    # the dense reference), a DoRA `load`'s magnitude vectors (None for a module it lacks), and
    # whether a node's value is in DoRA's form (decided by the planner from the program alone).
    base: Callable[[], Any] | None = None
    magnitudes: Callable[[Node], Any] | None = None
    in_form: Callable[[Node], bool] = lambda node: False
    _shared: dict[tuple, tuple[tuple[weakref.ref, ...], Any]] = field(default_factory=dict, repr=False)
    _weights: Any = field(default=None, repr=False)

    def weights(self) -> Any:
        """W0 of the batch, read once (the first kernel that needs it reads it)."""
        if self._weights is None:
            if self.base is None:
                raise ExecutionError("this value needs the base model's weights; give --base DIR or base(\"DIR\")")
            self._weights = self.base()
        return self._weights

    def number(self, value: Any) -> float | torch.Tensor:
        """A number as a kernel uses it: a plain number, or a schedule's value for each module of the
        batch — one float64 per module, `[G]` (a float when the batch's modules agree)."""
        if not is_schedule(value):
            return float(value)
        values = self.numbers(value)
        if len(set(values)) == 1:
            return values[0]
        return torch.tensor(values, dtype=torch.float64)

    def numbers(self, value: Any) -> list[float]:
        """`value` for each module of the batch, as Python floats."""
        if not is_schedule(value):
            return [float(value)] * len(self.names)
        try:
            return [value_at(value, name, self.layers) for name in self.names]
        except (LayerError, ZeroDivisionError) as e:
            raise ExecutionError(str(e)) from None

    def unit_norms(self, x: LowRank, by: str, operand: Node) -> torch.Tensor:
        """The unit norms of `x` (the value of `operand`) in x's dtype, computed once per value:
        `dir(x)` and `mag(x)` (as in every DiPM recipe) share one QR.

        A computed value may cancel to exact zero units, whose rounding noise must not pass for
        a unit (`L.exact_unit_norms`); a loaded adapter cannot, so its norms need no float64.
        A value in DoRA's form has its norms from W0 (in float64, `forms.unit_norms`)."""
        if isinstance(x, DoraForm):
            return self.shared(f"norms {by}", (x,), lambda: F.unit_norms(x, by, self.weights()))
        return self.shared(f"norms {by}", (x,), lambda: L.unit_norms(x, by) if operand.op == "load"
                           else L.exact_unit_norms(x, by))

    def shared(self, what: str, operands: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """`compute()` once per batch for these operand values (by identity): work that several
        nodes share — the norms behind `dir(x)` and `mag(x)`, the angles `shift(d, e, t)` needs for
        every `t` of a sweep. Entries hold the operands weakly, so no value outlives its last use."""
        key = (what, *map(id, operands))
        hit = self._shared.get(key)
        if hit is not None and all(ref() is operand for ref, operand in zip(hit[0], operands)):
            return hit[1]
        value = compute()
        self._shared[key] = (tuple(weakref.ref(operand) for operand in operands), value)
        return value
