"""A sweep point: one assignment of numbers to the swept parameters, and its folder name.

The folder is `NAME=VALUE[,NAME=VALUE…]` with VALUE = `repr(float(v))` (SPEC §7.7): Python's
shortest round-trip form, so the name says exactly which float the recipe saw (`t=0.3`,
`t=1.0`, `lam=1e-05`) and can be read back by `parse_point_name`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_ITEM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([^,=/\\]+)\Z")


@dataclass(frozen=True)
class Point:
    """Parameter values in axis order. Equality and hashing use the values only; `index` is the
    point's position in the sweep (grid order, or the trial number in a search)."""

    params: tuple[tuple[str, float], ...]
    index: int = field(default=0, compare=False)

    @property
    def name(self) -> str:
        """The point's folder name, e.g. `t=0.3,lam=1.0`."""
        return ",".join(f"{name}={float(value)!r}" for name, value in self.params)

    @property
    def values(self) -> dict[str, float]:
        """name → value, for the compute step (`--set NAME=VALUE` for each)."""
        return {name: float(value) for name, value in self.params}

    @classmethod
    def of(cls, values: Mapping[str, float], order: list[str], index: int = 0) -> Point:
        return cls(tuple((name, float(values[name])) for name in order), index)

    def __str__(self) -> str:
        return self.name


def parse_point_name(name: str) -> dict[str, float] | None:
    """The values a point folder name encodes, or None if `name` is not one `Point.name` writes."""
    values: dict[str, float] = {}
    for item in name.split(","):
        match = _ITEM.match(item)
        if match is None or match.group(1) in values:
            return None
        try:
            value = float(match.group(2))
        except ValueError:
            return None
        if not math.isfinite(value) or repr(value) != match.group(2):
            return None
        values[match.group(1)] = value
    return values
