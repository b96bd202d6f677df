"""Block weights as sd-webui-lora-block-weight (LBW) defines them (SPEC §7.10), per model family.

The tables, the presets and the block map live in `dipm_lang.ir.blocks` (schedules evaluate them);
this module checks them against a model family. Tables typed from hako-mikan/sd-webui-lora-block-weight, `scripts/lora_block_weight.py` at commit
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

from collections.abc import Iterable, Sequence

from dipm_lang.errors import UsageError
import dipm_lang.io.formats.names as names
from dipm_lang.ir.blocks import (BLOCKID12, BLOCKID17, BLOCKID20, BLOCKID26, BLOCKIDFLUX, FAMILY_LENGTHS, FORMS,
                                 LBW_COMMIT, PRESETS, block_id, length_problem, parse_weights)

__all__ = ["BLOCKID12", "BLOCKID17", "BLOCKID20", "BLOCKID26", "BLOCKIDFLUX", "FAMILY_LENGTHS", "FORMS", "LBW_COMMIT",
           "PRESETS", "block_of", "block_vector", "block_weights", "component_weights"]


def block_of(name: str, family: str) -> str | None:
    """LBW's block id of a canonical module (`"IN04"`, `"M00"`, `"BASE"`, `"D07"`, …), or None when
    the module is in no block (LBW then keeps its weight at 1). The map is `ir.blocks.block_id`'s:
    the block follows from the name alone; the family says which ids (UNet or Flux)."""
    if family not in names.FAMILIES:
        raise UsageError(f"unknown model family {family!r}; families: {', '.join(names.FAMILIES)}")
    return block_id(name, flux=family == "flux")


def block_vector(weights: str | Sequence[float], family: str) -> dict[str, float]:
    """Block id → weight for an LBW preset name, a comma-separated string or a list of numbers;
    every block of the family's full form is in the result (0 where the vector does not name it)."""
    if family not in FAMILY_LENGTHS:
        raise UsageError(f"unknown model family {family!r}; families: {', '.join(names.FAMILIES)}")
    try:
        values = parse_weights(weights)
    except ValueError as error:
        raise UsageError(str(error)) from None
    problem = length_problem(len(values), family)
    if problem:
        raise UsageError(problem)
    full = BLOCKIDFLUX if family == "flux" else BLOCKID26
    out = dict.fromkeys(full, 0.0)
    out.update(zip(FORMS[len(values)], values))
    return out


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

