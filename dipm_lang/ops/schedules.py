"""Schedules (SPEC §7.2): numbers that vary by layer and module, usable wherever a number is.

`ramp([v0, …, vk], layers=L)` is mergekit's gradient over the layers; `where(pattern, a, b)` picks
`a` for modules whose name matches and `b` for the others (nest it for more cases). Both are known
when compiling: they lower to a constant holding the schedule (`ir/schedules.py`), typed
`Num[module]`, and every kernel reads its numbers module by module (`GroupContext.number`).
"""

from __future__ import annotations

from typing import Any

from dipm_lang.ir.node import Node
from dipm_lang.ir.operator import Builder, Operator
from dipm_lang.ir.schedules import Ramp, Where, is_schedule
from dipm_lang.ir.signature import Int, Param, Static, Typing, _listed
from dipm_lang.ir.types import SCHEDULE
from dipm_lang.ops.selection import Pattern


class Values(Static):
    """A non-empty list of plain numbers (a ramp's points)."""

    label = "List[Num]"

    def convert(self, t: Typing, param: str, value: Any) -> tuple[float, ...]:
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            t.fail(param, f"'{param}' must be a non-empty list of numbers, got {_listed(value)}")
        return tuple(float(v) for v in value)


class NumberOrSchedule(Static):
    """A number or a schedule known when compiling (`where`'s branches)."""

    label = "Num | Num[module]"

    def convert(self, t: Typing, param: str, value: Any) -> Any:
        if is_schedule(value):
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            t.fail(param, f"'{param}' must be a number or a schedule, got {_listed(value)}")
        return float(value)


def _constant(b: Builder, value: Any) -> Node:
    return b.const(value)


OPERATORS = [
    Operator("ramp", (Param("values", Values()), Param("layers", Int(minimum=1, optional=True), None)), SCHEDULE,
             "A number per module interpolated along the layers, as mergekit's gradients: layer i of L gets "
             "values at x = i/(L-1) (L: one plus the highest layer index, unless given); modules without a "
             "layer index get values[0].",
             expand=lambda b: _constant(b, Ramp(b.typing.value("values"), b.typing.value("layers")))),
    Operator("where", (Param("pattern", Pattern()), Param("a", NumberOrSchedule()), Param("b", NumberOrSchedule())),
             SCHEDULE, "a for modules whose name matches the regex (re.search), b for the others; nest it for "
                       "more cases (the first match wins).",
             expand=lambda b: _constant(b, Where(b.typing.value("pattern"), b.typing.value("a"),
                                                 b.typing.value("b")))),
]
