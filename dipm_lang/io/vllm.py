"""vLLM's rules for LoRA adapters: checked on a folder (`dipm inspect --target vllm`) and enforced on
what dipm writes (`save(…, target="vllm")`, `dipm run --target vllm`).

Read from vLLM's own source, vllm-project/vllm (the versions these rules and their tests encode):

- `vllm/lora/peft_helper.py` at e745bafffc44744aa601169f8c6f325e47ca7cd5 — `PEFTHelper.from_dict` keeps
  only the fields it declares (`r`, `lora_alpha`, `target_modules`, `bias`, `modules_to_save`,
  `use_rslora`, `use_dora`): `rank_pattern` and `alpha_pattern` are dropped, and every module is scaled
  by one `lora_alpha / r` (`/ sqrt(r)` with rsLoRA). `validate_legal` refuses `modules_to_save`, DoRA,
  `r > max_lora_rank`, and a bias unless the server enables one (later vLLM refuses any bias and
  `lora_bias`: "Adapter bias is not supported").
- `vllm/config/lora.py` at a78dc92f43ae2471dd40675a47079aa1a9a157c1 — `max_lora_rank` is one of
  1, 8, 16, 32, 64, 128, 256, 320, 512 and 16 by default (`ir/targets.py`).
- `vllm/lora/utils.py` at 0fd157078c53638b7ffc9ce7f2c8b8d7ef7a7d28 — `parse_fine_tuned_lora_name`
  accepts only `….lora_A.weight`, `….lora_B.weight`, `….lora_embedding_A`, `….lora_embedding_B` (anything
  else "is unsupported LoRA weight"); `get_supported_lora_modules`: LoRA goes on linear layers and the
  model's embedding modules.
- `vllm/lora/lora_model.py` at 532cc2581840104cf00297b7ea6a187420456403 — `from_local_checkpoint`
  matches each module by the last component of its name (`rsplit(".", 1)[-1]`) against the model's
  LoRA-capable layers; `from_lora_tensors` takes the rank from `r` (the factors are copied into slots
  of `max_lora_rank`).

What follows for an output: one rank `R` for every module (factors zero-padded where a module keeps
fewer; padding adds nothing to B·A), `r = lora_alpha = R` so vLLM's one scale is 1, as dipm's factors
already carry each module's scale; no patterns, no bias, no full-weight modules, no DoRA; `R` at most
the server's `max_lora_rank` — `max_rank=N` cuts each module by energy to get there (SPEC §7.6).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.layout import CONFIG_NAME, SAFETENSORS_NAME
from dipm_lang.io.peft_config import parse_settings
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.targets import DEFAULT_MAX_LORA_RANK, SUPPORTED_MAX_LORA_RANKS, smallest_served_rank

PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<name>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")
_BASE_EMBEDDINGS = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")  # vLLM skips these

RULES = ("rank", "scale", "modules", "modules_to_save", "bias", "dora")
"""The rules, in the order a report lists them."""


@dataclass(frozen=True)
class Refusal:
    """One reason vLLM would refuse (or mis-serve) an adapter: the rule, why, and the modules concerned."""

    rule: str
    message: str
    modules: tuple[str, ...] = field(default=())

    def text(self) -> str:
        shown = ""
        if self.modules:
            listed = ", ".join(self.modules[:4]) + (f" and {len(self.modules) - 4} more" if len(self.modules) > 4 else "")
            shown = f" ({listed})"
        return f"[{self.rule}] {self.message}{shown}"


# ---- checking --------------------------------------------------------------------------------


def check_adapter(config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]],
                  max_lora_rank: int | None = None) -> list[Refusal]:
    """Every rule of vLLM's loader the adapter breaks, given its `adapter_config.json` and the shape
    of each tensor in its weights file (key → shape); `max_lora_rank`: the server's (default 16)."""
    limit = DEFAULT_MAX_LORA_RANK if max_lora_rank is None else max_lora_rank
    factors: dict[str, dict[str, Sequence[int]]] = {}
    biases, full, dora, foreign = [], [], [], []
    for key, shape in shapes.items():
        if key.endswith(_BASE_EMBEDDINGS):
            continue
        name = key.removeprefix(PREFIX)
        found = _FACTOR.match(name)
        if found:
            factors.setdefault(found["name"], {})[found["part"]] = shape
        elif name.endswith(".bias"):
            biases.append(name.removesuffix(".bias").removesuffix(".lora_B"))
        elif "lora_magnitude_vector" in name:
            dora.append(name.split(".lora_magnitude_vector")[0])
        elif name.endswith(".weight"):
            full.append(name.removesuffix(".weight").removesuffix(".modules_to_save.default"))
        else:
            foreign.append(name)
    refusals = []
    refusals += _rank_rule(config, factors, limit)
    refusals += _scale_rule(config, factors)
    refusals += _module_rule(factors, foreign)
    saved = [str(m) for m in config.get("modules_to_save") or []]
    if saved or full:
        refusals.append(Refusal("modules_to_save", "vLLM serves no full-weight modules (modules_to_save must be "
                                "None); drop them, or merge them into the base model",
                                tuple(sorted(set(saved) | set(full), key=natural_key))))
    bias = config.get("bias", "none")
    if bias not in (None, "none") or config.get("lora_bias") or biases:
        what = f'bias="{bias}"' if bias not in (None, "none") else "trained biases"
        refusals.append(Refusal("bias", f"vLLM does not serve adapter biases ({what}); drop them",
                                tuple(sorted(set(biases), key=natural_key))))
    if config.get("use_dora") or dora:
        refusals.append(Refusal("dora", "vLLM does not serve DoRA adapters (use_dora); save the result as a "
                                "plain LoRA", tuple(sorted(set(dora), key=natural_key))))
    order = {rule: i for i, rule in enumerate(RULES)}
    return sorted(refusals, key=lambda refusal: order[refusal.rule])


