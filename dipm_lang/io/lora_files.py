"""LoRA files of image models as program inputs (SPEC §7.10), so every operator works on them.

`open_lora_source` opens what a `load` path names — a kohya / LyCORIS / diffusers `.safetensors` file, a
diffusers LoRA folder (`pytorch_lora_weights.safetensors`), or a PEFT folder of one component of an image
model (given `family=`, or written by dipm) — through `io.formats`, which checks everything from the
header, and wraps it as an `AdapterSource`: canonical module names (`unet.down_blocks.0…`), exact
factors with the scale folded into B (LoCon convolutions as `out × in·kh·kw` matrices, LoHa and LoKr as
their exact low-rank factors). `check_families` keeps inputs of different model families apart.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.digest import FileDigest, Stamp, file_digest, stamp_of
from dipm_lang.io.formats import names, open_lora_file
from dipm_lang.io.formats.adapter import FormatAdapter
from dipm_lang.io.formats.peft_folder import open_peft_component, peft_component_metadata
from dipm_lang.io.layout import CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME
from dipm_lang.io.reader import ModuleInfo
from dipm_lang.safety.files import path_problem


@dataclass(frozen=True, eq=False)
class LoraFileSource:
    """An opened LoRA file of an image model: the `AdapterSource` the runtime reads, over the
    `FormatAdapter` that knows the file (`adapter`: format, family, metadata — the writer's template)."""

    path: Path  # what the load named: the file, or the folder holding it
    adapter: FormatAdapter
    modules: dict[str, ModuleInfo]
    dtype: torch.dtype
    digest: FileDigest
    stamp: Stamp
    config: dict[str, Any] = field(default_factory=dict)  # no PEFT config: nothing for a PEFT writer to copy
    base_model: str | None = None

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def format(self) -> str:
        return self.adapter.format

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def label(self) -> str:
        """The file's (or folder's) base name: provenance never records a local path."""
        return self.path.name

    @property
    def sha256(self) -> str:
        return self.digest.value()

    def read(self, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> LowRank:
        """Same-shape modules stacked, scales folded into B (`io.sources.AdapterSource`)."""
        file = self.adapter.path
        try:
            changed = stamp_of(os.stat(file)) != self.stamp
        except OSError as exc:
            raise AdapterError(f"cannot read: {exc.strerror or exc}", file) from None
        if changed:
            raise AdapterError("the file changed since it was opened; run again", file)
        return self.adapter.read(names, dtype=dtype, device=device)


def is_lora_path(path: str | Path) -> bool:
    """Whether a `load` path names an image-model LoRA rather than a PEFT folder of a language model: a
    `.safetensors` file, a diffusers LoRA folder, or a PEFT folder dipm wrote for an image model."""
    given = Path(path).expanduser()
    if given.suffix == ".safetensors" and not given.is_dir():
        return True
    if not given.is_dir():
        return False
    if not (given / CONFIG_NAME).exists():
        return (given / DIFFUSERS_WEIGHTS_NAME).exists()
    return peft_component_metadata(given)[0] is not None


def open_lora_source(path: str | Path, *, family: str | None = None) -> LoraFileSource:
    """Open an image-model LoRA (see the module docstring); `family` settles an ambiguous file and
    makes a PEFT folder read as one component of that family."""
    problem = path_problem(str(path))
    if problem:
        raise AdapterError(problem, repr(str(path))[:200])
    given = Path(path).expanduser().resolve()
    if given.is_dir() and (given / CONFIG_NAME).exists():
        adapter = open_peft_component(given, family=family)
    elif given.is_dir() and (given / DIFFUSERS_WEIGHTS_NAME).exists():
        adapter = open_lora_file(given / DIFFUSERS_WEIGHTS_NAME, family=family)
    else:
        adapter = open_lora_file(given, family=family)
    file = adapter.path
    stamp = stamp_of(os.stat(file))
    modules = {name: ModuleInfo(name=name, out_features=spec.m, in_features=spec.n, rank=spec.rank,
                                scale=spec.scale, dtype=spec.dtype, a_key=spec.key, b_key=spec.key)
               for name, spec in adapter.modules.items()}
    counts: Counter[torch.dtype] = Counter()
    for spec in adapter.modules.values():
        counts[spec.dtype] += spec.rank * (spec.m + spec.n)
    dtype = max(counts, key=lambda d: (counts[d], d.itemsize))
    return LoraFileSource(given, adapter, modules, dtype, file_digest(file, stamp), stamp)


def family_of(source: Any) -> str | None:
    """The model family of an input, None for a PEFT adapter of a language model (or an in-memory one)."""
    return getattr(source, "family", None) if isinstance(source, LoraFileSource) else None


def check_families(sources: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the program's model family or None, the load path of an input that does not fit it or None).

    Image-model LoRAs of two families never combine: their modules are different layers. Nor does an
    image-model LoRA combine with an adapter whose module names are not that family's (a language
    model's PEFT folder); an in-memory input with the family's canonical names does."""
    family = None
    for key, source in sources.items():
        found = family_of(source)
        if found is not None and family is None:
            family = found
        elif found is not None and found != family:
            return family, key
    if family is None:
        return None, None
    for key, source in sources.items():
        if family_of(source) is None and not all(names.fits(name, family) for name in source.modules):
            return family, key
    return family, None


def family_message(sources: Mapping[str, Any], family: str, key: str) -> str:
    """Why the input at `key` cannot join a program of `family` (for `check_families`' answer)."""
    first = next(k for k, s in sources.items() if family_of(s) == family)
    other = sources[key]
    found = family_of(other)
    mine = f"{sources[first].label} is a {names.FAMILY_TITLES[family]} LoRA"
    if found is not None:
        return (f"is a {names.FAMILY_TITLES[found]} LoRA, but {mine}: LoRAs of different model families do not "
                "combine (their modules are different layers)")
    example = next(name for name in sorted(other.modules) if not names.fits(name, family))
    return (f"is not a LoRA of an image model (module {example!r}), but {mine}: their modules are different "
            "layers and do not combine")
