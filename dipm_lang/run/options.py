"""How a run is carried out: `RunOptions` and the dtypes `--dtype` / `--out-dtype` accept.

Torch-free on purpose: the CLI parses options before it imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dipm_lang.ir.constants import EPS

if TYPE_CHECKING:
    from dipm_lang.safety.sandbox import Sandbox

DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")


@dataclass
class RunOptions:
    device: str = "auto"          # auto | cpu | cuda[:N]
    dtype: str = "float32"        # compute dtype
    out_dtype: str | None = None  # default: the inputs' dtype
    eps: float = EPS
    force: bool = False
    dense: bool = False           # the float64 dense reference (tests)
    progress: bool | None = None  # None: when stderr is a terminal
    ignore_base_model: bool = False
    sandbox: Sandbox | None = None  # --sandbox: every file opened or written stays inside it
    threads: int | None = None      # CPU worker threads (None: torch's count); never changes results
    base: str | None = None         # --base DIR: the base model's folder (SPEC §7.8), overriding the program's
