"""LoRA-family files of image models (SPEC §7.10): kohya LoRA/LoCon, LyCORIS LoHa/LoKr, diffusers LoRA
files, for SD 1.x, SD 2.x, SDXL and Flux.1 — read as exact factors under canonical module names,
written back in kohya's or diffusers' layout.

Modules: `header` (what a file says before any tensor is read), `detect` (layout, algorithm, family),
`names` (canonical names per family), `kohya` (kohya key names), `factors` (exact B, A per kind),
`adapter` (`open_lora_file`, `FormatAdapter.read`), `write` (`write_lora_file`), `metadata` (what an
output keeps), `blocks` (sd-webui-lora-block-weight's block tables).
"""

from dipm_lang.io.formats.adapter import FormatAdapter, ModuleSpec, open_lora_file
from dipm_lang.io.formats.blocks import block_of, block_vector, block_weights, component_weights
from dipm_lang.io.formats.names import FAMILIES, check_same_family, component_of, role_of
from dipm_lang.io.formats.write import DIFFUSERS_WEIGHTS_NAME, weights_file, writable_format, write_lora_file

__all__ = [
    "FAMILIES", "DIFFUSERS_WEIGHTS_NAME", "FormatAdapter", "ModuleSpec", "block_of", "block_vector", "block_weights",
    "check_same_family", "component_of", "component_weights", "open_lora_file", "role_of", "weights_file",
    "writable_format", "write_lora_file",
]
