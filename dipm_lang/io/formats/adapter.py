"""Open a LoRA-family file of an image model and read exact factors of its modules (SPEC §7.10).

`open_lora_file` decides everything from the safetensors header — layout, algorithm, model family,
canonical names, shapes, ranks, dtypes — and reads only the `.alpha` scalars, so every problem with
a file is reported before a factor is read. `FormatAdapter.read` then returns stacked factors
`B [G, m, k]`, `A [G, k, n]` with the scale folded into B (ΔW = B @ A), exactly as SPEC §7.10
writes them for LoRA, LoCon, LoHa and LoKr.

Scales (SPEC §7.10):
- kohya LoRA/LoCon: alpha / rank; a missing alpha is the rank (scale 1). An alpha of 0 is the rank
  too: kohya's and LyCORIS' loaders both read it so (`alpha = lora_dim if alpha is None or alpha == 0`).
- LoHa / LoKr: alpha / dim, dim the inner size of a decomposed factor (hada_w1_b rows; lokr_w1_a's
  columns, else lokr_w2_a's); LoKr with both parts undecomposed: 1 (LyCORIS ignores alpha there).
- diffusers: 1, unless the file gives an alpha: a `<module>.alpha` tensor (diffusers' "network
  alphas"), or its `lora_adapter_metadata` (the saved LoraConfig per component: `r`, `lora_alpha`,
  `rank_pattern`, `alpha_pattern`, `use_rslora`, with PEFT's pattern rules).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.finite import all_finite
import dipm_lang.io.formats.detect as detect
import dipm_lang.io.formats.names as family_names
from dipm_lang.io.formats.factors import lokr_factors, loha_factors, lora_factors
from dipm_lang.io.formats.header import Header, read_header
from dipm_lang.io.peft_config import LoraSettings, parse_settings

LORA_ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' `LORA_ADAPTER_METADATA_KEY`


@dataclass(frozen=True)
class ModuleSpec:
    """One canonical module of an opened file, as its header describes it."""

    m: int  # out_features
    n: int  # in_features; in·kh·kw for a convolution
    rank: int  # inner size of the exact factors read() returns (r1·r2 for LoHa, Kronecker ranks for LoKr)
    scale: float  # folded into B by read()
    dtype: torch.dtype  # stored dtype of the factors
    kind: str  # "linear" | "conv" | "loha" | "lokr"
    kernel: tuple[int, ...] | None  # convolution kernel (kh, kw); None for a Linear layer
    key: str  # the file's name for the (possibly fused) module, e.g. "lora_unet_double_blocks_0_img_attn_qkv"
    alpha: float | None = None  # the stored alpha, None when absent
    rows: tuple[int, int] | None = None  # the rows of a fused module this module is (Flux qkv, linear1)
    swap_halves: bool = False  # stored rows are this module's with the two halves swapped (Flux norm_out)


@dataclass
class FormatAdapter:
    """An opened LoRA file: what it is and its modules by canonical name."""

    path: Path
    format: str  # "kohya" | "loha" | "lokr" | "lycoris" (mixed algorithms) | "diffusers" | "diffusers-old"
    layout: str  # key layout: "kohya" | "diffusers" | "diffusers-old"
    family: str  # "sd1" | "sd2" | "sdxl" | "flux"
    metadata: dict[str, str]
    modules: dict[str, ModuleSpec]
    _sources: dict[str, detect.RawModule] = field(default_factory=dict, repr=False)

    def read(self, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> LowRank:
        """Stacked exact factors of modules of one shape: B `[G, m, k]` (scale folded in), A `[G, k, n]`."""
        specs = []
        for name in names:
            if name not in self.modules:
                raise AdapterError(f"has no module {name!r}", self.path)
            specs.append(self.modules[name])
        if not specs:
            raise ValueError("read() needs at least one module name")
        shapes = {(s.m, s.n, s.rank) for s in specs}
        if len(shapes) != 1:
            raise ValueError(f"read() stacks modules of one shape; got (m, n, rank) {sorted(shapes)}")
        from safetensors import safe_open

        cache: dict[str, torch.Tensor] = {}
        Bs, As = [], []
        with safe_open(str(self.path), framework="pt", device="cpu") as handle:
            for name, spec in zip(names, specs):
                B, A = self._factors(handle, cache, name, spec, dtype, device)
                Bs.append(B)
                As.append(A)
        return LowRank(torch.stack(Bs), torch.stack(As))

    def read_modules(self, names: Sequence[str] | None = None, *, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> dict[str, LowRank]:
        """Each module's exact factors on its own (no stacking, any shapes), scale folded into B;
        all modules when `names` is None. One pass over the file."""
        from safetensors import safe_open

        chosen = list(self.modules) if names is None else list(names)
        for name in chosen:
            if name not in self.modules:
                raise AdapterError(f"has no module {name!r}", self.path)
        cache: dict[str, torch.Tensor] = {}
        with safe_open(str(self.path), framework="pt", device="cpu") as handle:
            return {name: LowRank(*self._factors(handle, cache, name, self.modules[name], dtype, device))
                    for name in chosen}

    def _factors(self, handle, cache, name: str, spec: ModuleSpec, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        source = self._sources[name]
        tensors = {}
        for role, key in source.tensors.items():
            if key not in cache:
                value = handle.get_tensor(key)
                if not all_finite(value):
                    raise AdapterError(f"module {name!r} ({key}) holds NaN or Inf", self.path)
                cache[key] = value
            tensors[role] = cache[key].to(device=device, dtype=dtype)
        if source.algo == "lora":
            B, A = lora_factors(tensors["down"], tensors["up"])
        elif source.algo == "loha":
            B, A = loha_factors(tensors["w1a"], tensors["w1b"], tensors["w2a"], tensors["w2b"])
        else:
            B, A = lokr_factors(tensors)
        if spec.rows is not None:
            B = B[spec.rows[0]:spec.rows[1]]
        if spec.swap_halves:
            half = B.shape[0] // 2
            B = torch.cat([B[half:], B[:half]])
        return (B * spec.scale).contiguous(), A.contiguous()


def open_lora_file(path: str | Path, *, family: str | None = None) -> FormatAdapter:
    """Open a LoRA/LoCon/LoHa/LoKr `.safetensors` file of an image model (kohya or diffusers keys).

    Validates the whole file from its header (and `.alpha` scalars) and raises `AdapterError`
    naming the file for anything dipm cannot read exactly. `family` ("sd1", "sd2", "sdxl",
    "flux") settles a file whose names and metadata fit more than one family."""
    header = read_header(path)
    layout, raw = detect.group_modules(header)
    settings = _diffusers_settings(header.metadata, header.path) if layout != detect.KOHYA else {}
    return assemble(header, layout, raw, settings, family)


def assemble(header: Header, layout: str, raw: list[detect.RawModule], settings: dict[str, LoraSettings],
             family: str | None, *, format: str | None = None) -> FormatAdapter:
    """The opened adapter from a file's grouped modules: family, canonical names, scales, kernels.

    `settings`: per component, the LoraConfig that gives diffusers-layout modules their scales;
    `format`: the input's format when the layout does not say it (a PEFT folder)."""
    chosen, parts = detect.infer_family(raw, header.metadata, header.path, family)
    alphas = _read_alphas(header.path, raw)
    modules: dict[str, ModuleSpec] = {}
    sources: dict[str, detect.RawModule] = {}
    for module in raw:
        scale = _scale(module, alphas.get(module.key), settings, header.path)
        for part in parts[module.key]:
            if part.name in modules:
                raise AdapterError(f"stores module {part.name!r} twice ({modules[part.name].key!r} and "
                                   f"{module.key!r})", header.path)
            m = module.shape.m if part.rows is None else part.rows[1] - part.rows[0]
            modules[part.name] = ModuleSpec(
                m=m, n=module.shape.n, rank=module.shape.rank, scale=scale, dtype=module.dtype,
                kind=_kind(module), kernel=_kernel(module, part.name, chosen, header.path), key=module.key,
                alpha=alphas.get(module.key), rows=part.rows, swap_halves=part.swap_halves)
            sources[part.name] = module
    algos = {module.algo for module in raw}
    if format is not None:
        fmt = format
    elif layout != detect.KOHYA:
        fmt = layout
    elif algos == {"lora"}:
        fmt = "kohya"
    else:
        fmt = algos.pop() if len(algos) == 1 else "lycoris"
    ordered = dict(sorted(modules.items()))
    return FormatAdapter(header.path, fmt, layout, chosen, dict(header.metadata), ordered,
                         {name: sources[name] for name in ordered})


