"""Schedules (SPEC §7.2): numbers that vary by layer and module — and parameters, numbers given later.

A schedule is a compile-time value, like a number, whose value for each module follows from the
module's name: `ramp([v0, …, vk], layers=L)` interpolates along the layers (mergekit's rule),
`where(pattern, a, b)` picks by name, `lbw(…)` by an image model's block (sd-webui-lora-block-weight's
vectors, `ir/blocks.py`), and arithmetic on schedules is a schedule too (`0.5 *
ramp(…)`). Schedules are frozen and hashable, so they are IR attributes and constants like
numbers; kernels read every number through `GroupContext.number`, which evaluates a schedule
for the modules of a batch (`value_at`). The number of layers `L` of a ramp without `layers=`
is known only when the program's inputs are opened (`run.planning`): it is passed in then.

A `Parameter` is a number the program receives later (a sweep's `t`, the Python API's
`program(t=0.3)`): symbolic like a schedule while compiling, replaced by its value (`substitute`)
before the program is optimized for that value and run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from dipm_lang.ir.blocks import FORMS, block_weight
from dipm_lang.ir.modules import layer_index

Value = Union[float, "Schedule"]


class Schedule:
    """Base of the schedule values; arithmetic with numbers and schedules builds a `Combine`."""

    def __add__(self, other: Value) -> "Combine":
        return Combine("add", (self, other))

    def __radd__(self, other: Value) -> "Combine":
        return Combine("add", (other, self))

    def __sub__(self, other: Value) -> "Combine":
        return Combine("sub", (self, other))

    def __rsub__(self, other: Value) -> "Combine":
        return Combine("sub", (other, self))

    def __mul__(self, other: Value) -> "Combine":
        return Combine("mul", (self, other))

    def __rmul__(self, other: Value) -> "Combine":
        return Combine("mul", (other, self))

    def __truediv__(self, other: Value) -> "Combine":
        return Combine("div", (self, other))

    def __rtruediv__(self, other: Value) -> "Combine":
        return Combine("div", (other, self))

    def __neg__(self) -> "Combine":
        return Combine("neg", (self,))

    def __abs__(self) -> "Combine":
        return Combine("abs", (self,))


@dataclass(frozen=True, eq=True)
class Ramp(Schedule):
    """mergekit's gradient: `values` interpolated over layer indices 0 … L−1 (SPEC §7.2)."""

    values: tuple[float, ...]
    layers: int | None = None  # L; None: one plus the highest layer index of the program's modules


@dataclass(frozen=True, eq=True)
class Where(Schedule):
    """`then` for modules whose name matches `pattern` (`re.search`), else `otherwise`."""

    pattern: str
    then: Value
    otherwise: Value


@dataclass(frozen=True, eq=True)
class Blocks(Schedule):
    """sd-webui-lora-block-weight's block weights (SPEC §7.10): each module gets its block's value,
    0 in a block the vector's form does not name, 1 outside every block (`ir/blocks.py`)."""

    values: tuple[float, ...]  # 12, 17, 20, 26 or 61 numbers: the form is the length
    preset: str | None = None  # the preset's name when written as one (`lbw("INS")`)


@dataclass(frozen=True, eq=True)
class Parameter(Schedule):
    """A number given later, by name; the same for every module."""

    name: str


@dataclass(frozen=True, eq=True)
class Combine(Schedule):
    """Arithmetic on numbers and schedules, evaluated module by module."""

    op: str  # add sub mul div neg abs max min
    args: tuple[Value, ...]


def is_schedule(value: object) -> bool:
    """A symbolic number: a schedule, a parameter, or arithmetic on them."""
    return isinstance(value, Schedule)


def varies(value: object) -> bool:
    """Whether the value may differ between modules (a ramp or a where somewhere in it)."""
    if isinstance(value, (Ramp, Where, Blocks)):
        return True
    if isinstance(value, Combine):
        return any(varies(arg) for arg in value.args)
    return False


def parameters(value: object) -> set[str]:
    """The names of the parameters a value depends on."""
    if isinstance(value, Parameter):
        return {value.name}
    if isinstance(value, Where):
        return parameters(value.then) | parameters(value.otherwise)
    if isinstance(value, Combine):
        return set().union(*(parameters(arg) for arg in value.args))
    return set()


