"""Full-weight modules and biases of PEFT adapters (`modules_to_save`, `bias="all"|"lora_only"`; SPEC §7.4).

Besides its LoRA factors, a PEFT adapter may hold whole tensors:

- the modules its config lists in `modules_to_save` (a retrained `lm_head`, `embed_tokens` after
  adding tokens, a classification `score` head). PEFT keeps them in memory as
  `<module>.modules_to_save.<adapter>.<param>` and saves them as `base_model.model.<module>.<param>`
  (`ModulesToSaveWrapper.adapter_state_dict`); a module is listed when its name *ends with* an entry
  (`peft.utils.other._set_trainable`: `key.endswith(target_key)`);
- trained biases (`LoraConfig.bias`): `"all"` saves every `.bias` of the model, `"lora_only"` those of
  the LoRA-wrapped modules (`BaseTuner._get_learnable_bias_state_dict`); a wrapped module's bias is
  `<module>.base_layer.bias`, any other's `<module>.bias`.

They are values, not updates, and the base model is not known, so dipm carries them beside the LoRA
part: validated from the header like the factors, read only when an output writes them, combined only
the way a recipe's affine analysis allows (`ir/full_weights.py`), and written under the key PEFT
loads them from. A tensor is named `<module>.<param>` with the `base_layer` of a wrapped module's
bias removed, so the same bias is one tensor whether its module carries LoRA or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from dipm_lang.errors import AdapterError
from dipm_lang.io.finite import all_finite
from dipm_lang.ir.modules import natural_key

KEY_PREFIX = "base_model.model."
BIAS_MODES = ("none", "all", "lora_only")

FullKind = Literal["module", "bias"]


@dataclass(frozen=True)
class FullTensor:
    """One whole tensor an adapter holds besides its LoRA factors."""

    module: str          # the module it belongs to: "lm_head", "model.layers.0.self_attn.k_proj"
    param: str           # its path inside that module: "weight", "bias", "dense.weight"
    kind: FullKind       # "module": listed in modules_to_save; "bias": a trained bias
    shape: tuple[int, ...]
    dtype: torch.dtype
    key: str             # its key in the file
    offset: int | None = None  # absolute byte offset of its data in a safetensors file

    @property
    def name(self) -> str:
        """`<module>.<param>`: the same tensor in every adapter and every output."""
        return f"{self.module}.{self.param}"

    def describe(self) -> str:
        return f"{'×'.join(map(str, self.shape))} {str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True)
class FullSettings:
    """The config fields that say which extra tensors an adapter may hold."""

    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"


def parse_full_settings(config: Mapping[str, Any], path: str | Path | None) -> FullSettings:
    """`modules_to_save` (a list of module names, or null) and `bias` ("none", "all", "lora_only")."""
    modules = config.get("modules_to_save")
    if modules is None:
        modules = []
    if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) and m for m in modules):
        raise AdapterError(f"'modules_to_save' must be a list of module names, got {modules!r:.80}", path)
    bias = config.get("bias", "none")
    if bias is None:
        bias = "none"
    if not isinstance(bias, str):
        raise AdapterError(f"'bias' must be \"none\", \"all\" or \"lora_only\", got {bias!r:.80}", path)
    return FullSettings(tuple(modules), bias)


def _saved_module(path: str, entries: Sequence[str]) -> tuple[str, str] | None:
    """(module, param) when a key's path lies inside a module that `modules_to_save` lists: the
    outermost prefix whose full name ends with an entry (PEFT's match, on its own module names)."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        module = ".".join(parts[:i])
        if any((KEY_PREFIX + module).endswith(entry) for entry in entries):
            return module, ".".join(parts[i:])
    return None


def classify_keys(keys: Iterable[str], settings: FullSettings, *, shape: Callable[[str], tuple[int, ...]],
                  dtype: Callable[[str], Any], offset: Callable[[str], int | None],
                  path: str | Path) -> tuple[dict[str, FullTensor], list[str]]:
    """Sort the keys that are not LoRA factors into full-weight tensors and unknown keys.

    Raises `AdapterError` (naming `path`) for bias tensors the config does not announce, a tensor
    that is not floating point or empty, and one tensor saved under two keys.
    """
    found: dict[str, FullTensor] = {}
    unknown: list[str] = []
    for key in keys:
        if not key.startswith(KEY_PREFIX):
            unknown.append(key)
            continue
        rest = key[len(KEY_PREFIX):]
        saved = _saved_module(rest, settings.modules_to_save)
        if saved is not None:
            module, param = saved
            kind: FullKind = "module"
        elif rest.endswith(".bias") and rest != ".bias":
            if settings.bias == "none":
                raise AdapterError(f"the file holds the bias {key!r} but the config says bias=\"none\" "
                                   "(PEFT would not load it as part of this adapter)", path)
            if settings.bias not in BIAS_MODES and not settings.bias.endswith("_only"):
                raise AdapterError(f"unknown bias setting {settings.bias!r:.80}; PEFT's are "
                                   "\"none\", \"all\" and \"lora_only\"", path)
            module, param, kind = rest[:-len(".bias")].removesuffix(".base_layer"), "bias", "bias"
        else:
            unknown.append(key)
            continue
        tensor = FullTensor(module, param, kind, tuple(shape(key)), dtype(key), key, offset(key))
        if not isinstance(tensor.dtype, torch.dtype) or not tensor.dtype.is_floating_point:
            raise AdapterError(f"{tensor.name}: full-weight tensors must be floating point, got "
                               f"{str(tensor.dtype).removeprefix('torch.')}", path)
        if not tensor.shape or 0 in tensor.shape:
            raise AdapterError(f"{tensor.name}: empty or scalar tensor {list(tensor.shape)} ({key!r})", path)
        if tensor.name in found:
            raise AdapterError(f"{tensor.name} is saved twice, as {found[tensor.name].key!r} and {key!r}", path)
        found[tensor.name] = tensor
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0]))), unknown


