"""Schedules (SPEC §7.2): numbers that vary by layer and module, usable wherever a number is.

`ramp([v0, …, vk], layers=L)` is mergekit's gradient over the layers; `where(pattern, a, b)` picks
`a` for modules whose name matches and `b` for the others (nest it for more cases). For LoRAs of
image models (SPEC §7.10), `lbw(…)` is a number per block (sd-webui-lora-block-weight's presets and
vectors) and `strengths(model=…, clip=…)` one per component (ComfyUI's strength_model/strength_clip).
All are known when compiling: they lower to a constant holding the schedule (`ir/schedules.py`), typed
`Num[module]`, and every kernel reads its numbers module by module (`GroupContext.number`).
"""

from __future__ import annotations

from typing import Any

from dipm_lang.ir.node import Node
from dipm_lang.ir.operator import Builder, Operator
from dipm_lang.ir.blocks import COMPONENTS, length_problem, parse_weights
from dipm_lang.ir.schedules import Blocks, Ramp, Where, is_schedule
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


class BlockWeights(Static):
    """A block-weight vector: an LBW preset name (`"INS"`), LBW's text (`"1,0,0,…"`) or a list of
    12, 17, 20, 26 or 61 numbers (whether it fits the inputs' model family is checked when they are opened)."""

    label = "Str | List[Num]"

    def convert(self, t: Typing, param: str, value: Any) -> Blocks:
        if not isinstance(value, (str, list, tuple)) or isinstance(value, tuple) and not value:
            t.fail(param, f"'{param}' must be a preset name or a list of numbers, got {_listed(value)}")
        try:
            values = parse_weights(value)
        except ValueError as error:
            t.fail(param, str(error))
        problem = length_problem(len(values))
        if problem:
            t.fail(param, problem)
        preset = value.strip() if isinstance(value, str) and "," not in value else None
        return Blocks(values, preset)


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
    Operator("lbw", (Param("weights", BlockWeights()),), SCHEDULE,
             "Block weights of an image-model LoRA as sd-webui-lora-block-weight gives them: a preset (\"INS\", "
             "\"MIDD\", \"OUTD\", …) or 17/26 values (SD 1.x/2.x), 12/20 (SDXL), 61 (Flux); a module gets its "
             "block's value, 0 in a block the vector does not name, 1 outside every block.",
             expand=lambda b: _constant(b, b.typing.value("weights"))),
    Operator("strengths", (Param("model", NumberOrSchedule(), 1.0), Param("clip", NumberOrSchedule(), 1.0)), SCHEDULE,
             "A number per component of an image-model LoRA (ComfyUI's strength_model / strength_clip): "
             "model for the UNet or transformer, clip for the text encoders.",
             expand=lambda b: _constant(b, Where(COMPONENTS["clip"], b.typing.value("clip"), b.typing.value("model")))),
]