def substitute(value: object, bindings: "dict[str, float]") -> object:
    """`value` with its parameters replaced by their numbers (arithmetic on plain numbers evaluated)."""
    if isinstance(value, Parameter):
        return float(bindings[value.name])
    if isinstance(value, Where):
        return Where(value.pattern, substitute(value.then, bindings), substitute(value.otherwise, bindings))
    if isinstance(value, Combine):
        args = tuple(substitute(arg, bindings) for arg in value.args)
        if not any(is_schedule(arg) for arg in args):
            return value_at(Combine(value.op, args), "", 1)
        return Combine(value.op, args)
    if isinstance(value, tuple):
        return tuple(substitute(item, bindings) for item in value)
    return value


def ramp_value(values: tuple[float, ...], index: int, layers: int) -> float:
    """SPEC §7.2: x = i/(L−1) (1 when L = 1), s = x·k, j = ⌊s⌋, f = s − j,
    (1−f)·v[j] + f·v[min(k, j+1)]."""
    k = len(values) - 1
    x = index / (layers - 1) if layers > 1 else 1.0
    s = x * k
    j = math.floor(s)
    f = s - j
    return (1 - f) * values[j] + f * values[min(k, j + 1)]


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern)


class LayerError(ValueError):
    """A module's layer index is not below a ramp's L."""


def value_at(value: Value, module: str, layers: int) -> float:
    """The number `value` is for `module`, in a program whose modules span `layers` layers."""
    if not isinstance(value, Schedule):
        return float(value)
    if isinstance(value, Parameter):
        raise LayerError(f"the parameter '{value.name}' has no value")
    if isinstance(value, Ramp):
        count = value.layers if value.layers is not None else layers
        index = layer_index(module)
        if index is None:
            return value.values[0]  # no layer index: v0 (SPEC §7.2)
        if index >= count:
            raise LayerError(f"module {module!r} has layer index {index}, but the ramp has layers={count} "
                             f"(indices 0 … {count - 1})")
        return ramp_value(value.values, index, count)
    if isinstance(value, Where):
        chosen = value.then if _compiled(value.pattern).search(module) else value.otherwise
        return value_at(chosen, module, layers)
    if isinstance(value, Blocks):
        return block_weight(value.values, module)
    args = [value_at(arg, module, layers) for arg in value.args]
    if value.op == "neg":
        return -args[0]
    if value.op == "abs":
        return abs(args[0])
    a, b = args
    if value.op == "add":
        return a + b
    if value.op == "sub":
        return a - b
    if value.op == "mul":
        return a * b
    if value.op == "max":
        return max(a, b)
    if value.op == "min":
        return min(a, b)
    if b == 0.0:
        raise ZeroDivisionError(f"division by zero in module {module!r}")
    return a / b


def blocks_in(value: object) -> list[Blocks]:
    """The block-weight vectors a value is built from (their form must fit the inputs' family)."""
    if isinstance(value, Blocks):
        return [value]
    if isinstance(value, Where):
        return blocks_in(value.then) + blocks_in(value.otherwise)
    if isinstance(value, Combine):
        return [found for arg in value.args for found in blocks_in(arg)]
    return []


def leaves(value: Value) -> list[float]:
    """The numbers a schedule is made of (its possible values, for ramps and choices)."""
    if not isinstance(value, Schedule):
        return [float(value)]
    if isinstance(value, Ramp):
        return list(value.values)
    if isinstance(value, Blocks):  # and 1 outside every block, 0 in a block its form does not name
        return list(value.values) + [1.0] + ([0.0] if len(value.values) < len(FORMS[26]) else [])
    if isinstance(value, Where):
        return leaves(value.then) + leaves(value.otherwise)
    if isinstance(value, Parameter):
        return []
    return [x for arg in value.args for x in leaves(arg)]


def bounds(value: Value) -> tuple[float, float] | None:
    """The smallest and largest number `value` can be for any module, when that follows from its
    pieces alone (ramps interpolate between their values; choices pick one); None for arithmetic."""
    if isinstance(value, Combine) or parameters(value):
        return None  # arithmetic, or a number given later: checked when it is known
    values = leaves(value)
    return min(values), max(values)
