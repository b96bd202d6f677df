"""How vLLM's LoRA loader reads an adapter folder, written from vLLM's source for the tests (vLLM
itself needs a GPU build and is not installed here). It is deliberately independent of
`dipm_lang.io.vllm`: the tests load dipm's outputs with it and compare the updates vLLM would apply.

From vllm-project/vllm:
- vllm/lora/peft_helper.py at e745bafffc44744aa601169f8c6f325e47ca7cd5: `PEFTHelper.from_dict` keeps
  the declared fields only (r, lora_alpha, target_modules, bias, modules_to_save, use_rslora, use_dora,
  …); `__post_init__`: `vllm_lora_scaling_factor = lora_alpha / r` (`/ sqrt(r)` with rsLoRA);
  `validate_legal`: refuses modules_to_save, DoRA, r > max_lora_rank, a bias (without bias_enabled).
- vllm/config/lora.py at a78dc92f43ae2471dd40675a47079aa1a9a157c1: `MaxLoRARanks`.
- vllm/lora/utils.py at 0fd157078c53638b7ffc9ce7f2c8b8d7ef7a7d28: `parse_fine_tuned_lora_name`.
- vllm/lora/lora_model.py at 532cc2581840104cf00297b7ea6a187420456403: `from_local_checkpoint` (module
  names checked by their last component) and `from_lora_tensors` (the model's rank is `r`).
- vllm/lora/lora_weights.py / layers: the applied update is `lora_b @ lora_a * scaling` per module,
  factors copied into slots of size max_lora_rank (smaller factors zero-filled).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
PEFT_HELPER_FIELDS = ("r", "lora_alpha", "target_modules", "bias", "modules_to_save", "use_rslora", "use_dora",
                      "context_length", "vllm_lora_scaling_factor", "vllm_max_position_embeddings",
                      "vllm_long_context_scaling_factor")


class VllmRefused(ValueError):
    pass


def parse_fine_tuned_lora_name(name: str) -> tuple[str, bool]:
    start = 2 if name.startswith("base_model.model.") else 0
    parts = name.split(".")
    if parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[start:-2]), parts[-2] == "lora_A"
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[start:-1]), parts[-1] == "lora_embedding_A"
    raise VllmRefused(f"{name} is unsupported LoRA weight")


def load(folder: str | Path, *, max_lora_rank: int = 16, expected_modules: set[str] | None = None
         ) -> dict[str, torch.Tensor]:
    """The update vLLM applies to each module (name without prefix → float64 ΔW), or VllmRefused."""
    if max_lora_rank not in MAX_LORA_RANKS:
        raise VllmRefused(f"max_lora_rank ({max_lora_rank}) must be one of {MAX_LORA_RANKS}")
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    helper = {key: value for key, value in config.items() if key in PEFT_HELPER_FIELDS}  # from_dict
    r, alpha = helper["r"], helper["lora_alpha"]
    errors = []
    if helper.get("modules_to_save"):
        errors.append("vLLM only supports modules_to_save being None.")
    if helper.get("use_dora"):
        errors.append("vLLM does not yet support DoRA.")
    if r > max_lora_rank:
        errors.append(f"LoRA rank {r} is greater than max_lora_rank {max_lora_rank}.")
    if helper.get("bias", "none") != "none":
        errors.append("Adapter bias cannot be used without bias_enabled.")
    if errors:
        raise VllmRefused(" ".join(errors))
    scaling = alpha / math.sqrt(r) if helper.get("use_rslora") else alpha / r
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, is_a = parse_fine_tuned_lora_name(key)
        if expected_modules is not None and module.rsplit(".", 1)[-1] not in expected_modules:
            raise VllmRefused(f"expected target modules in {expected_modules} but received {module}")
        factors.setdefault(module, {})["A" if is_a else "B"] = tensor.to(torch.float64)
    out = {}
    for module, pair in factors.items():
        a, b = pair["A"], pair["B"]
        if a.shape[0] > max_lora_rank:  # the slot is max_lora_rank wide
            raise VllmRefused(f"{module}: rank {a.shape[0]} does not fit max_lora_rank {max_lora_rank}")
        out[module] = b @ a * scaling
    return out