def unknown_keys_message(unknown: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return (f"unknown key layout: {shown}; expected LoRA factors ('base_model.model.<module>.lora_A.weight' / "
            "'.lora_B.weight'), modules the config lists in 'modules_to_save', or biases (config bias=\"all\" "
            "or \"lora_only\")")


def unknown_keys_hint(unknown: Sequence[str]) -> str | None:
    if any(".modules_to_save." in key or ".original_module." in key for key in unknown):
        return ("these are PEFT's in-memory names of a modules_to_save module; save the adapter with "
                "save_pretrained, which writes them as '<module>.<param>'")
    if any(key.startswith(KEY_PREFIX) for key in unknown):
        return "if these are modules_to_save modules, list them in the config's 'modules_to_save'"
    return None


# ---- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FullOutput:
    """One full-weight tensor an output writes: `Σ cᵢ·tensorᵢ` over the terms `(source, coefficient)`,
    whose coefficients sum to 1 (one term with coefficient 1 is the input's tensor, bit for bit)."""

    tensor: FullTensor
    terms: tuple[tuple[Any, float], ...]  # (an AdapterSource holding the tensor, its coefficient)

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def module(self) -> str:
        return self.tensor.module

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.shape

    @property
    def stored_dtype(self) -> torch.dtype:
        """The inputs' dtype of the tensor where they agree, else float32."""
        stored = {source.full[self.name].dtype for source, _ in self.terms}
        return stored.pop() if len(stored) == 1 else torch.float32

    def value(self, dtype: torch.dtype) -> torch.Tensor:
        """The tensor to write, in `dtype`: each input's tensor read once (checked for NaN/Inf), summed
        in float64 and rounded once; a single term with coefficient 1 is copied as it is stored."""
        if len(self.terms) == 1 and self.terms[0][1] == 1.0:
            source = self.terms[0][0]
            raw = _checked(source, self.name, source.read_full(self.name))
            return raw if raw.dtype == dtype else raw.to(dtype)
        total = None
        for source, coeff in self.terms:
            part = _checked(source, self.name, source.read_full(self.name)).to(torch.float64) * coeff
            total = part if total is None else total + part
        assert total is not None
        return total.to(dtype)


def _checked(source: Any, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not all_finite(tensor):
        raise AdapterError(f"{name}: the tensor has NaN or Inf values", getattr(source, "weights_file", source.path))
    return tensor


def output_settings(full: Iterable[FullOutput], lora_modules: Iterable[str]) -> tuple[list[str] | None, str]:
    """The config's `modules_to_save` and `bias` for these tensors beside these LoRA modules:
    `"lora_only"` when every bias belongs to a module with LoRA, else `"all"`."""
    lora = set(lora_modules)
    saved = sorted({out.tensor.module for out in full if out.tensor.kind == "module"}, key=natural_key)
    biases = {out.tensor.module for out in full if out.tensor.kind == "bias"}
    bias = "none" if not biases else ("lora_only" if biases <= lora else "all")
    return (saved or None), bias


def output_key(tensor: FullTensor, lora_modules: Iterable[str], saved_modules: Iterable[str] = ()) -> str:
    """The key PEFT loads `tensor` from, in an output whose LoRA modules are `lora_modules` (PEFT
    wraps exactly those: a bias there sits on the wrapped `base_layer`)."""
    if tensor.kind == "module" or tensor.module in set(saved_modules):
        return f"{KEY_PREFIX}{tensor.module}.{tensor.param}"
    wrapped = ".base_layer" if tensor.module in set(lora_modules) else ""
    return f"{KEY_PREFIX}{tensor.module}{wrapped}.bias"


def longest_key(tensor: FullTensor) -> str:
    """The longest key `output_key` can give (to reserve the output's header)."""
    if tensor.kind == "module":
        return f"{KEY_PREFIX}{tensor.module}.{tensor.param}"
    return f"{KEY_PREFIX}{tensor.module}.base_layer.bias"
