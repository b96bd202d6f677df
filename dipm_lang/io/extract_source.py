"""`extract(tuned, base, rank=…)` as an input source (SPEC §7.8): a LoRA read from two model folders.

A program's inputs are `AdapterSource`s (`io/sources.py`): validated metadata up front, modules read
in batches on demand. A fine-tune becomes one too: `open_extract` checks both model folders from
their headers (`base_model.check_pair`) and picks the modules PEFT's `target_modules` rules select
(`base_modules.select_modules`; a matched module LoRA cannot hold is refused with the reason), so
planning, batching and writing treat an extracted LoRA like a loaded one. `read` computes each
module's approximation of W_tuned − W0 when its batch runs (`io/extract.py`: one module's
difference in memory at a time; randomized SVD seeded per module, `exact` for the full SVD) and
keeps its relative error for the run's report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.backend.randomized import randomized_lowrank, randomized_lowrank_energy
from dipm_lang.errors import AdapterError
from dipm_lang.io.base_model import BaseModel, check_pair, read_pair
from dipm_lang.io.base_modules import ALL_LINEAR, select_modules
from dipm_lang.io.extract import module_seed
from dipm_lang.io.reader import ModuleInfo


@dataclass(frozen=True)
class ExtractSettings:
    """What one `extract(...)` call asks for (its static arguments)."""

    rank: int | None = None
    energy: float | None = None
    max_rank: int | None = None
    exact: bool = False
    seed: int = 0
    target_modules: str = ALL_LINEAR


@dataclass(eq=False)
class ExtractSource:
    """A LoRA extracted from `tuned` against `base`, module by module (an `AdapterSource`)."""

    path: Path
    config: dict[str, Any]
    base_model: str | None
    modules: dict[str, ModuleInfo]
    dtype: torch.dtype
    tuned: BaseModel
    base: BaseModel
    settings: ExtractSettings
    errors: dict[str, float] = field(default_factory=dict)  # module -> relative error, as read
    dora: bool = False

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def label(self) -> str:
        """How provenance names it: the two folders' names, never a local path."""
        return f"extract({self.tuned.path.name}, {self.base.path.name})"

    @property
    def sha256(self) -> str:
        """A hash of both models' configs and tensor layouts (their data is not hashed: gigabytes)."""
        digest = hashlib.sha256()
        for model in (self.tuned, self.base):
            digest.update(layout_fingerprint(model).encode())
        digest.update(json.dumps(self.settings.__dict__, sort_keys=True).encode())
        return digest.hexdigest()

    @property
    def digest(self) -> str:
        """As `AdapterInfo.digest` (a string: nothing to hash in the background)."""
        return self.sha256

    def read(self, names: Sequence[str], *, dtype: torch.dtype, device: Any) -> LowRank:
        """Same-shape modules' approximations stacked (energy=: ranks padded with zero directions)."""
        kind = self.modules[names[0]].kind
        parts = []
        for name in names:
            difference = read_pair(self.tuned, self.base, [name], kinds=kind, dtype=torch.float32)[0]
            approx, error = self._approximate(difference, name)
            self.errors[name] = float(error)
            parts.append(approx)
        rank = max(p.rank for p in parts)
        B = torch.stack([torch.nn.functional.pad(p.B, (0, rank - p.rank)) for p in parts])
        A = torch.stack([torch.nn.functional.pad(p.A, (0, 0, 0, rank - p.rank)) for p in parts])
        return LowRank(B.to(dtype=dtype, device=device), A.to(dtype=dtype, device=device))

    def _approximate(self, W: torch.Tensor, name: str) -> tuple[LowRank, float]:
        s = self.settings
        seed = module_seed(s.seed, name)
        if s.rank is not None:
            approx, error = randomized_lowrank(W, s.rank, seed=seed, exact=s.exact)
            return approx, float(error)
        pieces, _, errors = randomized_lowrank_energy(W, s.energy, seed=seed, max_rank=s.max_rank, exact=s.exact)
        return pieces[0], float(errors)


def layout_fingerprint(model: BaseModel) -> str:
    """The config and every tensor's name, shard, dtype, shape and place: what identifies a model
    folder without reading its data."""
    tensors = {key: [e.shard, e.code, list(e.shape), e.start, e.nbytes] for key, e in sorted(model.tensors.items())}
    text = json.dumps({"config": model.config, "tensors": tensors}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def open_extract(tuned: BaseModel, base: BaseModel, settings: ExtractSettings) -> ExtractSource:
    """Validate a fine-tune against its base and choose the modules to extract (no tensor read)."""
    check_pair(tuned, base)
    targets = settings.target_modules
    selection = select_modules(base, targets)
    if selection.refused:
        name, reason = next(iter(sorted(selection.refused.items())))
        raise AdapterError(f"extract: target_modules {targets!r:.200} match module {name!r}, which LoRA cannot "
                           f"hold ({reason}; {len(selection.refused)} such modules)", base.path,
                           hint="narrow target_modules (a regex matched against the whole module name, or "
                                "\"all-linear\")")
    if not selection.modules:
        raise AdapterError(f"extract: target_modules {targets!r:.200} select no module of the base model", base.path)
    modules = {}
    conv1d = False
    for name, kind in selection.modules.items():
        weight = base.weight(name, kind)
        conv1d = conv1d or weight.conv1d
        m, n = weight.shape
        cap = min(m, n)
        rank = min(settings.rank, cap) if settings.rank is not None else min(settings.max_rank or cap, cap)
        modules[name] = ModuleInfo(name=name, out_features=m, in_features=n, rank=rank, scale=1.0,
                                   dtype=torch.float32, a_key="", b_key="", kind=kind)
    config = {"peft_type": "LORA", "base_model_name_or_path": base.config.get("_name_or_path") or None,
              "task_type": "CAUSAL_LM" if _causal(base) else None, "fan_in_fan_out": conv1d,
              "target_modules": sorted(modules)}
    return ExtractSource(path=tuned.path, config=config, base_model=None, modules=modules, dtype=base.dtype,
                         tuned=tuned, base=base, settings=settings)


def _causal(base: BaseModel) -> bool:
    architectures = base.config.get("architectures") or []
    return any(isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures)
