"""Run a compiled program on either backend without writing anything (for the equivalence tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dipm_lang.backend.dora import DoraForm
from dipm_lang.backend.forms import DoraOutput
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.ir.node import Program
from dipm_lang.run import RunOptions, execute, plan

Values = dict[str, dict[str, torch.Tensor]]
"""save path -> module -> dense ΔW (float64)."""


def dense_value(value: Any, W0: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A save's (or bake's) value as the dense update it writes, float64. Factored outputs are factors in the
    compute dtype: their product in float64 adds no rounding of its own. With base weights (SPEC §7.8), a
    value in DoRA's form is diag(c)·W0 + K and a DoRA output means m ⊙ normalize_rows(W0 + L) − W0
    (`W0()` reads the module's base weight in float64)."""
    if isinstance(value, DoraOutput):
        weight = W0() + value.lora.B.double() @ value.lora.A.double()
        norms = torch.linalg.vector_norm(weight, dim=-1, keepdim=True)
        return value.magnitude.double()[:, None] * weight / norms - W0()
    if isinstance(value, DoraForm):
        return value.to(torch.float64).dense(W0())
    return value.B.double() @ value.A.double() if isinstance(value, LowRank) else value.double()


def run(program: Program, *, dense: bool = False, dtype: str = "float32") -> Values:
    """Every save's value per module: factored in `dtype`, or the dense float64 reference."""
    options = RunOptions(device="cpu", dtype=dtype, dense=dense, threads=1)
    the_plan = plan(program, options, check_outputs=False)
    result = execute(the_plan, options)

    def base(name: str) -> Callable[[], torch.Tensor]:
        return lambda: the_plan.base.read_weights([name], kinds=the_plan.kind(name), dtype=torch.float64)[0]

    return {s.node.attr("path"): {k: dense_value(v, base(k)) for k, v in s.modules.items()} for s in result.saves}
