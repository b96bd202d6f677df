"""Run a compiled program on either backend without writing anything (for the equivalence tests)."""

from __future__ import annotations

from typing import Any

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.ir.node import Program
from dipm_lang.run import RunOptions, execute, plan

Values = dict[str, dict[str, torch.Tensor]]
"""save path -> module -> dense ΔW (float64)."""


def dense_value(value: Any) -> torch.Tensor:
    # factored outputs are factors in the compute dtype: their product in float64 adds no rounding of its own
    return value.B.double() @ value.A.double() if isinstance(value, LowRank) else value.double()


def run(program: Program, *, dense: bool = False, dtype: str = "float32") -> Values:
    """Every save's value per module: factored in `dtype`, or the dense float64 reference."""
    options = RunOptions(device="cpu", dtype=dtype, dense=dense, threads=1)
    result = execute(plan(program, options, check_outputs=False), options)
    return {s.node.attr("path"): {k: dense_value(v) for k, v in s.modules.items()} for s in result.saves}
