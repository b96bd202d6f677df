"""Blocks and components of image models, read from canonical module names (SPEC §7.10).

A LoRA file of an image model has modules named in diffusers' model paths with the pipeline
component in front (`unet.down_blocks.1.attentions.0.proj_in`, `text_encoder.text_model.…`,
`transformer.single_transformer_blocks.3.attn.to_q`; `io/formats/names.py`). Block weights and
component strengths are numbers per module that follow from those names alone, so schedules
(`ir/schedules.py`) evaluate them like `where`: no file, no family table is needed at run time.

Block ids and presets are sd-webui-lora-block-weight's (LBW), typed from hako-mikan/
sd-webui-lora-block-weight, `scripts/lora_block_weight.py` at commit
b403cb7300f288360023c2a1978b86a361934e24 (2025-06-19): `BLOCKID26/17/12/20`, `BLOCKIDFLUX`,
`DEF_WEIGHT_PRESET`, `to26`. The block map (which module is in which block):

- SD 1.x, SD 2.x, SDXL — the original (sgm) UNet's blocks, whose numbering diffusers'
  `_maybe_map_sgm_blocks_to_diffusers` derives from `layers_per_block` (2 in all three):
  `IN00` conv_in; `IN{1+3b+l}` down block b's resnet/attention l; `IN{3+3b}` its downsampler;
  `M00` the mid block; `OUT{3b+l}` up block b's resnet/attention l (l = 0…2) and `OUT{3b+2}` its
  upsampler; `BASE` every text encoder. The time embedding, SDXL's added-conditioning embedding
  and conv_out are in no block: LBW leaves them at 1.
- Flux.1 — `CLIP` (text_encoder), `T5` (text_encoder_2), `IN` (x/context embedders, time/guidance/
  text embedders), `D00`–`D18` double-stream blocks, `S00`–`S37` single-stream blocks, `OUT`
  (norm_out, proj_out).

A vector of 12, 17, 20 or 26 values names the blocks of that form (17: SD 1.x/2.x LoRA, 26: its
LoCon form with every block, 12/20: SDXL LoRA/LoCon); a block the form does not name gets 0 (LBW's
`to26`), so LoCon modules in IN00, IN03, IN06, IN09–IN11, OUT00–OUT02 need the 26-value form.
61 values are Flux's form. LBW's random entries (`R`, `U`, `X`) are not taken: recipes are
deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LBW_COMMIT = "b403cb7300f288360023c2a1978b86a361934e24"

BLOCKID26 = ("BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "IN09", "IN10",
             "IN11", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08",
             "OUT09", "OUT10", "OUT11")
BLOCKID17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06",
             "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
BLOCKID12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")
BLOCKID20 = ("BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "M00", "OUT00",
             "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08")
BLOCKIDFLUX = ("CLIP", "T5", "IN") + tuple(f"D{i:02}" for i in range(19)) + tuple(f"S{i:02}" for i in range(38)) \
    + ("OUT",)

FORMS: dict[int, tuple[str, ...]] = {12: BLOCKID12, 17: BLOCKID17, 20: BLOCKID20, 26: BLOCKID26, 61: BLOCKIDFLUX}
"""Block ids named by a vector of each length."""

FAMILY_TITLES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL", "flux": "Flux.1"}
"""The model families whose LoRA files dipm reads (`io/formats/names.py` knows their module trees)."""

FAMILY_LENGTHS = {"sd1": (12, 17, 20, 26), "sd2": (12, 17, 20, 26), "sdxl": (12, 17, 20, 26), "flux": (61,)}
"""The vector lengths that fit each model family's LoRAs."""

_DEF_WEIGHT_PRESET = """\
NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5
FLUXALL:""" + ",".join(["1"] * 61)
PRESETS: dict[str, tuple[float, ...]] = {
    line.split(":")[0]: tuple(float(v) for v in line.split(":")[1].split(","))
    for line in _DEF_WEIGHT_PRESET.splitlines()}
"""LBW's built-in presets (`DEF_WEIGHT_PRESET`), name → values."""

