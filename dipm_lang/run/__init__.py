"""Running a compiled program: the steps plan → schedule → execute → write of the pipeline.

`run_program` does them all for a program's saves (all outputs or none); `plan` and `execute`
serve callers that want values rather than files (`evaluate`, the REPL). The names are loaded on
first use (PEP 562): `dipm_lang.run.options` is torch-free, and the CLI reads it before torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "execute": "execution", "RunOptions": "options", "DTYPE_NAMES": "options", "run_program": "pipeline",
    "Plan": "planning", "plan": "planning", "resolve_device": "planning", "OutputSummary": "outputs", "RunSummary": "outputs",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"dipm_lang.run.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'dipm_lang.run' has no attribute {name!r}")