def _rank_rule(config: Mapping[str, Any], factors: Mapping[str, Mapping[str, Sequence[int]]],
               limit: int) -> list[Refusal]:
    ranks = {name: _factor_rank(parts) for name, parts in factors.items()}
    r = config.get("r")
    highest = max([rank for rank in ranks.values() if rank is not None] + ([r] if isinstance(r, int) else []),
                  default=0)
    if highest <= limit:
        return []
    over = tuple(sorted((name for name, rank in ranks.items() if rank is not None and rank > limit), key=natural_key))
    served = smallest_served_rank(highest)
    fix = (f"serve with --max-lora-rank {served}, or save with max_rank={limit} (cuts each module by energy)"
           if served is not None else
           f"no vLLM serves rank {highest} (--max-lora-rank is at most {SUPPORTED_MAX_LORA_RANKS[-1]}); save with "
           f"max_rank={limit} (cuts each module by energy)")
    return [Refusal("rank", f"rank {highest} is above max_lora_rank {limit}; {fix}", over)]


def _factor_rank(parts: Mapping[str, Sequence[int]]) -> int | None:
    a = parts.get("lora_A.weight") or parts.get("lora_embedding_A")
    return int(a[0]) if a else None


def _scale_rule(config: Mapping[str, Any], factors: Mapping[str, Any]) -> list[Refusal]:
    """vLLM scales every module by lora_alpha / r; where PEFT's own scale differs (rank_pattern,
    alpha_pattern), vLLM would serve a different update."""
    try:
        settings = parse_settings(config)
    except AdapterError as e:
        return [Refusal("scale", f"the config cannot be read: {e.message}")]
    served = _vllm_scale(config)
    wrong = tuple(sorted((name for name in factors if not math.isclose(settings.scale(name), served, rel_tol=1e-6)),
                         key=natural_key))
    if not wrong:
        return []
    return [Refusal("scale", f"vLLM ignores rank_pattern/alpha_pattern and scales every module by "
                             f"lora_alpha/r = {served:g}, not PEFT's own scale; re-save with --target vllm "
                             "(one rank, scales folded into the factors)", wrong)]


