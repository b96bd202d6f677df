"""Module selection (SPEC §3): keep or replace only the modules whose name matches a pattern and/or
whose layer lies in a range, or (SPEC §7.10) that belong to one component of an image model. Which modules match is known from the names alone, so the executor
groups modules by it and a kernel sees one outcome per batch."""

from __future__ import annotations

import re
from typing import Any

from dipm_lang.ir.blocks import COMPONENTS
from dipm_lang.ir.modules import module_matches
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.signature import Choice, Param, Static, Typing, Update, _listed, _string
from dipm_lang.ir.types import DELTA
from dipm_lang.ops.backend import F, L
from dipm_lang.safety.regex import compile_pattern


class Pattern(Static):
    """A regular expression over module names (`re.search`), refused when it could take exponential
    time; none means every module."""

    label = "Str"

    def convert(self, t: Typing, param: str, value: Any) -> str:
        if value is None:
            return ".*"
        pattern = _string(t, param, value)
        try:
            compile_pattern(pattern)
        except re.error as e:
            t.fail(param, f"invalid regular expression {pattern!r:.200}: {e}")
        return pattern


class Layers(Static):
    """`[first, last]`: an inclusive range of layer indices, or none."""

    label = "[Int, Int]"

    def convert(self, t: Typing, param: str, value: Any) -> tuple[int, int] | None:
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == int(v) for v in value)
                or value[0] > value[1]):
            t.fail(param, f"'{param}' must be [first, last] (inclusive layer numbers), got {_listed(value)}")
        return (int(value[0]), int(value[1]))


WHERE = (Param("pattern", Pattern(), None), Param("layers", Layers(), None))


def _matches(node, name: str) -> bool:
    """Whether `name` is selected: a kernel sees one outcome per batch (the schedule groups by it)."""
    return module_matches(name, node.attr("pattern"), node.attr("layers"))


def _in_component(node, name: str) -> bool:
    """Whether `name` is in the chosen component of an image model (`ir/blocks.py`'s patterns)."""
    return module_matches(name, COMPONENTS[node.attr("which")], None)


def _zero(x: Any) -> Any:
    if isinstance(x, L.LowRank) or F.has_form(x):
        return F.zeros_like(x)
    return x * 0.0


OPERATORS = [
    Operator("select", (Param("x", Update()), *WHERE), DELTA,
             "Keep only the modules whose name matches the regex (re.search) and/or lies in the layer range; "
             "others become zero.",
             factored=lambda ctx, node, x: x if _matches(node, ctx.names[0]) else _zero(x), batch_key=_matches),
    Operator("replace", (Param("x", Update()), Param("y", Update()), *WHERE), DELTA,
             "x, with the matching modules taken from y instead.",
             factored=lambda ctx, node, x, y: y if _matches(node, ctx.names[0]) else x, batch_key=_matches),
    Operator("component", (Param("x", Update()), Param("which", Choice(tuple(COMPONENTS)))), DELTA,
             "Keep only one component of an image-model LoRA: \"model\" (the UNet or transformer), \"clip\" "
             "(every text encoder), or \"unet\", \"transformer\", \"text_encoder\", \"text_encoder_2\"; "
             "others become zero.",
             factored=lambda ctx, node, x: x if _in_component(node, ctx.names[0]) else _zero(x),
             batch_key=_in_component),
]
