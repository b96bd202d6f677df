"""Block weights as sd-webui-lora-block-weight (LBW) defines them (SPEC §7.10).

Tables typed from hako-mikan/sd-webui-lora-block-weight, `scripts/lora_block_weight.py` at commit
b403cb7300f288360023c2a1978b86a361934e24 (2025-06-19): `BLOCKID26/17/12/20`, `BLOCKIDFLUX`,
`DEF_WEIGHT_PRESET`, `to26`, `ratiodealer`, `get_flux_blocks`.

LBW's rules, kept here:
- Block ids follow the original (sgm) UNet: `IN00`–`IN11` are `input_blocks.0`–`.11`, `M00` the middle
  block, `OUT00`–`OUT11` the output blocks, `BASE` the text encoder(s). Modules outside those blocks
  (time embedding, SDXL's label embedding, the final `out` conv) have no block; LBW leaves them at 1.
- A vector of 12, 17, 20 or 26 values names the blocks of that form (17: SD 1.x/2.x LoRA, 26: its
  LoCon/LyCORIS form with every block, 12/20: SDXL LoRA/LoCon); blocks it does not name get 0
  (LBW's `to26`: "any layers not provided will be treated as having a weight of 0"). So LoCon
  modules in blocks outside the 17-value form (IN00, IN03, IN06, IN09–IN11, OUT00–OUT02) need the
  26-value form to get a weight other than 0.
- Flux: 61 values `CLIP, T5, IN, D00–D18, S00–S37, OUT`.
LBW's random entries (`R`, `U`, `X`) are not taken: a recipe must be deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from dipm_lang.errors import UsageError
import dipm_lang.io.formats.names as names

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
FAMILY_LENGTHS = {"sd1": (12, 17, 20, 26), "sd2": (12, 17, 20, 26), "sdxl": (12, 17, 20, 26), "flux": (61,)}

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

_SGM_BLOCK = re.compile(r"(input_blocks|middle_block|output_blocks)\.(\d+)")
_FLUX_BLOCK = re.compile(r"transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.")


def block_of(name: str, family: str) -> str | None:
    """LBW's block id of a canonical module (`"IN04"`, `"M00"`, `"BASE"`, `"D07"`, …), or None when
    the module is in no block (LBW then keeps its weight at 1)."""
    component, path = names.split_component(name)
    if family == "flux":
        if component == "text_encoder":
            return "CLIP"
        if component == "text_encoder_2":
            return "T5"
        match = _FLUX_BLOCK.match(name)
        if match:
            return ("D" if match[1] == "transformer_blocks" else "S") + f"{int(match[2]):02}"
        if path in ("x_embedder", "context_embedder") or path.startswith("time_text_embed."):
            return "IN"  # BFL img_in, txt_in, time_in, vector_in, guidance_in
        if path in ("norm_out.linear", "proj_out"):
            return "OUT"  # BFL final_layer
        return None
    if family not in names.UNET_LAYOUTS:
        raise UsageError(f"unknown model family {family!r}; families: {', '.join(names.FAMILIES)}")
    if component in names.TEXT_COMPONENTS:
        return "BASE"
    sgm = names.diffusers_to_sgm(path, family)
    match = _SGM_BLOCK.match(sgm or "")
    if not match:
        return None  # time_embed, label_emb, out.2 (conv_out)
    if match[1] == "middle_block":
        return "M00"
    return ("IN" if match[1] == "input_blocks" else "OUT") + f"{int(match[2]):02}"


def block_vector(weights: str | Sequence[float], family: str) -> dict[str, float]:
    """Block id → weight for an LBW preset name, a comma-separated string or a list of numbers;
    every block of the family's full form is in the result (0 where the vector does not name it)."""
    if family not in FAMILY_LENGTHS:
        raise UsageError(f"unknown model family {family!r}; families: {', '.join(names.FAMILIES)}")
    values = _values(weights)
    lengths = FAMILY_LENGTHS[family]
    if len(values) not in lengths:
        forms = "; ".join(f"{n}: {', '.join(FORMS[n])}" for n in lengths)
        raise UsageError(f"a block-weight vector for {names.FAMILY_TITLES[family]} has "
                         f"{' or '.join(map(str, lengths))} values, got {len(values)} ({forms})")
    full = BLOCKIDFLUX if family == "flux" else BLOCKID26
    out = dict.fromkeys(full, 0.0)
    out.update(zip(FORMS[len(values)], values))
    return out


def _values(weights: str | Sequence[float]) -> list[float]:
    if isinstance(weights, str):
        if weights in PRESETS:
            return list(PRESETS[weights])
        if "," not in weights:
            raise UsageError(f"unknown block-weight preset {weights!r}; presets: {', '.join(PRESETS)}")
        weights = weights.split(",")
    values = []
    for item in weights:
        try:
            values.append(float(item))
        except (TypeError, ValueError):
            raise UsageError(f"block weight {item!r} is not a number (LBW's random R/U/X entries are not "
                             "supported: recipes are deterministic)") from None
    return values


def block_weights(module_names: Iterable[str], weights: str | Sequence[float], family: str) -> dict[str, float]:
    """Each module's weight under a block-weight vector (1 for modules in no block, as LBW)."""
    vector = block_vector(weights, family)
    out = {}
    for name in module_names:
        block = block_of(name, family)
        out[name] = 1.0 if block is None else vector[block]
    return out


def component_weights(module_names: Iterable[str], *, model: float = 1.0, clip: float = 1.0) -> dict[str, float]:
    """`strength_model` for the UNet/transformer, `strength_clip` for the text encoders (ComfyUI's
    LoraLoader habit), per module."""
    return {name: (clip if names.role_of(name) == "clip" else model) for name in module_names}