def _kind(module: detect.RawModule) -> str:
    if module.algo == "lora":
        return "conv" if module.shape.kernel is not None else "linear"
    return module.algo


def _kernel(module: detect.RawModule, name: str, family: str, path: Path) -> tuple[int, ...] | None:
    """The file's kernel, or for flattened LyCORIS convolutions the family's (kept for writing)."""
    if module.shape.kernel is not None:
        return module.shape.kernel
    if module.algo == "lora":
        return None
    kernel = family_names.module_kernel(name, family)
    if kernel is not None and module.shape.n % math.prod(kernel) != 0:
        raise AdapterError(f"module {module.key!r} has {module.shape.n} inputs, which a {kernel[0]}×{kernel[1]} "
                           "convolution cannot have", path)
    return kernel


def _read_alphas(path: Path, raw: list[detect.RawModule]) -> dict[str, float]:
    from safetensors import safe_open

    alphas: dict[str, float] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for module in raw:
            if module.alpha_key is None:
                continue
            value = handle.get_tensor(module.alpha_key).reshape(-1)
            alpha = float(value[0].item())
            if not math.isfinite(alpha):
                raise AdapterError(f"module {module.key!r} has alpha {alpha}", path)
            alphas[module.key] = alpha
    return alphas


def _diffusers_settings(metadata: dict[str, str], path: Path) -> dict[str, LoraSettings]:
    """Per component, the LoraConfig diffusers saved in `lora_adapter_metadata` (if any)."""
    text = metadata.get(LORA_ADAPTER_METADATA)
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError:
        raise AdapterError(f"has metadata {LORA_ADAPTER_METADATA!r} that is not JSON", path) from None
    if not isinstance(config, dict):
        raise AdapterError(f"has metadata {LORA_ADAPTER_METADATA!r} that is not a JSON object", path)
    per_component: dict[str, dict] = {}
    for key, value in config.items():
        component, _, field_name = str(key).partition(".")
        per_component.setdefault(component, {})[field_name] = value
    return {component: parse_settings(fields, path) for component, fields in per_component.items()}


def _scale(module: detect.RawModule, alpha: float | None, settings: dict[str, LoraSettings], path: Path) -> float:
    shape = module.shape
    if module.layout == detect.KOHYA:
        if shape.dim is None:  # LoKr with both parts undecomposed
            return 1.0
        return (shape.dim if not alpha else alpha) / shape.dim
    if alpha is not None:  # diffusers "network alpha"
        return alpha / shape.rank
    config = settings.get(module.component)
    if config is None:
        return 1.0
    rank = config.rank(module.path)
    if rank != shape.rank:
        raise AdapterError(f"module {module.key!r} has rank {shape.rank}, but its {LORA_ADAPTER_METADATA} "
                           f"says {rank}", path)
    return config.scale(module.path)