COMPONENTS: dict[str, str] = {
    "model": r"^(?:unet|transformer)\.",
    "clip": r"^text_encoder(?:_2)?\.",
    "unet": r"^unet\.",
    "transformer": r"^transformer\.",
    "text_encoder": r"^text_encoder\.",
    "text_encoder_2": r"^text_encoder_2\.",
}
"""Component names a recipe can pick, as patterns over canonical module names: `model` is the denoiser
(ComfyUI's `strength_model`), `clip` every text encoder (`strength_clip`), or one pipeline component."""

_UNET = re.compile(r"unet\.(?:(?P<whole>conv_in|mid_block)\b"
                   r"|(?P<side>down|up)_blocks\.(?P<block>\d+)\."
                   r"(?:(?:resnets|attentions)\.(?P<layer>\d+)|(?P<sampler>downsamplers|upsamplers))\.)")
_FLUX = re.compile(r"transformer\.(?:(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<index>\d+)\."
                   r"|(?P<inputs>x_embedder$|context_embedder$|time_text_embed\.)"
                   r"|(?P<outputs>norm_out\.linear$|proj_out$))")


def block_id(module: str, *, flux: bool = False) -> str | None:
    """LBW's block id of a canonical module name (`"IN04"`, `"M00"`, `"BASE"`, `"D07"`, …); None for a
    module in no block. `flux`: Flux's block ids (`CLIP`/`T5` for the text encoders) instead of the UNet's."""
    if module.startswith("text_encoder"):
        if not flux:
            return "BASE"
        return "T5" if module.startswith("text_encoder_2.") else "CLIP"
    if flux:
        match = _FLUX.match(module)
        if not match:
            return None
        if match["kind"]:
            return ("D" if match["kind"] == "transformer_blocks" else "S") + f"{int(match['index']):02}"
        return "IN" if match["inputs"] else "OUT"
    match = _UNET.match(module)
    if not match:
        return None  # time_embedding, add_embedding, conv_out
    if match["whole"]:
        return "IN00" if match["whole"] == "conv_in" else "M00"
    block = int(match["block"])
    # the sampler follows the block's two layers: input 3b+3 (after 3b+1, 3b+2), output 3b+2 (after 3b, 3b+1)
    if match["side"] == "down":
        index = 3 + 3 * block if match["sampler"] else 1 + 3 * block + int(match["layer"])
        return f"IN{index:02}"
    index = 3 * block + 2 if match["sampler"] else 3 * block + int(match["layer"])
    return f"OUT{index:02}"


def parse_weights(weights: str | Sequence[float]) -> tuple[float, ...]:
    """The numbers of a block-weight vector: an LBW preset name (`"INS"`), LBW's comma-separated text
    (`"1,0,0,…"`) or a list of numbers. Raises ValueError saying what is wrong."""
    if isinstance(weights, str):
        if weights.strip() in PRESETS:
            return PRESETS[weights.strip()]
        if "," not in weights:
            raise ValueError(f"unknown block-weight preset {weights!r}; presets: {', '.join(PRESETS)}")
        weights = weights.split(",")
    values = []
    for item in weights:
        try:
            if isinstance(item, bool):
                raise TypeError
            values.append(float(item))
        except (TypeError, ValueError):
            raise ValueError(f"block weight {item!r} is not a number (LBW's random R/U/X entries are not "
                             "supported: recipes are deterministic)") from None
    return tuple(values)


def length_problem(count: int, family: str | None = None) -> str | None:
    """Why a vector of `count` values does not fit `family` (any family when None), or None when it fits."""
    lengths = sorted(FORMS) if family is None else FAMILY_LENGTHS[family]
    if count in lengths:
        return None
    title = FAMILY_TITLES.get(family, "any supported model family")
    return (f"a block-weight vector for {title} has {' or '.join(map(str, lengths))} values, got {count} "
            "(sd-webui-lora-block-weight's forms: 17 for SD 1.x/2.x LoRA, 26 with every block (LoCon), 12 and "
            "20 for SDXL, 61 for Flux)")


def block_weight(values: tuple[float, ...], module: str) -> float:
    """A module's number under a block-weight vector: its block's value, 0 for a block the vector's
    form does not name, 1 for a module in no block (LBW's rules)."""
    form = FORMS[len(values)]
    block = block_id(module, flux=len(values) == len(BLOCKIDFLUX))
    if block is None:
        return 1.0
    try:
        return values[form.index(block)]
    except ValueError:
        return 0.0
