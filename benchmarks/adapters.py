"""Llama-shaped LoRA adapters on disk, in PEFT's format, without PEFT or a hub download.

A folder holds `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_A.weight` `[r, in]` and
`...lora_B.weight` `[out, r]` — what `PeftModel.save_pretrained` writes for a
`LlamaForCausalLM` with `target_modules` = all seven projections (PEFT_NOTES "Adapter folders").

The factors look like trained ones rather than pure noise: `A`'s rows have the scale of
PEFT's initialisation, `B` has a decaying spectrum (so a rank-16 truncation of a sum keeps
most of it, as with real adapters), and adapters of one set share half of each module's
subspace (their directions correlate, as adapters fine-tuned from one base do). Every module
is drawn from its own seed `(set seed, adapter, layer, projection)`, so an adapter with fewer
layers is exactly the first layers of a larger one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

PREFIX = "base_model.model."
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass(frozen=True)
class Shapes:
    """A Llama-like model's module shapes (hidden, FFN width; `kv`: rows of k_proj/v_proj under
    grouped-query attention, None for none)."""

    hidden: int = 4096
    ffn: int = 11008
    name: str = "llama-7b-shapes"
    kv: int | None = None

    def modules(self, layers: int) -> Iterator[tuple[str, int, int]]:
        """`(module name, out_features, in_features)` for every projection of every layer."""
        h, f = self.hidden, self.ffn
        kv = self.kv or h
        dims = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}
        for layer in range(layers):
            for proj in PROJECTIONS:
                block = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                yield (f"model.layers.{layer}.{block}.{proj}", *dims[proj])


LLAMA_7B = Shapes()
LLAMA_70B = Shapes(hidden=8192, ffn=28672, name="llama-70b-shapes", kv=1024)
SMALL = Shapes(hidden=256, ffn=704, name="small-llama-shapes")  # ≥ 128 wide: the randomized *_svd path
TINY = Shapes(hidden=64, ffn=176, name="tiny-llama-shapes")


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + part) % (2**62)
    return torch.Generator().manual_seed(seed)


def module_factors(m: int, n: int, r: int, *, set_seed: int, adapter: int, layer: int, proj: int,
                   shared: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's `(B [m, r], A [r, n])` in float32, deterministic in its key."""
    common = _generator(set_seed, 0, layer, proj)
    own = _generator(set_seed, adapter + 1, layer, proj)
    a = shared * torch.randn(r, n, generator=common) + math.sqrt(1 - shared**2) * torch.randn(r, n, generator=own)
    b = shared * torch.randn(m, r, generator=common) + math.sqrt(1 - shared**2) * torch.randn(m, r, generator=own)
    a /= math.sqrt(n)                                       # ≈ kaiming scale of PEFT's A
    spectrum = 0.02 * (1.0 + torch.arange(r, dtype=torch.float32)) ** -1.0
    b *= spectrum                                           # trained B: a decaying spectrum
    return b, a


def make_adapter(path: Path, *, layers: int, rank: int, shapes: Shapes = LLAMA_7B, set_seed: int = 0,
                 adapter: int = 0, alpha: float | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write a LoRA adapter folder for all seven projections of `layers` layers; returns `path`."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for index, (name, m, n) in enumerate(shapes.modules(layers)):
        layer, proj = divmod(index, len(PROJECTIONS))
        b, a = module_factors(m, n, rank, set_seed=set_seed, adapter=adapter, layer=layer, proj=proj)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.to(dtype).contiguous()
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": f"benchmarks/{shapes.name}",
        "r": rank, "lora_alpha": alpha if alpha is not None else 2 * rank, "use_rslora": False,
        "target_modules": list(PROJECTIONS), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True,
    }
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return path


# ---- reading (independent of dipm_lang's reader, so the error check does not trust it) -----


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    import re

    for key, value in patterns.items():  # PEFT: the first key k with re.match(rf"(.*\.)?({k})$", name)
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_factors(path: Path, dtype: torch.dtype = torch.float64) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module → `(s·B, A)` of a PEFT LoRA folder (scale folded into B), in `dtype`.

    Scale as PEFT computes it: `alpha/r` (`alpha/√r` with rsLoRA), with `rank_pattern` and
    `alpha_pattern` resolved per module.
    """
    from safetensors.torch import load_file

    config = json.loads((path / CONFIG_NAME).read_text())
    tensors = load_file(str(path / WEIGHTS_NAME))
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX):-len(".lora_A.weight")]
        b = tensors[f"{PREFIX}{module}.lora_B.weight"]
        r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[module] = (b.to(dtype) * scale, a.to(dtype))
    return out


def folder_bytes(path: Path) -> int:
    """Size of an adapter's weights file."""
    return (path / WEIGHTS_NAME).stat().st_size


def relative_error(result: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   terms: list[tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]]) -> float:
    """‖result − Σ wᵢ·ΔWᵢ‖_F / ‖Σ wᵢ·ΔWᵢ‖_F over all modules, computed on the factors.

    Each module's difference is one factored matrix `[B', −w₁B₁, …] @ [A'; A₁; …]`; its norm is
    `‖R_B R_Aᵀ‖` from QRs of the two factors (float64), so no m×n matrix is formed and an exact
    result shows as rounding error (~1e-7 for float32 files), not as cancellation noise.
    """
    num = den = 0.0
    for module in terms[0][1]:
        bs = [w * f[module][0] for w, f in terms if module in f]
        as_ = [f[module][1] for w, f in terms if module in f]
        den += _norm_sq(torch.cat(bs, dim=1), torch.cat(as_, dim=0))
        if module in result:
            b, a = result[module]
            num += _norm_sq(torch.cat([b.to(torch.float64)] + [-x for x in bs], dim=1),
                            torch.cat([a.to(torch.float64)] + as_, dim=0))
        else:
            num += _norm_sq(torch.cat(bs, dim=1), torch.cat(as_, dim=0))
    return math.sqrt(num / den) if den > 0 else 0.0


def _norm_sq(b: torch.Tensor, a: torch.Tensor) -> float:
    rb = torch.linalg.qr(b.to(torch.float64), mode="r").R
    ra = torch.linalg.qr(a.to(torch.float64).mT, mode="r").R
    return float(torch.linalg.matrix_norm(rb @ ra.mT) ** 2)
