"""PEFT LoRA config semantics: which rank, alpha and scale each module gets.

Mirrors PEFT 0.21.2 exactly, so dipm_lang computes the same per-module update PEFT does:

- `peft/utils/other.py::get_pattern_key` — a pattern key `k` matches a module name when
  `re.match(rf"(.*\\.)?({k})$", name)`; the first matching key in dict order wins; when none
  matches PEFT returns the name itself and looks *that* up (so the default applies).
- `peft/tuners/lora/model.py::LoraModel._create_and_replace` —
  `r = rank_pattern.get(r_key, config.r)`, `alpha = alpha_pattern.get(alpha_key, config.lora_alpha)`.
- `peft/tuners/lora/layer.py::LoraLayer.update_layer` — `scaling = alpha / sqrt(r)` with
  `use_rslora`, else `alpha / r`; the update is `ΔW = scaling · B @ A`.

The module name is the path in the base model (e.g. `model.layers.0.self_attn.q_proj`), which is
the adapter-file key without the `base_model.model.` prefix and the `.lora_A.weight` suffix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dipm_lang.errors import AdapterError
from dipm_lang.safety.regex import pattern_cost_problem


@dataclass(frozen=True)
class LoraSettings:
    """The parts of an `adapter_config.json` that decide each module's rank and scale."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False

    def rank(self, name: str) -> int:
        """The rank PEFT gives module `name`."""
        return _pattern_value(self.rank_pattern, name, self.r)

    def alpha(self, name: str) -> float:
        """The `lora_alpha` PEFT gives module `name`."""
        return _pattern_value(self.alpha_pattern, name, self.lora_alpha)

    def scale(self, name: str) -> float:
        """The factor PEFT multiplies `B @ A` by for module `name`."""
        return lora_scale(self.alpha(name), self.rank(name), self.use_rslora)


def get_pattern_key(pattern_keys: Iterable[str], name: str) -> str:
    """The first pattern key matching `name`, else `name` itself (as PEFT's `get_pattern_key`)."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    # Same two steps as PEFT: find the key, then `dict.get` with the default.
    return patterns.get(get_pattern_key(patterns.keys(), name), default)


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """`alpha / r`, or `alpha / sqrt(r)` for rank-stabilised LoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def exact_pattern_keys(selected: Iterable[str], all_names: Iterable[str]) -> dict[str, str]:
    """For each name in `selected`, a pattern key PEFT matches against that module only.

    `re.escape(name)` is the plain choice, but PEFT's `(.*\\.)?` prefix also lets it match any
    module whose name ends in `"." + name`; for such names the key is anchored with `^`, which
    fails as soon as the optional prefix has consumed text.
    """
    names = list(all_names)
    keys: dict[str, str] = {}
    for name in selected:
        clash = any(other != name and other.endswith("." + name) for other in names)
        keys[name] = ("^" if clash else "") + re.escape(name)
    return keys


def parse_settings(config: Mapping[str, Any], path: str | Path | None = None) -> LoraSettings:
    """Validate the scale-related fields of a LoRA config and return them typed.

    Raises `AdapterError` (naming `path`) for a missing or ill-typed `r`, `lora_alpha`,
    `rank_pattern` or `alpha_pattern`, or a pattern key that is not a valid regex.
    """
    r = config.get("r", 8)  # PEFT's LoraConfig default
    if not _is_int(r) or r <= 0:
        raise _error(f"'r' must be a positive integer, got {r!r:.80}", path)
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha):
        raise _error(f"'lora_alpha' must be a number, got {alpha!r:.80}", path)
    use_rslora = config.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise _error(f"'use_rslora' must be true or false, got {use_rslora!r:.80}", path)
    fan_in_fan_out = config.get("fan_in_fan_out", False)
    if not isinstance(fan_in_fan_out, bool):
        raise _error(f"'fan_in_fan_out' must be true or false, got {fan_in_fan_out!r:.80}",
                           path)

    rank_pattern = _parse_pattern(config, "rank_pattern", path)
    for key, value in rank_pattern.items():
        if not _is_int(value) or value <= 0:
            raise _error(f"rank_pattern[{key!r:.80}] must be a positive integer, got {value!r:.80}", path)
    alpha_pattern = _parse_pattern(config, "alpha_pattern", path)
    for key, value in alpha_pattern.items():
        if not _is_number(value):
            raise _error(f"alpha_pattern[{key!r:.80}] must be a number, got {value!r:.80}", path)
    return LoraSettings(
        r=int(r),
        lora_alpha=float(alpha),
        use_rslora=use_rslora,
        rank_pattern={k: int(v) for k, v in rank_pattern.items()},
        alpha_pattern={k: float(v) for k, v in alpha_pattern.items()},
        fan_in_fan_out=fan_in_fan_out,
    )


def _parse_pattern(config: Mapping[str, Any], field_name: str, path: str | Path | None) -> dict[str, Any]:
    value = config.get(field_name) or {}
    if not isinstance(value, dict):
        raise _error(f"'{field_name}' must be an object, got {value!r:.80}", path)
    for key in value:
        try:
            re.compile(rf"(.*\.)?({key})$")
        except (re.error, RecursionError, OverflowError) as exc:
            # PEFT would crash with a bare re.error while building the model.
            raise _error(f"{field_name} key {key!r:.200} is not a valid regex: {exc}",
                               path) from None
        problem = pattern_cost_problem(key)
        if problem:
            raise _error(f"{field_name} key {key!r:.200} {problem}", path,
                               hint="PEFT's pattern keys are module names or simple regexes such as "
                                    "'layers\\.\\d+\\.self_attn\\.q_proj'")
    return dict(value)


def _error(message: str, path: str | Path | None, **kwargs: Any) -> AdapterError:
    # With a path the error names the file already; without one, say which file the field is from.
    return AdapterError(message if path is not None else f"adapter_config.json: {message}", path, **kwargs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
