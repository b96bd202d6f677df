"""Extract (SPEC §7.8): a LoRA update from a fine-tuned model and its base, one module at a time.

`extract` reads W_tuned − W0 per module (validated by `check_pair` first, from headers alone)
and hands it to a low-rank approximation it is given — the randomized SVD lives elsewhere
(`randomized_lowrank(W, rank, seed=…, tolerance=0.01, exact=False)` and its energy variant), so
this module only binds it to a rank and a per-module seed (`rank_approximation`) and streams.
Which modules to extract is `base_modules.select_modules`' decision (PEFT's target rules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.io.base_model import BaseModel, ModuleKind, check_pair, read_pair

Approximate = Callable[[Tensor, str], "tuple[LowRank, Tensor | float]"]
"""(W [m, n], module name) → (low-rank approximation, relative Frobenius error)."""


def module_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one module, from the run's seed and the module's name only, so a module's
    result does not depend on which other modules are extracted or in what order."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rank_approximation(lowrank_fn: Callable[..., "tuple[LowRank, Tensor | float]"], rank: int, *, seed: int = 0,
                       tolerance: float = 0.01, exact: bool = False) -> Approximate:
    """Bind `lowrank_fn(W, rank, seed=…, tolerance=…, exact=…)` to one rank, seeded per module."""
    def approximate(W: Tensor, name: str) -> tuple[LowRank, Tensor | float]:
        return lowrank_fn(W, rank, seed=module_seed(seed, name), tolerance=tolerance, exact=exact)

    return approximate


@dataclass(frozen=True)
class Extracted:
    """One extracted module: its low-rank update in the LoRA layout and the error it dropped."""

    name: str
    kind: ModuleKind
    delta: LowRank
    error: float  # relative Frobenius error of the approximation
    conv1d: bool  # a Conv1D layer: the saved adapter needs fan_in_fan_out=True


def extract(tuned: BaseModel, base: BaseModel, modules: Mapping[str, ModuleKind], approximate: Approximate, *,
            dtype: torch.dtype = torch.float32) -> Iterator[Extracted]:
    """Yield, module by module, a low-rank approximation of W_tuned − W0 (memory: one module).

    `modules` maps names to kinds (`select_modules(...).modules`). AdapterError, before any
    tensor is read, when the two models do not hold the same tensors, shapes and dtypes.
    """
    check_pair(tuned, base)
    for name, kind in modules.items():
        difference = read_pair(tuned, base, [name], kinds=kind, dtype=dtype)[0]
        approx, error = approximate(difference, name)
        yield Extracted(name, kind, approx, float(error), base.weight(name, kind).conv1d)
