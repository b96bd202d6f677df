"""Write one LoRA file of an image model, in kohya's or diffusers' layout (SPEC §7.10).

What is exact, and what we do:
- Every module's written update equals its `LowRank` value B @ A: `lora_up` = B, `lora_down` = A and
  `.alpha` = rank (scale 1) for kohya; `lora_B` = B, `lora_A` = A for diffusers, which loads a file
  without alphas at scale 1 (diffusers' `get_peft_kwargs`: "alpha == rank per module").
  For float16 kohya output, B is stored times a power of two and alpha divided by it, so small
  scaled updates (kohya's alpha ≪ rank) keep float16's precision; a power of two is exact.
- Convolutions are written as LoCon factors of the module's kernel: `lora_down` `[k, in, kh, kw]`,
  `lora_up` `[out, k, 1, 1]` (the kernel from the template, else the family's module table).
- LoHa/LoKr outputs: a general low-rank result is not a Hadamard or Kronecker product, so they are
  refused; LoHa/LoKr inputs are written as LoRA/LoCon in kohya's layout (`format="kohya"`), which
  holds their exact factors.
- Flux in kohya's layout keeps BFL's fused modules (`img_attn_qkv`, single-block `linear1`):
  q, k, v (and the MLP input) are stacked on the output rows. When they share one A (as read from a
  fused input, or after row-wise operations) B is stacked over that A — the input's own rank; else
  the factors go block-diagonal (ranks add, kohya's `split_qkv` form). A missing part is zero rows.
  diffusers' layout cannot hold fused modules and gets the parts.
- Names: a module the template has keeps the template's name; others get the family's default
  (kohya: diffusers paths for SD 1.x/2.x UNets, sgm paths for SDXL's, BFL for Flux), following the
  template's spelling where it shows one (sgm or diffusers UNet paths, `lora_te_`/`lora_te1_`).
- Deterministic: tensors in sorted key order, metadata sorted (`dipm_lang.io.safetensors_file`).
  The caller chooses the path and makes the write atomic; a diffusers output folder holds the file
  as `DIFFUSERS_WEIGHTS_NAME`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.finite import all_finite
import dipm_lang.io.formats.kohya as kohya
import dipm_lang.io.formats.names as names
from dipm_lang.io.formats.adapter import FormatAdapter, ModuleSpec
from dipm_lang.io.formats.metadata import output_metadata
from dipm_lang.io.layout import DIFFUSERS_WEIGHTS_NAME
from dipm_lang.io.safetensors_file import DTYPE_CODES, SafetensorsWriter, header_bound

OUTPUT_FORMATS = ("kohya", "diffusers", "loha", "lokr")
LYCORIS_OUTPUTS = ("loha", "lokr")
"""LyCORIS layouts a low-rank result is written in exactly, for tools that want them: each module's B·A as
LoHa `(B A) ⊙ (1 1ᵀ)` (`hada_w2_a`, `hada_w2_b` of ones, rank 1) or LoKr `[1] ⊗ (B A)` (`lokr_w1` = [[1]]),
kohya's key names and `.alpha` (scale alpha / rank, as LyCORIS' dim is B A's inner size)."""


def writable_format(input_format: str) -> str:
    """The output format that holds an input format's modules exactly: LoRA/LoCon in kohya's
    layout for kohya, LoHa, LoKr and mixed LyCORIS files; diffusers' layout for diffusers files."""
    return "diffusers" if input_format.startswith("diffusers") else "kohya"


