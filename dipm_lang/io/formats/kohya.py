"""kohya's key layout (sd-scripts, LyCORIS, A1111, ComfyUI): names ↔ canonical modules.

A kohya key is `<prefix>_<module path with "." → "_">.<tensor>`: `lora_unet_…` for the denoiser,
`lora_te_…` (SD 1.x/2.x), `lora_te1_…`/`lora_te2_…` (SDXL's two CLIP encoders), `lora_te1_…`/`lora_te3_…`
(Flux: CLIP-L, T5-XXL; sd-scripts `networks/lora_flux.py` at 48d368fa). The module path is
diffusers' for SD 1.x/2.x UNets, sgm's (`input_blocks.4.1…`) for kohya's SDXL UNet, and the BFL
names of the original Flux code (`double_blocks_0_img_attn_qkv`) for Flux, where one kohya module
can hold several diffusers modules fused along the output rows (`qkv`, single-block `linear1`).

Turning `_` back into `.` is ambiguous (`to_q`, `proj_in`), so we re-join the multi-word names of
the diffusers/sgm/transformers module trees ("atoms", the same list diffusers' replace chains
encode) and then check the result against the family's grammar (`names.fits`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dipm_lang.io.formats.names as names

KEY = re.compile(r"(?P<module>(?P<prefix>lora_unet|lora_transformer|lora_te[0-9]?)_(?P<body>[A-Za-z0-9_]+))"
                 r"\.(?P<tensor>.+)")
"""A kohya-layout key: module name, its prefix and body, and the tensor suffix."""

# Prefix → component, per family (what each family's kohya files use; `lora_te1_` also appears in
# SD 1.x files converted by diffusers' `convert_state_dict_to_kohya`). `lora_te_` stays SD 1.x/2.x's:
# diffusers' Flux converter takes it too, but then every SD text-encoder LoRA would also fit Flux.
READ_PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder"},
    "sd2": {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder"},
    "sdxl": {"lora_unet": "unet", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"},
    "flux": {"lora_unet": "transformer", "lora_transformer": "transformer", "lora_te1": "text_encoder",
             "lora_te3": "text_encoder_2"},
}
WRITE_PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "lora_unet", "text_encoder": "lora_te"},
    "sd2": {"unet": "lora_unet", "text_encoder": "lora_te"},
    "sdxl": {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
    "flux": {"transformer": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te3"},
}

# Multi-word names in the module trees (diffusers UNet/Flux, sgm UNet, CLIP, T5), longest first.
_ATOMS = sorted((tuple(atom.split("_")) for atom in (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "single_transformer_blocks",
    "to_q", "to_k", "to_v", "to_out", "to_add_out", "add_q_proj", "add_k_proj", "add_v_proj",
    "proj_in", "proj_out", "proj_mlp", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out",
    "time_embedding", "add_embedding", "linear_1", "linear_2", "ff_context", "norm1_context", "norm_out",
    "x_embedder", "context_embedder", "time_text_embed", "timestep_embedder", "guidance_embedder",
    "text_embedder", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "text_projection",
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb", "wi_0", "wi_1")), key=len, reverse=True)


def dotted(body: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` → `down_blocks.0.attentions.0.proj_in` (re-joining atoms)."""
    tokens = body.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for atom in _ATOMS:
            if tuple(tokens[i:i + len(atom)]) == atom:
                out.append("_".join(atom))
                i += len(atom)
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


# --- Flux: BFL names, with fused modules ------------------------------------------------------
# From diffusers' `_convert_kohya_flux_lora_to_diffusers` (lora_conversion_utils.py, 0.42.1).
_FLUX_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_FLUX_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
_FLUX_GLOBAL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
SWAPPED = "transformer.norm_out.linear"
"""BFL's final modulation emits (shift, scale), diffusers' `AdaLayerNormContinuous` (scale, shift):
the two halves of the output rows swap (diffusers' `swap_scale_shift`)."""
_FLUX_BLOCK = re.compile(r"(?P<kind>double_blocks|single_blocks)_(?P<index>\d+)_(?P<rest>.+)")


@dataclass(frozen=True)
class Part:
    """One canonical module inside a kohya module: all rows, or `rows` of a fused one."""

    name: str
    rows: tuple[int, int] | None = None  # [start, stop) of the kohya module's output rows
    swap_halves: bool = False  # the kohya rows are diffusers' rows with the two halves swapped


