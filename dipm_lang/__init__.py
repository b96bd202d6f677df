"""dipm_lang: a small language and compiler for composing LoRA adapters (DiPM).

The Python API (`compile`, `evaluate`, `sweep`, `add_to_peft_model`, `AdapterValue`, `CompiledProgram`)
lives in `dipm_lang.api`; it is imported on first use, so `import dipm_lang` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dipm_lang.version import __version__

__all__ = ["AdapterValue", "CompiledProgram", "__version__", "add_to_peft_model", "compile", "evaluate", "sweep"]

_API = {"AdapterValue", "CompiledProgram", "add_to_peft_model", "compile", "evaluate", "sweep"}

if TYPE_CHECKING:
    from dipm_lang.api import AdapterValue, CompiledProgram, add_to_peft_model, compile, evaluate, sweep  # noqa: F401


def __getattr__(name: str) -> Any:  # PEP 562: load the API (and torch) only when it is used
    if name in _API:
        from dipm_lang import api

        return getattr(api, name)
    raise AttributeError(f"module 'dipm_lang' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
