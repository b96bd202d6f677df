"""Build tiny PEFT LoRA adapters for tests, on a randomly initialised Llama (never a hub download).

peft and transformers are imported inside the functions: importing them costs seconds, and
test modules that never build an adapter should not pay it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
)
PREFIX = "base_model.model."


WITH_BIASES = dict(attention_bias=True, mlp_bias=True)
"""`base_config` of a tiny Llama whose attention and MLP projections have biases (for `bias="all"`)."""


def tiny_llama(seed: int = 0, **config: Any) -> torch.nn.Module:
    """A 2-layer Llama with hidden size 32, weights drawn from `seed`; `config` overrides LlamaConfig
    fields (e.g. `WITH_BIASES`)."""
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY_LLAMA, **config})).eval()


def make_peft_adapter(
    path: str | Path,
    *,
    seed: int,
    r: int = 4,
    alpha: float = 8,
    target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    dtype: torch.dtype = torch.float32,
    init_A_seed: int | None = None,
    base_seed: int = 0,
    base_config: Mapping[str, Any] | None = None,
    **config_kwargs: Any,
) -> Path:
    """Save a LoRA adapter with random, nonzero factors made by PEFT itself; returns `path`.

    `B` (and `A`, unless `init_A_seed` is given) are drawn from `seed`; with `init_A_seed`
    every adapter built with the same value shares its `A` matrices (one rank basis).
    Factors are stored in `dtype`. With `modules_to_save=[...]` or `bias="all"|"lora_only"` (PEFT's
    own options, passed through) the full-weight modules and the trained biases are moved away from
    the base model's by noise drawn from `seed` too (as training would), kept in the model's dtype;
    `base_config` configures the tiny Llama (`WITH_BIASES` gives its projections biases).
    """
    import peft

    model = tiny_llama(base_seed, **dict(base_config or {}))
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        use_rslora=use_rslora,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
        lora_dropout=0.0,
        **config_kwargs,
    )
    peft_model = peft.get_peft_model(model, config)
    gen_b = torch.Generator().manual_seed(seed)
    gen_a = torch.Generator().manual_seed(seed + 7919 if init_A_seed is None else init_A_seed)
    gen_full = torch.Generator().manual_seed(seed + 104729)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_" not in name and (".modules_to_save." in name or (name.endswith(".bias") and param.requires_grad)):
                param.data = param.data + 0.1 * torch.randn(param.shape, generator=gen_full)
                continue
            if "lora_" not in name:
                continue
            is_a = "lora_A" in name or "lora_embedding_A" in name
            gen = gen_a if is_a else gen_b
            values = torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5
            param.data = values.to(dtype)
    path = Path(path)
    peft_model.save_pretrained(str(path))
    return path


def peft_logits(adapter_path: str | Path, tokens: torch.Tensor, *, base_seed: int = 0,
                base_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The logits of the tiny Llama with the adapter folder loaded by `PeftModel.from_pretrained`."""
    import peft

    model = peft.PeftModel.from_pretrained(tiny_llama(base_seed, **dict(base_config or {})), str(adapter_path))
    with torch.no_grad():
        return model(input_ids=tokens).logits.double()


def peft_deltas(adapter_path: str | Path, base_seed: int = 0) -> dict[str, tuple[torch.Tensor, float, int, str]]:
    """Load an adapter folder with PEFT and return, per module name (no prefix),
    `(get_delta_weight("default"), scaling, rank, kind)` — PEFT's own reading of the folder."""
    import peft

    model = peft.PeftModel.from_pretrained(tiny_llama(base_seed), str(adapter_path))
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, peft.tuners.lora.LoraLayer) or "default" not in module.r:
            continue
        kind = "embedding" if isinstance(module, peft.tuners.lora.Embedding) else "linear"
        with torch.no_grad():
            delta = module.get_delta_weight("default").float()
        out[name.removeprefix(PREFIX)] = (delta, float(module.scaling["default"]), module.r["default"], kind)
    return out


def exact_sum(parts: Sequence[tuple[str | Path, float]]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·sᵢ·Bᵢ·Aᵢ per module in float64, from each adapter folder's own file and the scale PEFT
    gives it (float64 throughout, so a reference SVD sees the true numerical rank)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for folder, weight in parts:
        files = load_file(str(Path(folder) / "adapter_model.safetensors"))
        for module, (_, scale, _, _) in peft_deltas(folder).items():
            B = files[f"{PREFIX}{module}.lora_B.weight"].to(torch.float64)
            A = files[f"{PREFIX}{module}.lora_A.weight"].to(torch.float64)
            out[module] = out.get(module, 0) + weight * scale * (B @ A)
    return out


def write_raw_adapter(path: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """Write an adapter folder by hand (for malformed and edge cases PEFT would not produce)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(dict(config)))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return path


def folder_digest(path: str | Path) -> dict[str, str]:
    """SHA-256 of every file under `path` (relative name → hex), to prove inputs stay untouched."""
    import hashlib

    root = Path(path)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def huge_adapter(path: Path, size: int, rank: int, seed: int) -> Path:
    """One `huge_proj` module of size×size at `rank`, in PEFT's file format (factors only)."""
    from safetensors.torch import save_file

    path.mkdir()
    g = torch.Generator().manual_seed(seed)
    name = "base_model.model.model.layers.0.mlp.huge_proj"
    save_file({f"{name}.lora_A.weight": torch.randn(rank, size, generator=g),
               f"{name}.lora_B.weight": torch.randn(size, rank, generator=g)},
              str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["huge_proj"]}))
    return path
