"""Which layers a base model has, and which of them `extract` turns into LoRA modules.

The safetensors headers say a tensor's name and shape, not its layer's type: a square GPT-2
`Conv1D` (stored [in, out]) and an `nn.Linear` look alike, a LayerNorm weight is a vector like a
bias. transformers can build any architecture it knows on the `meta` device from config.json
alone — no weights, a few milliseconds once transformers is imported — which gives the exact
layer types PEFT dispatches on (`peft/tuners/lora/layer.py::dispatch_default`). Where it cannot
(a remote-code architecture), names and shapes decide, and the selection says so.

`select_modules` follows PEFT's `target_modules` rules (`tuners_utils.check_target_module_exists`):
a list matches a module whose name equals an entry or ends with "." + entry; a string is a regex
matched against the whole name; "all-linear" is every `nn.Linear` and `Conv1D` except the output
layer (`_maybe_include_all_linear_layers`). Matched modules must be layers PEFT's LoRA has a
matrix form for: Linear, Conv1D, Embedding. Everything else matched is refused with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dipm_lang.errors import AdapterError

if TYPE_CHECKING:
    from dipm_lang.io.base_model import BaseModel, ModuleKind

# transformers 5.x architectures that use `pytorch_utils.Conv1D` (grep of transformers/models).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_decoder",
                                "convbert", "omniasr"})
ALL_LINEAR = "all-linear"

_KINDS: dict[str, ModuleKind] = {"Linear": "linear", "Conv1D": "linear", "Embedding": "embedding"}
# Embedding-like names for the header-only fallback (input and position embeddings).
_EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe", "word_embeddings", "embed_in", "shared", "tok_embeddings",
                    "position_embeddings", "token_type_embeddings", "embed_positions")


@dataclass(frozen=True)
class ModuleTypes:
    """Layer class names by module name, from the architecture built on the meta device."""

    types: dict[str, str]  # module name → class name ("Linear", "Conv1D", "Embedding", "LlamaRMSNorm", …)
    output_embedding: str | None  # the output layer (lm_head), which "all-linear" leaves out


def build_module_types(folder: Path) -> ModuleTypes | None:
    """The layer types of the architecture config.json describes, or None when transformers cannot
    build it. Remote code is never run (`trust_remote_code` stays off); no weights are read.
    (Cached per model by `BaseModel.module_types`.)"""
    try:
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        architecture = next(iter(getattr(config, "architectures", None) or []), None)
        model_class = getattr(transformers, architecture, None) if architecture else None
        with torch.device("meta"):
            model = model_class(config) if model_class else transformers.AutoModel.from_config(config)
    except Exception:  # an unknown or remote-code architecture: the caller falls back to the headers
        return None
    types = {name: type(module).__name__ for name, module in model.named_modules() if name}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_name = next((name for name, module in model.named_modules() if module is output), None) \
        if output is not None else None
    return ModuleTypes(types, output_name)


@dataclass(frozen=True)
class Selection:
    """Modules to extract (name → LoRA kind) and matched modules refused (name → reason)."""

    modules: dict[str, ModuleKind]
    refused: dict[str, str]
    exact: bool  # layer types came from the architecture (False: guessed from names and shapes)


def select_modules(base: BaseModel, target_modules: str | Sequence[str] = ALL_LINEAR, *,
                   exclude_modules: str | Sequence[str] | None = None) -> Selection:
    """Which modules of `base` a LoRA extracted from it targets, by PEFT's `target_modules` rules.

    Raises AdapterError when a list of targets matches no module (PEFT raises then too).
    """
    found = base.module_types()
    candidates = _candidates(base, found)
    output = found.output_embedding if found else _guess_output(base)
    all_linear = isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR
    selected: dict[str, ModuleKind] = {}
    refused: dict[str, str] = {}
    for name, layer in candidates.items():
        if exclude_modules and _matches(exclude_modules, name):
            continue
        if all_linear:
            if layer not in ("Linear", "Conv1D") or name == output:
                continue
        elif not _matches(target_modules, name):
            continue
        reason = _refusal(base, name, layer)
        if reason:
            refused[name] = reason
        else:
            selected[name] = _KINDS[layer]
    if not selected and not refused and not all_linear:
        raise AdapterError(f"target_modules {target_modules!r:.200} match no module of the base model", base.path)
    return Selection(selected, refused, exact=found is not None)


def _matches(targets: str | Sequence[str], name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith("." + target) for target in targets)


def _candidates(base: BaseModel, found: ModuleTypes | None) -> dict[str, str]:
    """Module name → layer class for every module that owns a stored `weight` (or a tied one)."""
    if found is not None:
        out = {}
        for name, layer in found.types.items():
            key, _ = base.resolve(name)
            if key is not None:
                out[name] = layer
        return out
    out = {}
    for key, entry in base.tensors.items():
        if key.endswith(".weight"):
            name = key.removesuffix(".weight")
            out[name] = _guess_layer(name, entry.shape)
    return out


def _guess_layer(name: str, shape: tuple[int, ...]) -> str:
    """A layer class from a tensor's name and shape, for architectures transformers cannot build."""
    if len(shape) == 2:
        return "Embedding" if name.rsplit(".", 1)[-1] in _EMBEDDING_NAMES else "Linear"
    return "Vector" if len(shape) == 1 else f"{len(shape)}-D"


def _guess_output(base: BaseModel) -> str | None:
    return next((key.removesuffix(".weight") for key in base.tensors if key.endswith("lm_head.weight")), None)


def _refusal(base: BaseModel, name: str, layer: str) -> str | None:
    """Why PEFT's LoRA (as dipm_lang writes it) cannot hold this module's update, or None."""
    if layer not in _KINDS:
        if layer == "Vector" or "Norm" in layer:
            return f"{layer}: a vector weight (norm or scale), which LoRA has no layer for"
        return f"{layer}: PEFT's LoRA targets Linear, Conv1D and Embedding layers; dipm_lang writes only those"
    key, _ = base.resolve(name)
    entry = base.tensors[key]
    if len(entry.shape) != 2:
        return f"{layer} with a {len(entry.shape)}-D weight"
    if entry.dtype is None or not entry.dtype.is_floating_point or entry.itemsize < 2:
        return f"weight stored as {entry.code} (quantized)"
    if layer == "Conv1D" and name not in base.conv1d_modules():
        return "Conv1D in an architecture dipm_lang does not know to store it transposed"
    return None
