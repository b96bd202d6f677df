"""Canonical module names per model family (SPEC §7.10).

A module's canonical name is its path in diffusers' model classes with the pipeline component in
front: `unet.down_blocks.0.attentions.0.proj_in`,
`text_encoder.text_model.encoder.layers.0.self_attn.q_proj`, `transformer.single_transformer_blocks.0.attn.to_q`.
Every file layout maps onto these names, so the same layer read from two formats is the same module.

The names and the UNet block structure are taken from diffusers 0.42.1 (the installed package):
`diffusers/loaders/lora_conversion_utils.py` (`_maybe_map_sgm_blocks_to_diffusers`,
`_convert_unet_lora_key`, `_convert_text_encoder_lora_key`, `_convert_kohya_flux_lora_to_diffusers`)
and the module trees of `UNet2DConditionModel` (SD 1.x/2.x and SDXL configs),
`FluxTransformer2DModel`, `CLIPTextModel(WithProjection)` and `T5EncoderModel`. diffusers applies
chains of string replacements; we state the same facts as tables and grammars so that each name maps
both ways and a name that fits no table is an error instead of a silently wrong module.

A name *fits* a family when it is a module of that family's models: the UNet grammar is checked
against the family's block structure (which blocks have attentions, samplers, how many layers), so
`unet.up_blocks.0.attentions.0.proj_in` fits SDXL but not SD 1.x. Channel widths and block counts of
the transformer-style models are free, so tiny test models fit too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dipm_lang.ir.blocks import FAMILY_TITLES

FAMILIES = tuple(FAMILY_TITLES)
"""Model families whose LoRA files dipm reads and writes (`FAMILY_TITLES` lives in `ir.blocks`, which
block-weight schedules read)."""

CLIP, T5, UNET, DIT = "clip", "t5", "unet", "flux-transformer"

FAMILY_COMPONENTS: dict[str, dict[str, str]] = {
    "sd1": {"unet": UNET, "text_encoder": CLIP},
    "sd2": {"unet": UNET, "text_encoder": CLIP},
    "sdxl": {"unet": UNET, "text_encoder": CLIP, "text_encoder_2": CLIP},
    "flux": {"transformer": DIT, "text_encoder": CLIP, "text_encoder_2": T5},
}
"""Pipeline components per family and the kind of model each one is."""

MODEL_COMPONENTS = ("unet", "transformer")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


# --- UNet block structure -------------------------------------------------------------------

@dataclass(frozen=True)
class UNetLayout:
    """The block structure of a UNet2DConditionModel, as far as module names depend on it."""

    down: tuple[tuple[bool, bool], ...]  # per down block: (has attentions, has a downsampler)
    up: tuple[tuple[bool, bool], ...]  # per up block: (has attentions, has an upsampler)
    layers: int  # resnets per down block; up blocks have one more
    max_depth: int  # transformer blocks per attention (SDXL goes to 10)
    conv_proj: bool  # proj_in/proj_out are 1×1 convolutions (SD 1.x) rather than Linear layers
    add_embedding: bool  # SDXL's added-conditioning MLP (`add_embedding`, sgm `label_emb`)


_SD_DOWN = ((True, True), (True, True), (True, True), (False, False))
_SD_UP = ((False, True), (True, True), (True, True), (True, False))
UNET_LAYOUTS = {
    "sd1": UNetLayout(_SD_DOWN, _SD_UP, layers=2, max_depth=1, conv_proj=True, add_embedding=False),
    "sd2": UNetLayout(_SD_DOWN, _SD_UP, layers=2, max_depth=1, conv_proj=False, add_embedding=False),
    "sdxl": UNetLayout(((False, True), (True, True), (True, False)), ((True, True), (True, True), (False, False)),
                       layers=2, max_depth=10, conv_proj=False, add_embedding=True),
}

_UNET_PART = re.compile(
    r"(?:down_blocks\.(?P<down>\d+)|up_blocks\.(?P<up>\d+)|mid_block)\.(?P<part>resnets|attentions)\.(?P<index>\d+)"
    r"\.(?P<inner>.+)")
_UNET_SAMPLER = re.compile(r"(?:down_blocks\.(?P<down>\d+)\.downsamplers|up_blocks\.(?P<up>\d+)\.upsamplers)\.0\.conv")
_RESNET_INNER = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
_ATTENTION_INNER = re.compile(
    r"proj_in|proj_out"
    r"|transformer_blocks\.(?P<depth>\d+)\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2))")
_UNET_TOP = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")
_ADD_EMBEDDING = ("add_embedding.linear_1", "add_embedding.linear_2")


def unet_fits(path: str, layout: UNetLayout) -> bool:
    """True when `path` (inside the UNet) names a Linear/Conv2d module of a UNet with `layout`."""
    if path in _UNET_TOP:
        return True
    if path in _ADD_EMBEDDING:
        return layout.add_embedding
    sampler = _UNET_SAMPLER.fullmatch(path)
    if sampler:
        if sampler["down"] is not None:
            block = int(sampler["down"])
            return block < len(layout.down) and layout.down[block][1]
        block = int(sampler["up"])
        return block < len(layout.up) and layout.up[block][1]
    part = _UNET_PART.fullmatch(path)
    if not part:
        return False
    index = int(part["index"])
    if part["down"] is not None:
        block = int(part["down"])
        if block >= len(layout.down) or index >= layout.layers:
            return False
        has_attention = layout.down[block][0]
    elif part["up"] is not None:
        block = int(part["up"])
        if block >= len(layout.up) or index > layout.layers:
            return False
        has_attention = layout.up[block][0]
    else:  # mid_block: resnets 0 and 1 around attention 0
        if index >= (2 if part["part"] == "resnets" else 1):
            return False
        has_attention = True
    if part["part"] == "resnets":
        return part["inner"] in _RESNET_INNER
    inner = _ATTENTION_INNER.fullmatch(part["inner"])
    if not has_attention or not inner:
        return False
    return inner["depth"] is None or int(inner["depth"]) < layout.max_depth


def unet_kernel(path: str, layout: UNetLayout) -> tuple[int, int] | None:
    """Kernel size of a UNet convolution, None for a Linear layer (diffusers' module types)."""
    last = path.rsplit(".", 1)[-1]
    if path in ("conv_in", "conv_out") or last in ("conv1", "conv2") or path.endswith("samplers.0.conv"):
        return (3, 3)
    if last == "conv_shortcut":
        return (1, 1)
    if last in ("proj_in", "proj_out") and layout.conv_proj:
        return (1, 1)
    return None


# --- sgm (original Stability / kohya SDXL) UNet names -----------------------------------------

_SGM_RESNET = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
               "skip_connection": "conv_shortcut"}
