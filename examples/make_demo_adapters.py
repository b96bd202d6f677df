"""Make small demo adapters with PEFT on a tiny, randomly initialised Llama (no downloads).

    python examples/make_demo_adapters.py [OUT_DIR]      # default: demo/adapters

Writes three LoRA adapter folders, as PEFT's save_pretrained does:
  helpful/  r=8, alpha=16, q/k/v/o projections            (the ability to keep)
  toxic/    r=4, alpha=8, rsLoRA, q/v + down projections   (the ability to remove)
  other/    r=8, alpha=8, all seven projections, a per-module rank pattern
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = ATTENTION + ["gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return transformers.LlamaForCausalLM(config).eval()


def make_adapter(path: Path, *, seed: int, **lora: object) -> Path:
    """A PEFT LoRA adapter with random nonzero factors (as after some training)."""
    import peft

    model = peft.get_peft_model(tiny_llama(0), peft.LoraConfig(lora_dropout=0.0, **lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    model.save_pretrained(str(path))
    return path


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    make_adapter(out / "helpful", seed=1, r=8, lora_alpha=16, target_modules=ATTENTION)
    make_adapter(out / "toxic", seed=2, r=4, lora_alpha=8, use_rslora=True,
                 target_modules=["q_proj", "v_proj", "down_proj"])
    make_adapter(out / "other", seed=3, r=8, lora_alpha=8, target_modules=ALL, rank_pattern={"down_proj": 4})
    print(f"demo adapters written to {out}/ (helpful, toxic, other)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/adapters"))
