"""Module names: the layer index and the natural order every listing and schedule uses.

Every value is a field over modules (SPEC §2), so these rules belong to the IR: `select(layers=…)`,
schedules (`ramp`, SPEC §7.2), summaries and the writer all read a module's layer the same way.
"""

from __future__ import annotations

import re
from typing import Any

_LAYER = re.compile(r"\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The module's first integer path component (SPEC §7.2), or None when it has none."""
    match = _LAYER.search(f".{name}.")
    return int(match.group(1)) if match else None


def split_module(name: str) -> tuple[int | None, str]:
    """(layer index, the module's kind — its last path component), e.g. (3, "q_proj")."""
    return layer_index(name), name.rsplit(".", 1)[-1]


def layer_order(layer: int | None) -> tuple[int, int]:
    """Sort key of a layer index: numbered layers first, in order, then modules without one."""
    return (0, layer) if layer is not None else (1, 0)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders `layers.2` before `layers.10` (tagged parts: numbers and words never compare)."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name) if tok)


def module_matches(name: str, pattern: str | None, layers: tuple[int, int] | None) -> bool:
    """Whether a module is selected by `select`/`replace`'s pattern (`re.search`) and layer range."""
    if pattern is not None and not re.search(pattern, name):
        return False
    if layers is not None:
        layer = layer_index(name)
        if layer is None or not layers[0] <= layer <= layers[1]:
            return False
    return True
