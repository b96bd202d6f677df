"""In-memory inputs: adapters that live in Python objects rather than in folders.

A `MemoryAdapter` is an `AdapterInfo` (so planning, compatibility checks, module grouping and
the writer's template all work unchanged) that also holds its factors. The runtime's loader
reads a module from it with `read` instead of `read_module`, folding the scale into `B` exactly
as the file route does. Load nodes name such an input by a key like `<memory:H>`.

Sources: a mapping module → `LowRank` (scale already folded, as `AdapterValue.modules` holds),
or one adapter of an in-memory `peft.PeftModel` (`from_peft`), with its full-weight modules and
biases (`modules_to_save`, `bias`) as `save_pretrained` would write them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError, UsageError
from dipm_lang.io.finite import all_finite
from dipm_lang.io.full import FullTensor, classify_keys, parse_full_settings, unknown_keys_message
from dipm_lang.io.reader import FACTOR_SUFFIXES, KEY_PREFIX, AdapterInfo, ModuleInfo
from dipm_lang.io.sources import memory_key
from dipm_lang.ir.modules import natural_key

@dataclass(frozen=True, eq=False)
class MemoryAdapter(AdapterInfo):
    """An adapter held in memory: per module the raw factors `(B, A)` and the scale."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    full_tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # by FullTensor.name

    @property
    def on_disk(self) -> bool:
        return False

    def read(self, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> LowRank:
        """Same-shape modules stacked, scales folded into `B` (as `read_modules` does for files)."""
        parts = [self.read_one(name, dtype=dtype, device=device) for name in names]
        return LowRank(torch.stack([p.B for p in parts]), torch.stack([p.A for p in parts]))

    def read_full(self, name: str) -> torch.Tensor:
        """One full-weight tensor as the model holds it (its dtype, bit for bit)."""
        return self.full_tensors[name].detach().to("cpu")

    def read_one(self, name: str, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> LowRank:
        """One module's update with its scale folded into `B`."""
        module = self.modules[name]
        b, a = self.factors[name]
        work = torch.float64 if dtype == torch.float64 else torch.float32
        a = a.detach().to(work)
        b = b.detach().to(work) * module.scale
        for part, tensor in (("A", a), ("B", b)):
            if not all_finite(tensor):
                raise AdapterError(f"module {name!r}: factor {part} has NaN or Inf values", self.path)
        return LowRank(B=b.to(dtype=dtype, device=device).contiguous(), A=a.to(dtype=dtype, device=device).contiguous())


def from_modules(label: str, modules: Mapping[str, Any], *, config: Mapping[str, Any] | None = None,
                 kinds: Mapping[str, str] | None = None,
                 full: Mapping[str, tuple[FullTensor, torch.Tensor]] | None = None) -> MemoryAdapter:
    """An in-memory input from module name → `LowRank` (scale folded into `B`, so scale 1).

    Zero-rank modules are left out (they mean "no update there"). `config` supplies the
    base model and task type the writer copies into outputs; `kinds` marks embedding modules;
    `full` are full-weight modules and biases (name → (what it is, the tensor)) the input carries.
    """
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scales: dict[str, float] = {}
    for name, value in modules.items():
        if not isinstance(name, str):
            raise UsageError(f"input {label!r}: module names must be strings, got {name!r}")
        if not isinstance(value, LowRank):
            raise UsageError(f"input {label!r}: module {name!r} must be a LowRank update, got {type(value).__name__}"
                             " (magnitudes cannot be inputs)")
        if value.B.dim() != 2:
            raise UsageError(f"input {label!r}: module {name!r} must be one m×n update, not a batch")
        if value.rank == 0:
            continue
        factors[name] = (value.B, value.A)
        scales[name] = 1.0
    return _build(label, factors, scales, dict(config or {}), dict(kinds or {}), full=full)


def from_peft(model: Any, adapter_name: str | None = None, *, label: str | None = None) -> MemoryAdapter:
    """An in-memory input from a `peft.PeftModel`'s LoRA adapter (its active one by default).

    Reads `lora_A` / `lora_B` (or the embedding factors) and `scaling[adapter_name]` of every
    LoRA layer; module names drop the `base_model.model.` prefix (SPEC §2). Refuses DoRA and
    other LoRA variants, LoRA biases and convolution LoRA, as the file reader does. `label`
    names the input in its key and in messages (default `peft:ADAPTER`).
    """
    import peft
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, peft.PeftModel):
        raise UsageError(f"expected a peft.PeftModel, got {type(model).__name__}")
    name = adapter_name if adapter_name is not None else active_adapter(model)
    config = model.peft_config.get(name)
    if config is None:
        raise UsageError(f"the PeftModel has no adapter named {name!r}; it has: {', '.join(model.peft_config)}")
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if peft_type != "LORA":
        raise UsageError(f"adapter {name!r} is a {peft_type} adapter; dipm_lang reads only LoRA adapters")
    label = label or f"peft:{name}"
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scales: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for path, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        module = path.removeprefix(KEY_PREFIX)
        if getattr(layer, "use_dora", {}).get(name) or name in getattr(layer, "lora_variant", {}):
            raise AdapterError(f"module {module!r}: DoRA and other LoRA variants are not supported", label)
        if getattr(layer, "lora_bias", {}).get(name):
            raise AdapterError(f"module {module!r}: adapters with lora_bias are not supported", label)
        if name in layer.lora_A:
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            kind = "linear"
        elif name in layer.lora_embedding_A:
            a, b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
            kind = "embedding"
        else:
            continue
        if a.dim() != 2 or b.dim() != 2:
            raise AdapterError(f"module {module!r}: convolution LoRA is not supported", label)
        factors[module] = (b.detach(), a.detach())
        scales[module] = float(layer.scaling[name])
        kinds[module] = kind
    if not factors:
        raise AdapterError(f"adapter {name!r} has no LoRA layers in this model", label)
    config_dict = _config_dict(config)
    return _build(label, factors, scales, config_dict, kinds, full=_full_of(model, name, config_dict, label))


def _full_of(model: Any, adapter_name: str, config: dict[str, Any], label: str
             ) -> dict[str, tuple[FullTensor, torch.Tensor]]:
    """The adapter's full-weight modules and biases, from the state dict `save_pretrained` would write
    (`get_peft_model_state_dict`: wrapper and adapter names removed), classified as the file reader does."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    keys = [key for key in state if not _is_lora_key(key)]
    found, unknown = classify_keys(keys, parse_full_settings(config, label), shape=lambda k: tuple(state[k].shape),
                                   dtype=lambda k: state[k].dtype, offset=lambda k: None, path=label)
    if unknown:
        raise AdapterError(unknown_keys_message(unknown), label)
    return {name: (tensor, state[tensor.key].detach()) for name, tensor in found.items()}


def _is_lora_key(key: str) -> bool:
    return any(key.endswith(suffix) for pair in FACTOR_SUFFIXES.values() for suffix in pair)


def active_adapter(model: Any) -> str:
    """The single active adapter of a PeftModel (several active ones are ambiguous)."""
    active = model.active_adapter
    if isinstance(active, (list, tuple)):
        if len(active) != 1:
            raise UsageError(f"the PeftModel has {len(active)} active adapters ({', '.join(active)}); "
                             "pass (model, 'name') to choose one")
        active = active[0]
    return active


def _config_dict(config: Any) -> dict[str, Any]:
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # JSON-safe (sets, enums) so the writer can use it as it uses a file's adapter_config.json.
    return json.loads(json.dumps(raw, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "value"):  # enums such as TaskType
        return value.value
    return str(value)


def _build(label: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scales: dict[str, float],
           config: dict[str, Any], kinds: dict[str, str],
           full: dict[str, tuple[FullTensor, torch.Tensor]] | None = None) -> MemoryAdapter:
    if not factors:
        raise AdapterError("the input holds no nonzero module", label)
    path = Path(memory_key(label))
    modules: dict[str, ModuleInfo] = {}
    counts: Counter[torch.dtype] = Counter()
    digest = hashlib.sha256()
    for name in sorted(factors, key=natural_key):
        b, a = factors[name]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise AdapterError(f"module {name!r}: B {list(b.shape)} and A {list(a.shape)} are not LoRA factors", path)
        if a.dtype != b.dtype or not a.dtype.is_floating_point:
            raise AdapterError(f"module {name!r}: factors must share one floating-point dtype", path)
        kind = kinds.get(name, "linear")
        a_suffix, b_suffix = FACTOR_SUFFIXES[kind]
        modules[name] = ModuleInfo(name=name, out_features=int(b.shape[0]), in_features=int(a.shape[1]),
                                   rank=int(a.shape[0]), scale=scales[name], dtype=a.dtype,
                                   a_key=f"{KEY_PREFIX}{name}{a_suffix}", b_key=f"{KEY_PREFIX}{name}{b_suffix}",
                                   kind=kind)  # type: ignore[arg-type]
        counts[a.dtype] += int(a.numel() + b.numel())
        # Provenance: a content hash of the factors, as a file input records its file's hash.
        digest.update(name.encode())
        for t in (b, a):
            digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        digest.update(repr(scales[name]).encode())
    full = dict(full or {})
    for name in sorted(full, key=natural_key):  # provenance covers them too, bit for bit
        digest.update(name.encode())
        digest.update(full[name][1].to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    dtype = max(counts, key=lambda d: (counts[d], d.itemsize))
    base = config.get("base_model_name_or_path") or None
    return MemoryAdapter(path=path, config=config, base_model=base, modules=modules, dtype=dtype,
                         digest=digest.hexdigest(), target_modules=list(modules), weights_file=path,
                         fan_in_fan_out=bool(config.get("fan_in_fan_out", False)), factors=factors,
                         full={name: info for name, (info, _) in full.items()},
                         full_tensors={name: tensor for name, (_, tensor) in full.items()})
