"""Tiny base-model folders and DoRA adapters for the base-weights tests (never a hub download).

The base folders are written by transformers' own `save_pretrained` (sharded with a small
`max_shard_size`), the adapters by PEFT's own `save_pretrained`; the tests read the adapters'
safetensors directly, so what they check does not go through dipm_lang's adapter reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from adapters import PREFIX, TINY_LLAMA, write_raw_adapter

TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)


def tiny_llama_model(seed: int = 0, *, tied: bool = False) -> torch.nn.Module:
    """A 2-layer Llama (hidden 32) drawn from `seed`; `tied` ties lm_head to the embedding."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2_model(seed: int = 0) -> torch.nn.Module:
    """A 2-layer GPT-2 (Conv1D layers, tied lm_head) drawn from `seed`."""
    import transformers

    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_GPT2)).eval()


def save_model(model: torch.nn.Module, path: Path, *, shard_size: str | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """save_pretrained, optionally sharded and cast; also a tokenizer-like file and a README."""
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(str(path), **kwargs)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    (path / "README.md").write_text("base model card\n")
    return path


def randomize_lora(peft_model: torch.nn.Module, seed: int, *, magnitude_spread: float = 0.3) -> None:
    """Random nonzero factors, and DoRA magnitudes perturbed away from their initial ‖W0 + sBA‖."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_magnitude_vector" in name:
                continue
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
        # Magnitudes depend on the factors: re-initialise them (PEFT's own rule), then perturb.
        for module in peft_model.modules():
            magnitudes = getattr(module, "lora_magnitude_vector", None)
            if not magnitudes or "default" not in magnitudes:
                continue
            layer = magnitudes["default"]
            lora_a = module.lora_A["default"].weight if "default" in getattr(module, "lora_A", {}) else \
                module.lora_embedding_A["default"]
            lora_b = module.lora_B["default"].weight if "default" in getattr(module, "lora_B", {}) else \
                module.lora_embedding_B["default"]
            layer.update_layer(base_layer=module.get_base_layer(), lora_A=lora_a, lora_B=lora_b,
                               scaling=module.scaling["default"])
            weight = magnitudes["default"].weight
            weight.mul_(1 + magnitude_spread * torch.randn(weight.shape, generator=gen))


def make_adapter(model: torch.nn.Module, path: Path, *, seed: int, targets: Sequence[str], r: int = 4,
                 alpha: float = 8, use_dora: bool = False, **config: Any) -> Path:
    """Save a (DoRA) LoRA adapter made by PEFT on `model` (which PEFT modifies: pass a fresh one)."""
    import peft

    lora_config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_dora=use_dora,
                                  lora_dropout=0.0, **config)
    peft_model = peft.get_peft_model(model, lora_config)
    randomize_lora(peft_model, seed)
    peft_model.save_pretrained(str(path))
    return path


def read_adapter(path: Path) -> dict[str, dict[str, Any]]:
    """Per module: B (scale folded in), A, magnitude (or None) and kind, read from the files directly."""
    from safetensors.torch import load_file

    config = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    modules: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if not name:
            continue
        part = part.removesuffix(".weight")
        module = modules.setdefault(name, {"magnitude": None, "kind": "linear"})
        if part in ("embedding_A", "embedding_B"):
            module["kind"] = "embedding"
        if part.endswith("A"):
            module["A"] = value.double()
        elif part.endswith("B"):
            module["B"] = value.double() * scale
        elif part == "magnitude_vector":
            module["magnitude"] = value.double()
    return modules


def write_dora_adapter(path: Path, modules: Mapping[str, dict[str, Any]], *, r: int, base: str = "tiny",
                       fan_in_fan_out: bool = False) -> Path:
    """A DoRA adapter folder (r = lora_alpha: scale 1) from per-module B, A, magnitude and kind."""
    tensors = {}
    for name, module in modules.items():
        key = PREFIX + name
        if module["kind"] == "embedding":
            tensors[f"{key}.lora_embedding_A"] = module["A"].float()
            tensors[f"{key}.lora_embedding_B"] = module["B"].float()
        else:
            tensors[f"{key}.lora_A.weight"] = module["A"].float()
            tensors[f"{key}.lora_B.weight"] = module["B"].float()
        tensors[f"{key}.lora_magnitude_vector"] = module["magnitude"].float()
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_dora": True, "init_lora_weights": True,
              "target_modules": sorted({name.rsplit(".", 1)[-1] for name in modules}),
              "base_model_name_or_path": base, "fan_in_fan_out": fan_in_fan_out}
    return write_raw_adapter(path, tensors, config)


def peft_merged(model: torch.nn.Module, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's own merge: the state dict of `merge_and_unload()` of `model` + the adapter."""
    import peft

    merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def peft_logits(model: torch.nn.Module, adapter: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the unmerged PEFT model (the adapter's meaning)."""
    import peft

    with torch.no_grad():
        return peft.PeftModel.from_pretrained(model, str(adapter)).eval()(tokens).logits


def model_logits(path: Path, tokens: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits of a model folder loaded by transformers itself."""
    import transformers

    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    with torch.no_grad():
        return model(tokens).logits


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    x, reference = x.double(), reference.double()
    return float((x - reference).norm() / reference.norm().clamp_min(1e-300))


ModelFactory = Callable[[], torch.nn.Module]


def make_finetune(model: torch.nn.Module, path: Path, *, seed: int, targets: Sequence[str], rank: int,
                  noise: float = 0.0, **save: Any) -> dict[str, torch.Tensor]:
    """A "fine-tune" of `model` (modified in place and saved to `path`): every Linear whose name ends
    with one of `targets` gets a known rank-`rank` update U plus `noise`·‖U‖-relative Gaussian noise.
    Returns the known updates U per module (the stored layout: out × in), for extract's tests."""
    gen = torch.Generator().manual_seed(seed)
    updates: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in sorted(model.named_modules()):
            if not isinstance(module, torch.nn.Linear) or not name.endswith(tuple(targets)):
                continue
            m, n = module.weight.shape
            U = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen) / (m * n) ** 0.5
            E = torch.randn(m, n, generator=gen)
            module.weight.add_(U + noise * float(U.norm()) * E / float(E.norm()))
            updates[name] = U
    save_model(model, path, **save)
    return updates