_SGM_WHOLE = {"input_blocks.0.0": "conv_in", "out.2": "conv_out", "time_embed.0": "time_embedding.linear_1",
              "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
              "label_emb.0.2": "add_embedding.linear_2"}


def _sgm_blocks(layout: UNetLayout) -> dict[str, str]:
    """sgm block prefix → diffusers prefix, e.g. `input_blocks.4.1` → `down_blocks.1.attentions.0`.

    The same numbering `_maybe_map_sgm_blocks_to_diffusers` derives from `layers_per_block`:
    input block 0 is conv_in, then each down block's layers, then its downsampler; the middle block
    is resnet, attention, resnet; each up block has layers + 1 entries, the last one holding the
    upsampler after the resnet (and attention)."""
    table: dict[str, str] = {}
    index = 0
    for block, (attention, sampler) in enumerate(layout.down):
        for layer in range(layout.layers):
            index += 1
            table[f"input_blocks.{index}.0"] = f"down_blocks.{block}.resnets.{layer}"
            if attention:
                table[f"input_blocks.{index}.1"] = f"down_blocks.{block}.attentions.{layer}"
        if sampler:
            index += 1
            table[f"input_blocks.{index}.0.op"] = f"down_blocks.{block}.downsamplers.0.conv"
    table["middle_block.0"] = "mid_block.resnets.0"
    table["middle_block.1"] = "mid_block.attentions.0"
    table["middle_block.2"] = "mid_block.resnets.1"
    index = 0
    for block, (attention, sampler) in enumerate(layout.up):
        for layer in range(layout.layers + 1):
            table[f"output_blocks.{index}.0"] = f"up_blocks.{block}.resnets.{layer}"
            if attention:
                table[f"output_blocks.{index}.1"] = f"up_blocks.{block}.attentions.{layer}"
            if sampler and layer == layout.layers:
                table[f"output_blocks.{index}.{2 if attention else 1}.conv"] = f"up_blocks.{block}.upsamplers.0.conv"
            index += 1
    return table


_SGM_TABLES = {family: _sgm_blocks(layout) for family, layout in UNET_LAYOUTS.items()}
_SGM_REVERSE = {family: {v: k for k, v in table.items()} for family, table in _SGM_TABLES.items()}
_SGM_RESNET_REVERSE = {v: k for k, v in _SGM_RESNET.items()}
_SGM_START = ("input_blocks.", "middle_block.", "output_blocks.", "out.", "time_embed.", "label_emb.")


def is_sgm_path(path: str) -> bool:
    """True for a UNet path in the sgm spelling (`input_blocks.4.1…`) rather than diffusers'."""
    return path.startswith(_SGM_START)