def _vllm_scale(config: Mapping[str, Any]) -> float:
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _module_rule(factors: Mapping[str, Mapping[str, Sequence[int]]], foreign: Sequence[str]) -> list[Refusal]:
    """Only 2-D LoRA factors of named layers: vLLM puts LoRA on linear and embedding layers, which it
    finds by the last component of the module's name."""
    conv = [name for name, parts in factors.items() if any(len(shape) != 2 for shape in parts.values())]
    unnamed = [name for name in factors if not name.rsplit(".", 1)[-1].isidentifier()]
    out = []
    if conv:
        out.append(Refusal("modules", "vLLM serves LoRA on linear and embedding layers only; these factors are "
                                      "not matrices (convolutions)", tuple(sorted(conv, key=natural_key))))
    if unnamed:
        out.append(Refusal("modules", "vLLM finds a LoRA module by the last part of its name, which must name a "
                                      "layer (these end in an index)", tuple(sorted(unnamed, key=natural_key))))
    if foreign:
        out.append(Refusal("modules", "vLLM reads only lora_A/lora_B (and lora_embedding_A/B) tensors; these "
                                      "keys are unsupported LoRA weights", tuple(sorted(foreign, key=natural_key))))
    return out


def check_folder(path: str | Path, max_lora_rank: int | None = None) -> list[Refusal]:
    """`check_adapter` on an adapter folder as vLLM reads it: its config and its tensors' shapes (from
    the safetensors header; no tensor is loaded)."""
    folder = Path(path)
    config_file, weights = folder / CONFIG_NAME, folder / SAFETENSORS_NAME
    if not config_file.is_file():
        raise AdapterError("not an adapter folder: adapter_config.json is missing", folder)
    if not weights.is_file():
        raise AdapterError("vLLM reads adapter_model.safetensors (or a pickle, which dipm never writes); it is "
                           "missing", folder)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot read the adapter: {e}", folder) from None
    if not isinstance(config, dict):
        raise AdapterError("adapter_config.json is not a JSON object", config_file)
    return check_adapter(config, shapes, max_lora_rank)


# ---- enforcing -------------------------------------------------------------------------------


def serving_rank(modules: Mapping[str, LowRank], max_lora_rank: int | None, destination: Path) -> int:
    """The one rank a vLLM output is written at: the largest a module keeps. Above the server's
    `max_lora_rank` (16 unless `max_rank=` says) it is refused, naming the modules."""
    limit = DEFAULT_MAX_LORA_RANK if max_lora_rank is None else max_lora_rank
    rank = max((value.rank for value in modules.values()), default=1)
    if rank > limit:
        over = sorted((name for name, value in modules.items() if value.rank > limit), key=natural_key)
        listed = ", ".join(over[:3]) + (f" and {len(over) - 3} more" if len(over) > 3 else "")
        given = "as max_rank= gives it" if max_lora_rank is not None else "its default; max_rank= sets it"
        served = smallest_served_rank(rank)
        serve = f"serve with --max-lora-rank {served} and save with max_rank={served}" if served else \
            f"no vLLM serves rank {rank}"
        raise AdapterError(f"for vLLM: module{'s' if len(over) > 1 else ''} {listed} keep{'' if len(over) > 1 else 's'} "
                           f"rank {rank}, above max_lora_rank {limit} ({given}); give max_rank={limit} to cut "
                           f"every module to at most {limit} by energy, or {serve}", destination)
    return rank


def padded(value: LowRank, rank: int) -> LowRank:
    """`value` with zero directions appended up to `rank` (B·A unchanged)."""
    extra = rank - value.rank
    if extra <= 0:
        return value
    B = torch.cat([value.B, value.B.new_zeros(value.m, extra)], dim=1)
    A = torch.cat([value.A, value.A.new_zeros(extra, value.n)], dim=0)
    return LowRank(B, A)


def refuse(refusals: Sequence[Refusal], destination: Path) -> None:
    """Raise the refusals of an output about to be written (nothing is written)."""
    if refusals:
        raise AdapterError("vLLM would not serve this output: " + "; ".join(r.text() for r in refusals), destination)
