"""Outputs in the LoRA formats of image models (SPEC §7.10): kohya's file, diffusers' file or folder, a
PEFT folder of one component — staged like every output, committed with the others (`io/writer.py`).

`LoraFileStage` has `AdapterStage`'s interface (`add` per batch, `finish` → `StagedOutput`, `discard`,
`ranks`) so `run_program` writes all outputs or none whatever their format. It keeps the modules until
`finish`: the file layouts interleave modules (kohya's fused Flux projections hold several modules in one
tensor), and image-model LoRAs are small next to the language-model adapters the streaming writer is for.

What is written, per format:
- kohya / diffusers / loha / lokr: `io.formats.write_lora_file` — the template input's names, kernels (LoCon) and
  fusing, `.alpha` per module (kohya), its `ss_*` / `modelspec.*` metadata where it still holds, and the
  provenance (recipe, input hashes; no local paths). A module copied from an input (`save(load(x))`)
  into a narrower dtype than it was computed in keeps the input's scale as its alpha, so its stored
  factors are the input's own bits.
- peft: `adapter_config.json` (scale 1 per module, `rank_pattern` where ranks differ), the factors under
  `base_model.model.<path inside the component>` (convolutions as PEFT's 4-D `Conv2d` factors), a model
  card, and `dipm_family` / `dipm_component` metadata so that dipm reads the folder back as the same
  canonical modules. One component per folder (PEFT adapts one model); text encoders are refused:
  transformers ≥ 5 renamed CLIPTextModel's modules, so no one spelling loads in every version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError, ExecutionError, Span
from dipm_lang.io.atomic import check_file_output
from dipm_lang.io.card import model_card
from dipm_lang.io.formats import names
from dipm_lang.io.formats.adapter import FormatAdapter
from dipm_lang.io.formats.peft_folder import COMPONENT_KEY, FAMILY_KEY
from dipm_lang.io.formats.write import write_lora_file, write_tensors
from dipm_lang.io.layout import CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME, SAFETENSORS_NAME
from dipm_lang.io.reader import KEY_PREFIX
from dipm_lang.io.writer import (OUTPUT_DTYPES, StagedOutput, apply_umask, build_config, commit_staged, discard_staged,
                                 faithful,
                                 prepare_output, recover_stale, staging_folder, write_text)
from dipm_lang.ir.modules import natural_key

RECIPE_KEY = "dipm_recipe"
"""Metadata key of the recipe text in a LoRA file (a PEFT folder has its model card for that)."""


class LoraFileStage:
    """One LoRA-file output being collected, then written into a staging folder by `finish`."""

    def __init__(self, destination: str | Path, *, format: str, family: str, template: FormatAdapter | None,
                 dtype: torch.dtype, compute_dtype: torch.dtype, force: bool, inputs: Sequence[str | Path] = (),
                 file: bool, span: Span | None = None):
        self.destination = Path(destination).expanduser().resolve()
        self.format, self.family, self.template, self.file = format, family, template, file
        self.dtype, self.compute_dtype, self.force = dtype, compute_dtype, force
        self.span = span  # the save's position, for what only the computed result shows (PEFT's one component)
        if dtype not in OUTPUT_DTYPES:
            raise AdapterError(f"unsupported output dtype {dtype}; use float16, bfloat16 or float32", self.destination)
        recover_stale(self.destination)
        check_output(self.destination, file=file, inputs=inputs, force=force)
        self.values: dict[str, LowRank] = {}
        self.input_scales: dict[str, float] = {}  # module -> the input's scale, for factors that are an input's own
        self.ranks: dict[str, tuple[int, str]] = {}
        self.kept: dict[str, int] = {}  # `AdapterStage`'s: ranks before padding (a LoRA file is never padded)
        self.target: str | None = None  # `AdapterStage`'s serving target: none for a LoRA file
        self.zeros: dict[str, tuple[int, int]] = {}
        self.rebalanced: list[str] = []
        self._staged: StagedOutput | None = None

    def add(self, modules: Mapping[str, LowRank], *, verbatim: bool = False) -> None:
        """Keep `modules` (scale folded into B) for `finish`; zero modules are left out (and listed).
        `verbatim`: the factors are the template input's own (`save(load(x))`)."""
        for name in sorted(modules, key=natural_key):
            if name in self.values or name in self.zeros:
                raise AdapterError(f"module {name!r} written twice", self.destination)
            value = modules[name]
            if not verbatim:
                value, rebalanced = faithful(value)
                if rebalanced:
                    self.rebalanced.append(name)
            else:
                value = LowRank(value.B.detach().cpu(), value.A.detach().cpu())
            if value.rank == 0:
                self.zeros[name] = (value.m, value.n)
                continue
            self.values[name] = value
            if verbatim and self.template is not None and name in self.template.modules and self._narrowing():
                self.input_scales[name] = self.template.modules[name].scale

    def _narrowing(self) -> bool:
        return self.dtype.itemsize < self.compute_dtype.itemsize

    def finish(self, *, metadata: Mapping[str, str], recipe: str,
               errors: Mapping[str, float] | None = None) -> StagedOutput:
        """Write the output into a hidden staging folder; nothing is visible until `commit_staged`.
        `errors` (energy=: each module's relative error dropped) go into a PEFT output's model card."""
        warnings = []
        values = dict(self.values)
        if not values:
            if not self.zeros:
                raise AdapterError("the result has no modules; there is nothing to save", self.destination)
            values = {name: LowRank(torch.zeros(m, 1), torch.zeros(1, n)) for name, (m, n) in self.zeros.items()}
            warnings.append("the result is zero everywhere: written as rank-1 zero factors (an adapter that "
                            "changes nothing)")
        self.ranks = {name: (values[name].rank, "linear") for name in sorted(values, key=natural_key)}
        temp, created = staging_folder(self.destination)
        self._staged = StagedOutput(destination=self.destination, temp_dir=temp, force=self.force,
                                    created_dirs=created, modules=tuple(self.ranks),
                                    zero_modules=tuple(sorted(self.zeros, key=natural_key)),
                                    warnings=tuple(warnings), file=self.destination.name if self.file else None)
        try:
            extra = dict(metadata)
            if self.format == "peft":
                self._write_peft(temp, values, extra, recipe, errors or {})
            else:
                extra[RECIPE_KEY] = recipe
                target = temp / (self.destination.name if self.file else DIFFUSERS_WEIGHTS_NAME)
                write_lora_file(target, values, format=self.format, family=self.family, template=self.template,
                                metadata_extra=extra, dtype=self.dtype, scales=self.input_scales)
            apply_umask(temp)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, (AdapterError, ExecutionError)) or not isinstance(exc, Exception):
                raise
            raise AdapterError(f"failed to write the output: {exc}", self.destination) from exc
        return self._staged

    def discard(self) -> None:
        if self._staged is not None:
            discard_staged([self._staged])
            self._staged = None

    def _write_peft(self, folder: Path, values: Mapping[str, LowRank], metadata: dict[str, str], recipe: str,
                    errors: Mapping[str, float]) -> None:
        components = sorted({names.component_of(name) for name in values})
        if len(components) != 1:
            raise ExecutionError(f"a PEFT adapter holds one model's modules, but the result has modules of "
                                 f"{' and '.join(components)}", self.span,
                                 hint="save each with component(x, \"unet\") (or \"transformer\") to its own "
                                      "folder, or write format=\"diffusers\" or \"kohya\"")
        component = components[0]
        if component not in names.MODEL_COMPONENTS:
            raise ExecutionError(f"format=\"peft\" writes UNet or transformer adapters; a PEFT adapter of "
                                 f"{component} would need module paths that differ between transformers versions",
                                 self.span, hint="write format=\"diffusers\" or \"kohya\" (diffusers' loader reads "
                                                 "either spelling)")
        tensors: dict[str, torch.Tensor] = {}
        for name, value in values.items():
            path = names.split_component(name)[1]
            kernel = self._kernel(name, value)
            B, A = value.B.to(self.dtype), value.A.to(self.dtype)
            if kernel is not None:
                B, A = B.reshape(B.shape[0], -1, 1, 1), A.reshape(A.shape[0], -1, *kernel)
            tensors[f"{KEY_PREFIX}{path}.lora_A.weight"] = A.contiguous()
            tensors[f"{KEY_PREFIX}{path}.lora_B.weight"] = B.contiguous()
        metadata = {"format": "pt", **metadata, FAMILY_KEY: self.family, COMPONENT_KEY: component}
        write_tensors(folder / SAFETENSORS_NAME, tensors, dict(sorted(metadata.items())))
        ranks = {names.split_component(name)[1]: rank for name, rank in self.ranks.items()}
        config = build_config(ranks, None)
        write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        card = model_card(self.destination.name, recipe, None, metadata, errors=errors,
                          ranks={name: rank for name, (rank, _) in self.ranks.items()})
        write_text(folder / "README.md", card)

    def _kernel(self, name: str, value: LowRank) -> tuple[int, ...] | None:
        spec = self.template.modules.get(name) if self.template is not None else None
        kernel = spec.kernel if spec is not None else names.module_kernel(name, self.family)
        if kernel is not None and value.n % math.prod(kernel):
            raise AdapterError(f"module {name!r} has {value.n} inputs, which a {kernel} convolution cannot have",
                               self.destination)
        return kernel


def check_output(destination: Path, *, file: bool, inputs: Sequence[str | Path], force: bool) -> None:
    """Before any work: `destination` may be written (a file, or an output folder), never over an input."""
    if file:
        check_file_output(destination, inputs=inputs, force=force)
    else:
        prepare_output(destination, inputs=inputs, force=force)



def write_lora_output(destination: str | Path, modules: Mapping[str, LowRank], *, format: str, family: str,
                      template: FormatAdapter | None, file: bool, dtype: torch.dtype, metadata: Mapping[str, str],
                      recipe: str, force: bool, inputs: Sequence[str | Path] = (),
                      errors: Mapping[str, float] | None = None) -> Path:
    """Write one image-model LoRA output atomically (stage + commit; the Python API's `value.save`)."""
    stage = LoraFileStage(destination, format=format, family=family, template=template, dtype=dtype,
                          compute_dtype=dtype, force=force, inputs=inputs, file=file)
    try:
        stage.add(modules)
        staged = stage.finish(metadata=metadata, recipe=recipe, errors=errors)
    except BaseException:
        stage.discard()
        raise
    return commit_staged([staged])[0]