def sgm_to_diffusers(path: str, family: str) -> str | None:
    """Map an sgm UNet module path to diffusers' spelling for `family`; None when it fits nowhere."""
    if family not in _SGM_TABLES:
        return None
    if path in _SGM_WHOLE:
        return _SGM_WHOLE[path]
    table = _SGM_TABLES[family]
    parts = path.split(".")
    for cut in (4, 3, 2):  # the longest block prefix first (`input_blocks.3.0.op` is a whole module)
        prefix = ".".join(parts[:cut])
        if prefix not in table:
            continue
        target, rest = table[prefix], ".".join(parts[cut:])
        if target.endswith(".conv"):
            return target if not rest else None
        if ".resnets." in target:
            return f"{target}.{_SGM_RESNET[rest]}" if rest in _SGM_RESNET else None
        return f"{target}.{rest}" if rest else None
    return None


def diffusers_to_sgm(path: str, family: str) -> str | None:
    """The sgm spelling of a diffusers UNet path (kohya's SDXL names); None when there is none."""
    whole = {v: k for k, v in _SGM_WHOLE.items()}
    if path in whole:
        return whole[path]
    reverse = _SGM_REVERSE.get(family, {})
    if path in reverse:
        return reverse[path]
    parts = path.split(".")
    for cut in (4, 3, 2):
        prefix = ".".join(parts[:cut])
        if prefix in reverse:
            rest = ".".join(parts[cut:])
            if ".resnets." in prefix or prefix.startswith("mid_block.resnets"):
                return f"{reverse[prefix]}.{_SGM_RESNET_REVERSE[rest]}" if rest in _SGM_RESNET_REVERSE else None
            return f"{reverse[prefix]}.{rest}"
    return None


# --- text encoders and the Flux transformer ----------------------------------------------------

_CLIP = re.compile(r"text_model\.encoder\.layers\.\d+\."
                   r"(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))"
                   r"|text_projection")
_T5 = re.compile(r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.[qkvo]"
                 r"|encoder\.block\.\d+\.layer\.1\.DenseReluDense\.(?:wi|wi_0|wi_1|wo)")
_FLUX = re.compile(
    r"transformer_blocks\.\d+\.(?:attn\.(?:to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(?:0\.proj|2)|ff_context\.net\.(?:0\.proj|2)|norm1\.linear|norm1_context\.linear)"
    r"|single_transformer_blocks\.\d+\.(?:attn\.(?:to_q|to_k|to_v)|proj_mlp|proj_out|norm\.linear)"
    r"|x_embedder|context_embedder|norm_out\.linear|proj_out"
    r"|time_text_embed\.(?:timestep_embedder|guidance_embedder|text_embedder)\.linear_[12]")


def split_component(name: str) -> tuple[str, str]:
    """`unet.down_blocks.0…` → (`unet`, `down_blocks.0…`)."""
    component, _, path = name.partition(".")
    return component, path


def fits(name: str, family: str) -> bool:
    """True when the canonical `name` is a Linear/Conv2d module of `family`'s models."""
    component, path = split_component(name)
    kind = FAMILY_COMPONENTS.get(family, {}).get(component)
    if kind == UNET:
        return unet_fits(path, UNET_LAYOUTS[family])
    if kind == CLIP:
        return bool(_CLIP.fullmatch(path))
    if kind == T5:
        return bool(_T5.fullmatch(path))
    if kind == DIT:
        return bool(_FLUX.fullmatch(path))
    return False


def module_kernel(name: str, family: str) -> tuple[int, int] | None:
    """Kernel size when the module is a convolution in `family`'s models, else None (Linear)."""
    component, path = split_component(name)
    if FAMILY_COMPONENTS.get(family, {}).get(component) == UNET:
        return unet_kernel(path, UNET_LAYOUTS[family])
    return None


def component_of(name: str) -> str:
    """The pipeline component a canonical name belongs to: `unet`, `transformer`, `text_encoder`, …"""
    return split_component(name)[0]


def role_of(name: str) -> str:
    """`"model"` for the denoiser (UNet / transformer), `"clip"` for text encoders — the two
    strengths (`strength_model`, `strength_clip`) ComfyUI's LoRA loader applies."""
    return "clip" if component_of(name) in TEXT_COMPONENTS else "model"


def check_same_family(a, b) -> None:
    """Raise AdapterError when two opened files (anything with `.family` and `.path`) belong to
    different model families: their modules are different layers and never combine."""
    from dipm_lang.errors import AdapterError

    if a.family != b.family:
        raise AdapterError(
            f"is a {FAMILY_TITLES.get(b.family, b.family)} LoRA, but {a.path} is a "
            f"{FAMILY_TITLES.get(a.family, a.family)} LoRA: adapters of different model families do not combine",
            b.path)