def weights_file(path: str | Path, format: str) -> Path:
    """The file to write for an output `path`: a `.safetensors` path as it is; for diffusers a
    folder path gets `pytorch_lora_weights.safetensors` inside (what `load_lora_weights(folder)`
    reads). kohya's layout is one file, so its path must end in `.safetensors`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path
    if format == "diffusers":
        return path / DIFFUSERS_WEIGHTS_NAME
    raise AdapterError("a kohya LoRA is one .safetensors file; give a path ending in .safetensors "
                       "(or write format='diffusers' to a folder)", path)


def write_lora_file(path: str | Path, modules: Mapping[str, LowRank], *, format: str, family: str,
                    template: FormatAdapter | None = None, metadata_extra: Mapping[str, str] | None = None,
                    dtype: torch.dtype | None = None, scales: Mapping[str, float] | None = None) -> Path:
    """Write `modules` (canonical name → one module's ΔW = B @ A) as one `.safetensors` file.

    `format`: "kohya" or "diffusers" (see `writable_format`); `family`: the model family the
    names belong to; `template`: the opened input whose names, kernels, dtype and metadata the
    output follows; `metadata_extra`: keys to record (recipe, input hashes); `dtype`: the stored
    dtype (default: the template's, else the factors'); `scales` (kohya layout): modules whose factors are
    an input's own with that scale folded into B — stored as B / scale with alpha = rank · scale, so an
    input copied in its own dtype keeps its stored bits. Modules of rank 0 are left out (ΔW = 0)."""
    path = Path(path)
    if format not in OUTPUT_FORMATS:
        raise AdapterError(f"unknown LoRA file format {format!r}; formats: {', '.join(OUTPUT_FORMATS)}", path)
    if family not in names.FAMILIES:
        raise AdapterError(f"unknown model family {family!r}; families: {', '.join(names.FAMILIES)}", path)
    if template is not None and template.family != family:
        raise AdapterError(f"the template {template.path} is a {names.FAMILY_TITLES[template.family]} LoRA, "
                           f"not {names.FAMILY_TITLES[family]}", path)
    specs = template.modules if template is not None else {}
    out_dtype = dtype or _template_dtype(template)
    values: dict[str, LowRank] = {}
    for name in sorted(modules):
        value = _checked(name, modules[name], family, specs.get(name), path)
        if value.rank > 0:
            values[name] = value
    if not values:
        raise AdapterError("has no module with a nonzero rank to write", path)
    if format in ("kohya", *LYCORIS_OUTPUTS):
        entries = _kohya_entries(values, family, template, out_dtype, path, scales or {})
    else:
        entries = _diffusers_entries(values, family, template, out_dtype, path)
    metadata = output_metadata(
        template.metadata if template is not None else None,
        template_format=template.format if template is not None else None, output_format=format, family=family,
        ranks={e.name: e.rank for e in entries}, alphas={e.name: e.alpha for e in entries},
        conv_modules={e.name for e in entries if e.down.dim() == 4 and tuple(e.down.shape[2:]) != (1, 1)},
        extra=dict(metadata_extra or {}))
    tensors = _tensors(entries, format)
    write_tensors(path, tensors, metadata)
    return path


class _Entry:
    """One module as written: its name in the file, factors in stored shape, rank and alpha."""

    def __init__(self, name: str, up: torch.Tensor, down: torch.Tensor, alpha: float):
        self.name, self.up, self.down, self.alpha = name, up, down, alpha
        self.rank = down.shape[0]


def _template_dtype(template: FormatAdapter | None) -> torch.dtype | None:
    if template is None or not template.modules:
        return None
    return Counter(spec.dtype for spec in template.modules.values()).most_common(1)[0][0]


def _checked(name: str, value: LowRank, family: str, spec: ModuleSpec | None, path: Path) -> LowRank:
    if not names.fits(name, family):
        raise AdapterError(f"module {name!r} is not a module of {names.FAMILY_TITLES[family]}", path)
    if value.batch_shape != torch.Size():
        raise ValueError(f"module {name!r}: write one module per LowRank, got batch dims {tuple(value.batch_shape)}")
    if spec is not None and (value.m, value.n) != (spec.m, spec.n):
        raise AdapterError(f"module {name!r} is {value.m}×{value.n}, but the template's is {spec.m}×{spec.n}", path)
    if not (all_finite(value.B) and all_finite(value.A)):
        raise AdapterError(f"module {name!r} holds NaN or Inf", path)
    return value


def _kernel(name: str, value: LowRank, family: str, spec: ModuleSpec | None, path: Path) -> tuple[int, ...] | None:
    kernel = spec.kernel if spec is not None else names.module_kernel(name, family)
    if kernel is not None and value.n % math.prod(kernel) != 0:
        raise AdapterError(f"module {name!r} has {value.n} inputs, which a {kernel} convolution cannot have", path)
    return kernel


def _shaped(name: str, value: LowRank, family: str, spec: ModuleSpec | None,
            path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) in the stored shapes: 4-D for convolutions."""
    B, A = value.B, value.A
    kernel = _kernel(name, value, family, spec, path)
    if kernel is not None:
        k = A.shape[0]
        return B.reshape(B.shape[0], k, 1, 1), A.reshape(k, A.shape[1] // math.prod(kernel), *kernel)
    return B, A


def _balanced(up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    """For float16: up × 2^e with e bringing its largest entry near down's; returns (up, 2^-e)."""
    if (dtype or up.dtype) != torch.float16:
        return up, 1.0
    top_up, top_down = float(up.abs().max()), float(down.abs().max())
    if top_up == 0.0 or top_down == 0.0:
        return up, 1.0
    exponent = max(-24, min(24, round(math.log2(top_down / top_up))))
    return up * 2.0 ** exponent, 2.0 ** -exponent


def _kohya_entries(values: dict[str, LowRank], family: str, template: FormatAdapter | None,
                   dtype: torch.dtype | None, path: Path, scales: Mapping[str, float]) -> list[_Entry]:
    specs = template.modules if template is not None else {}
    style = _naming_style(template, family)
    entries: list[_Entry] = []
    fused: dict[str, dict[int, str]] = {}
    for name, value in values.items():
        group = kohya.flux_fused_group(name) if family == "flux" and style["bfl"] else None
        if group is not None:
            body, index, _ = group
            fused.setdefault(body, {})[index] = name
            continue
        spec = specs.get(name)
        if spec is not None and spec.rows is None and spec.key.startswith("lora_"):
            module = spec.key
        else:
            module = _default_name(name, family, style)
        up, down = _shaped(name, value, family, spec, path)
        entries.append(_kohya_entry(module, up, down, dtype, scales.get(name)))
    for body, present in fused.items():
        kept = {scales.get(name) for name in present.values()}
        entries.append(_fused_entry(body, present, values, specs, family, dtype, path,
                                    kept.pop() if len(kept) == 1 else None))
    return entries


def _kohya_entry(module: str, up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype | None,
                 kept: float | None = None) -> _Entry:
    if kept is not None and kept != 0.0:  # an input's own factors: its scale back out of B, as its alpha
        up = up / kept
        if dtype is not None:
            up, down = up.to(dtype), down.to(dtype)
        return _Entry(module, up, down, down.shape[0] * kept)
    up, scale = _balanced(up, down, dtype)  # before the cast: float16 would flush small entries
    if dtype is not None:
        up, down = up.to(dtype), down.to(dtype)
    return _Entry(module, up, down, down.shape[0] * scale)


def _naming_style(template: FormatAdapter | None, family: str) -> dict:
    """How the template spells kohya names: sgm or diffusers UNet paths, BFL or diffusers Flux
    names, and its prefix per component."""
    style = {"sgm": family == "sdxl", "bfl": True, "prefixes": dict(kohya.WRITE_PREFIXES[family])}
    if template is None or template.layout != "kohya":
        return style
    for name, spec in template.modules.items():
        match = kohya.KEY.fullmatch(spec.key + ".x")
        component = names.component_of(name)
        style["prefixes"][component] = match["prefix"] if component != "transformer" else "lora_unet"
        if component == "unet":
            style["sgm"] = names.is_sgm_path(kohya.dotted(match["body"]))
        if component == "transformer":
            style["bfl"] = match["prefix"] == "lora_unet"
            if not style["bfl"]:
                style["prefixes"]["transformer"] = "lora_transformer"
    return style


def _default_name(name: str, family: str, style: dict) -> str:
    module = kohya.module_name(name, family, sgm=style["sgm"])
    component = names.component_of(name)
    default = kohya.WRITE_PREFIXES[family][component]
    return style["prefixes"].get(component, default) + module[len(default):]


def _fused_entry(body: str, present: dict[int, str], values: dict[str, LowRank], specs: Mapping[str, ModuleSpec],
                 family: str, dtype: torch.dtype | None, path: Path, kept: float | None = None) -> _Entry:
    parts = kohya.fused_part_names(body)
    given = [values.get(parts[i]) if i in present else None for i in range(len(parts))]
    n = next(v.n for v in given if v is not None)
    sizes = []
    for i, part in enumerate(parts):
        if given[i] is not None:
            sizes.append(given[i].m)
        elif part in specs:
            sizes.append(specs[part].m)
        elif len(parts) == 3:
            sizes.append(next(v.m for v in given if v is not None))  # q, k, v are equally wide
        else:
            # single block linear1: q, k, v of the hidden size n, then the MLP (diffusers' Flux: mlp_ratio 4)
            sizes.append(n if i < 3 else 4 * n)
    if any(v is not None and v.n != n for v in given):
        raise AdapterError(f"the parts of fused module {body!r} have different input sizes", path)
    reference = next(v for v in given if v is not None)
    shared = all(v is not None and v.A.shape == reference.A.shape and torch.equal(v.A, reference.A) for v in given)
    if shared:
        B = torch.cat([v.B for v in given])
        A = reference.A
    else:
        ranks = [v.rank if v is not None else 0 for v in given]
        B = reference.B.new_zeros(sum(sizes), sum(ranks))
        row = col = 0
        for v, size, rank in zip(given, sizes, ranks):
            if v is not None:
                B[row:row + size, col:col + rank] = v.B
            row, col = row + size, col + rank
        A = torch.cat([v.A for v in given if v is not None])
    if kohya.SWAPPED in parts:
        half = B.shape[0] // 2
        B = torch.cat([B[half:], B[:half]])
    prefix = kohya.WRITE_PREFIXES[family]["transformer"]
    return _kohya_entry(f"{prefix}_{body}", B, A, dtype, kept if shared else None)


def _diffusers_entries(values: dict[str, LowRank], family: str, template: FormatAdapter | None,
                       dtype: torch.dtype | None, path: Path) -> list[_Entry]:
    """PEFT-style diffusers keys under canonical names — except that a text-encoder module a diffusers
    template spells as transformers ≥ 5 names CLIP (`text_encoder.encoder.layers…`, no `text_model.`)
    keeps that spelling, so a copy of such a file has its keys."""
    specs = template.modules if template is not None else {}
    entries = []
    for name, value in values.items():
        spec = specs.get(name)
        up, down = _shaped(name, value, family, spec, path)
        if dtype is not None:
            up, down = up.to(dtype), down.to(dtype)
        flat = name.replace(".text_model.encoder.", ".encoder.", 1)
        written = flat if spec is not None and spec.key == flat and template.layout.startswith("diffusers") else name
        entries.append(_Entry(written, up, down, float(down.shape[0])))
    return entries


def _tensors(entries: list[_Entry], format: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for entry in entries:
        if format in LYCORIS_OUTPUTS:
            up, down = entry.up.reshape(entry.up.shape[0], -1), entry.down.reshape(entry.rank, -1)  # 2-D, as LyCORIS
            one = torch.ones((), dtype=up.dtype)
            if format == "loha":
                tensors[f"{entry.name}.hada_w1_a"], tensors[f"{entry.name}.hada_w1_b"] = up, down
                tensors[f"{entry.name}.hada_w2_a"] = one.expand(up.shape[0], 1).contiguous()
                tensors[f"{entry.name}.hada_w2_b"] = one.expand(1, down.shape[1]).contiguous()
            else:
                tensors[f"{entry.name}.lokr_w1"] = one.reshape(1, 1).clone()
                tensors[f"{entry.name}.lokr_w2_a"], tensors[f"{entry.name}.lokr_w2_b"] = up, down
            tensors[f"{entry.name}.alpha"] = torch.tensor(entry.alpha, dtype=torch.float32)
        elif format == "kohya":
            tensors[f"{entry.name}.lora_up.weight"] = entry.up
            tensors[f"{entry.name}.lora_down.weight"] = entry.down
            tensors[f"{entry.name}.alpha"] = torch.tensor(entry.alpha, dtype=torch.float32)
        else:
            tensors[f"{entry.name}.lora_B.weight"] = entry.up
            tensors[f"{entry.name}.lora_A.weight"] = entry.down
    return tensors


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """One safetensors file, tensors in sorted key order (deterministic output)."""
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_CODES:
            raise AdapterError(f"cannot store {name!r} as {tensor.dtype}", path)
    ordered = sorted(tensors)
    writer = SafetensorsWriter(path, header_bound([(k, tensors[k].dtype, tensors[k].dim()) for k in ordered],
                                                  metadata))
    try:
        for key in ordered:
            writer.add(key, tensors[key])
        writer.finish(metadata)
    except BaseException:
        writer.close()
        raise