def _flux_parts(body: str) -> tuple[str, ...] | None:
    """Canonical names (in row order) of a kohya Flux transformer module, or None."""
    if body in _FLUX_GLOBAL:
        return (f"transformer.{_FLUX_GLOBAL[body]}",)
    match = _FLUX_BLOCK.fullmatch(body)
    if not match:
        return None
    table, where = ((_FLUX_DOUBLE, "transformer_blocks") if match["kind"] == "double_blocks"
                    else (_FLUX_SINGLE, "single_transformer_blocks"))
    parts = table.get(match["rest"])
    if parts is None:
        return None
    return tuple(f"transformer.{where}.{match['index']}.{part}" for part in parts)


def fused_row_sizes(count: int, m: int, n: int) -> list[int] | None:
    """Output rows of each part of a fused Flux module with `m` rows and `n` inputs: q, k, v of
    equal size, and for a single block's `linear1` q, k, v of the hidden size `n` then the MLP."""
    if count == 3:
        return [m // 3] * 3 if m % 3 == 0 else None
    if count == 4:
        return [n, n, n, m - 3 * n] if m > 3 * n else None
    return [m]


def to_parts(module: str, family: str, m: int, n: int) -> list[Part] | None:
    """The canonical modules a kohya module name holds in `family`, or None when it fits none.

    `m`, `n`: the module's output rows and input columns (from the file), to split fused modules."""
    match = KEY.fullmatch(module + ".x")
    if not match:
        return None
    component = READ_PREFIXES[family].get(match["prefix"])
    if component is None:
        return None
    body = match["body"]
    if family == "flux" and match["prefix"] == "lora_unet":
        canonical = _flux_parts(body)
        if canonical is None:
            return None
        sizes = fused_row_sizes(len(canonical), m, n)
        if sizes is None:
            return None
        parts, start = [], 0
        for name, size in zip(canonical, sizes):
            rows = (start, start + size) if len(canonical) > 1 else None
            parts.append(Part(name, rows, swap_halves=name == SWAPPED))
            start += size
        return parts
    path = dotted(body)
    if component in ("text_encoder", "text_encoder_2") and path.startswith("encoder.layers."):
        path = "text_model." + path  # transformers ≥ 5 flattens CLIPTextModel: no `text_model.`
    if names.FAMILY_COMPONENTS[family][component] == names.UNET and names.is_sgm_path(path):
        path = names.sgm_to_diffusers(path, family) or ""
    name = f"{component}.{path}"
    return [Part(name)] if names.fits(name, family) else None


# --- writing ------------------------------------------------------------------------------------

def flux_fused_group(name: str) -> tuple[str, int, int] | None:
    """For a canonical Flux transformer module: (kohya module body, part index, part count)."""
    for body_table, kind, where in ((_FLUX_DOUBLE, "double_blocks", "transformer_blocks"),
                                    (_FLUX_SINGLE, "single_blocks", "single_transformer_blocks")):
        match = re.fullmatch(rf"transformer\.{where}\.(\d+)\.(.+)", name)
        if not match:
            continue
        for body, parts in body_table.items():
            if match[2] in parts:
                return f"{kind}_{match[1]}_{body}", parts.index(match[2]), len(parts)
        return None
    for body, path in _FLUX_GLOBAL.items():
        if name == f"transformer.{path}":
            return body, 0, 1
    return None


def fused_part_names(body: str) -> tuple[str, ...]:
    """Canonical names of the parts of a kohya Flux module body, in row order."""
    parts = _flux_parts(body)
    if parts is None:
        raise KeyError(body)
    return parts


def module_name(name: str, family: str, *, sgm: bool | None = None) -> str:
    """kohya module name for a (non-fused) canonical module. UNets use sgm names for SDXL (kohya's
    own SDXL UNet) and diffusers names otherwise, unless `sgm` says which."""
    component, path = names.split_component(name)
    prefix = WRITE_PREFIXES[family][component]
    if names.FAMILY_COMPONENTS[family][component] == names.UNET:
        use_sgm = (family == "sdxl") if sgm is None else sgm
        if use_sgm:
            path = names.diffusers_to_sgm(path, family) or path
    return f"{prefix}_{path.replace('.', '_')}"
