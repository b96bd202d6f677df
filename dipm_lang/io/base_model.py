"""A base model as an input source (SPEC §7.8): validated up front, read one module at a time.

`open_base_model(folder)` checks everything that can be checked without tensor data — the
layout (`base_layout`), `config.json`, quantization — and `BaseModel.read_weights` then reads
the weights of a group of same-shape modules straight into a `[G, m, n]` stack in the LoRA
layout, so they add to an adapter's ΔW = B @ A without further thought.

Name mapping (the module names are the adapter's keys without `base_model.model.`):
- a module `name` is the tensor `name.weight`; a file saved from the bare base model (GPT-2 on
  the Hub: `h.0.attn.c_attn.weight` where PEFT says `transformer.h.0.attn.c_attn`) is matched
  by dropping the head's prefix, and the converse by adding a unique one;
- layouts (PEFT 0.21.2, `lora/layer.py` `get_delta_weight`): `nn.Linear` stores [out, in], the
  LoRA layout itself; transformers' `Conv1D` (GPT-2 and kin) stores [in, out], which PEFT's
  `fan_in_fan_out` transposes — and PEFT decides that by the layer's type, overriding the
  config flag (`dispatch_default`), so we do too; `nn.Embedding` stores [vocab, dim] while the
  LoRA layout `lora_embedding_B @ lora_embedding_A` is [dim, vocab] (PEFT transposes it on
  merge): both are transposed on read;
- a tied `lm_head` (absent from the files, `tie_word_embeddings`) reads the input embedding's
  tensor, untransposed: `nn.Linear(dim, vocab)` is [vocab, dim] like the embedding.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor

from dipm_lang.errors import AdapterError
from dipm_lang.io.base_layout import CONFIG_NAME, ModelLayout, TensorEntry, read_json, read_layout, weights_files
from dipm_lang.io.finite import all_finite

if TYPE_CHECKING:
    from dipm_lang.io.base_modules import ModuleTypes

ModuleKind = Literal["linear", "embedding"]

# Keys that only quantized checkpoints have (bitsandbytes 4/8-bit, GPTQ/AWQ, FP8/compressed-tensors).
_QUANTIZED_SUFFIXES = (".qweight", ".qzeros", ".g_idx", ".absmax", ".quant_map", ".nested_absmax",
                       ".nested_quant_map", ".SCB", ".weight_format", ".weight_scale_inv", ".weight_scale",
                       ".weight_packed", ".weight_zero_point")
_QUANTIZED_MARKERS = (".quant_state.",)
_UNQUANTIZED_HINT = "give the folder of the unquantized base model (its float16/bfloat16/float32 weights)"

# Names of input token embeddings across transformers' architectures (Llama, GPT-2, BERT, GPT-NeoX,
# T5, InternLM…), to find the tensor a tied lm_head reads.
_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in", "shared", "tok_embeddings")


class ModuleSpec(Protocol):
    """What the shape checks need of an adapter's module (the adapter reader's ModuleInfo fits)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class ModuleWeight:
    """Where one module's weight is stored and how it maps onto the LoRA ΔW layout."""

    name: str  # the PEFT module name
    kind: ModuleKind
    key: str  # the tensor's name in the folder
    entry: TensorEntry
    transpose: bool  # stored as the transpose of the LoRA layout (Conv1D, embedding)
    tied: bool = False  # a tied lm_head read from the input embedding
    conv1d: bool = False  # a transformers Conv1D (PEFT needs fan_in_fan_out=True for it)

    @property
    def shape(self) -> tuple[int, int]:
        """(m, n) in the LoRA layout: the shape of this module's ΔW."""
        rows, cols = self.entry.shape
        return (cols, rows) if self.transpose else (rows, cols)


@dataclass(frozen=True, eq=False)
class BaseModel:
    """A validated model folder; tensors stay on disk until `read_weights`."""

    path: Path
    config: dict[str, Any]
    layout: ModelLayout
    num_hidden_layers: int | None
    tie_word_embeddings: bool
    dtype: torch.dtype  # the model's dtype (config's `dtype`/`torch_dtype`, else the dominant stored one)
    model_type: str | None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tensors(self) -> dict[str, TensorEntry]:
        return self.layout.tensors

    # --- name mapping ---------------------------------------------------------------------

    def weight(self, name: str, kind: ModuleKind = "linear") -> ModuleWeight:
        """The stored weight of PEFT module `name`, or an AdapterError naming the module and the tensor."""
        if kind not in ("linear", "embedding"):
            raise ValueError(f"kind must be 'linear' or 'embedding', got {kind!r}")
        key, tied = self.resolve(name)
        if key is None:
            close = difflib.get_close_matches(f"{name}.weight", list(self.tensors), n=1)
            raise AdapterError(f"module {name!r}: the base model has no tensor {name + '.weight'!r}", self.path,
                               hint=f"did you mean {close[0]!r}?" if close else None)
        entry = self.tensors[key]
        if len(entry.shape) != 2:
            raise AdapterError(f"module {name!r}: base tensor {key!r} has shape {list(entry.shape)}; a LoRA "
                               "module's weight is a matrix", self.path / entry.shard)
        if entry.dtype is None or not entry.dtype.is_floating_point or entry.itemsize < 2:
            raise AdapterError(f"module {name!r}: base tensor {key!r} is stored as {entry.code}, a quantized "
                               "format", self.path / entry.shard, hint=_UNQUANTIZED_HINT)
        conv1d = kind == "linear" and not tied and name in self.conv1d_modules()
        return ModuleWeight(name, kind, key, entry, transpose=conv1d or kind == "embedding", tied=tied,
                            conv1d=conv1d)

    def resolve(self, name: str) -> tuple[str | None, bool]:
        """(tensor key, tied) for PEFT module `name` by the mapping rules above; (None, False) when
        nothing fits. `weight` adds the checks and the layout."""
        tensors = self.tensors
        key = f"{name}.weight"
        if key in tensors:
            return key, False
        heads, by_tail = self._prefix_maps()
        head, _, rest = name.partition(".")
        # Saved from the bare base model: its keys lack the head model's first component.
        if rest and f"{rest}.weight" in tensors and head not in heads:
            return f"{rest}.weight", False
        # Module names of a bare model, a file of a model with a head: one leading component more.
        prefixed = by_tail.get(key, [])
        if len(prefixed) == 1:
            return prefixed[0], False
        if self.tie_word_embeddings and name.rsplit(".", 1)[-1] == "lm_head":
            embedding = self.input_embedding_key()
            if embedding is not None:
                return embedding, True
        return None, False

    def _prefix_maps(self) -> tuple[frozenset[str], dict[str, list[str]]]:
        """First components of all keys, and keys by what follows their first component."""
        if "prefixes" not in self._cache:
            by_tail: dict[str, list[str]] = {}
            for key in self.tensors:
                head, _, tail = key.partition(".")
                if tail:
                    by_tail.setdefault(tail, []).append(key)
            self._cache["prefixes"] = (frozenset(k.partition(".")[0] for k in self.tensors), by_tail)
        return self._cache["prefixes"]

    def input_embedding_key(self) -> str | None:
        """The tensor of the input token embedding (what a tied lm_head shares), if it can be told."""
        if "input_embedding" not in self._cache:
            vocab = _config_int(self.config, "vocab_size")
            found = [key for key, entry in self.tensors.items()
                     if key.removesuffix(".weight").rsplit(".", 1)[-1] in _INPUT_EMBEDDINGS
                     and key.endswith(".weight") and len(entry.shape) == 2
                     and (vocab is None or entry.shape[0] == vocab)]
            self._cache["input_embedding"] = found[0] if len(found) == 1 else None
        return self._cache["input_embedding"]

    def module_types(self) -> ModuleTypes | None:
        """Layer classes by module name, from the architecture built on the meta device (cached;
        None when transformers cannot build it). See `base_modules`."""
        if "types" not in self._cache:
            from dipm_lang.io.base_modules import build_module_types

            self._cache["types"] = build_module_types(self.path)
        return self._cache["types"]

    def conv1d_modules(self) -> frozenset[str]:
        """Names of transformers `Conv1D` layers (only some architectures have any)."""
        if "conv1d" not in self._cache:
            from dipm_lang.io.base_modules import CONV1D_MODEL_TYPES

            names: frozenset[str] = frozenset()
            if self.model_type in CONV1D_MODEL_TYPES:
                types = self.module_types()
                if types is None:
                    raise AdapterError(f"cannot tell which layers of this {self.model_type} model are Conv1D "
                                       "(stored transposed): transformers could not build it from config.json",
                                       self.path / CONFIG_NAME)
                names = frozenset(n for n, t in types.types.items() if t == "Conv1D")
            self._cache["conv1d"] = names
        return self._cache["conv1d"]

    def check_modules(self, modules: Mapping[str, ModuleSpec | tuple[int, int]]) -> dict[str, ModuleWeight]:
        """Check an adapter's modules against this base: each must exist with the adapter's (m, n).

        `modules` maps names to objects with `.shape` and `.kind` (the adapter reader's
        ModuleInfo) or to plain `(m, n)` (linear). Raises AdapterError naming the module and both shapes.
        """
        found = {}
        for name, spec in modules.items():
            shape, kind = (tuple(spec), "linear") if isinstance(spec, tuple) else (tuple(spec.shape), spec.kind)
            weight = self.weight(name, kind)
            if weight.shape != shape:
                stored = list(weight.entry.shape)
                layout = f" (as ΔW: {weight.shape[0]}×{weight.shape[1]})" if weight.transpose else ""
                raise AdapterError(f"module {name!r}: the adapter's update is {shape[0]}×{shape[1]} but the base "
                                   f"tensor {weight.key!r} is {stored}{layout}", self.path / weight.entry.shard)
            found[name] = weight
        return found

    # --- reading --------------------------------------------------------------------------

    def read_weights(self, names: Sequence[str], *, kinds: ModuleKind | Mapping[str, ModuleKind] = "linear",
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     layout: Literal["lora", "stored"] = "lora", check_finite: bool = True) -> Tensor:
        """The weights of same-shape modules as one stack `[G, m, n]` in the LoRA ΔW layout.

        Each tensor is read on its own (never a whole shard), straight into the stack when its
        stored dtype is `dtype`, else converted once, and transposed where the layout asks
        (`layout="stored"` keeps the file's layout: bake adds ΔWᵀ in place there). NaN/Inf is an
        AdapterError naming tensor and shard (`check_finite=False` leaves that to a caller that
        checks its own result anyway).
        """
        weights = [self.weight(name, kinds if isinstance(kinds, str) else kinds.get(name, "linear"))
                   for name in names]
        if not weights:
            raise ValueError("read_weights needs at least one module")
        shapes = [w.shape if layout == "lora" else w.entry.shape for w in weights]
        if any(shape != shapes[0] for shape in shapes):
            raise ValueError(f"read_weights reads modules of one shape together, got {shapes}")
        out = torch.empty(len(weights), *shapes[0], dtype=dtype)
        for i, weight in enumerate(weights):
            transpose = weight.transpose and layout == "lora"
            if weight.entry.dtype == dtype and not transpose:
                read_into(self.layout, weight.entry, memoryview(out[i].view(torch.uint8).numpy()).cast("B"))
                stored = out[i]
            else:
                stored = self.read_tensor(weight.key)
                out[i].copy_(stored.mT if transpose else stored)
            if check_finite and not all_finite(out[i]):
                what = "has NaN or Inf values" if not all_finite(stored) else f"overflows {dtype}"
                raise AdapterError(f"module {weight.name!r}: base tensor {weight.key!r} {what}",
                                   self.path / weight.entry.shard)
        return out.to(device)

    def read_tensor(self, key: str) -> Tensor:
        """One stored tensor, in its stored dtype and shape, read from its offset alone."""
        entry = self.tensors[key]
        if entry.dtype is None:
            raise AdapterError(f"tensor {key!r}: dtype {entry.code} has no torch type", self.path / entry.shard)
        out = torch.empty(entry.shape, dtype=entry.dtype)
        read_into(self.layout, entry, memoryview(out.view(torch.uint8).numpy()).cast("B") if entry.nbytes else b"")
        return out


def read_into(layout: ModelLayout, entry: TensorEntry, target) -> None:
    """Copy one tensor's bytes into `target` (a writable buffer of `entry.nbytes`), refusing a
    shard changed since it was validated."""
    shard = layout.shard_of[entry.shard]
    file = layout.folder / entry.shard
    try:
        with open(file, "rb", buffering=0) as handle:
            stat = os.fstat(handle.fileno())
            if (stat.st_size, stat.st_mtime_ns) != (shard.size, shard.mtime_ns):
                raise AdapterError("the file changed since the base model was opened; run again", file)
            handle.seek(entry.start)
            view, done = memoryview(target), 0
            while done < entry.nbytes:
                count = handle.readinto(view[done:])
                if not count:
                    raise AdapterError(f"tensor {entry.key!r}: the file ends early", file)
                done += count
    except OSError as exc:
        raise AdapterError(f"cannot read tensor {entry.key!r}: {exc}", file) from None


# --- opening ---------------------------------------------------------------------------------


def open_base_model(path: str | Path) -> BaseModel:
    """Validate a model folder (`save_pretrained`'s layout) without reading tensor data.

    Raises AdapterError naming the offending file for: a missing folder or config.json, pickled
    weights (refused, with how to convert), a missing shard, an index that does not describe its
    shards, duplicate tensors, malformed headers, and quantized weights.
    """
    folder = _folder(path)
    layout = read_layout(folder)
    config = _read_config(folder)
    _check_unquantized(config, layout, folder / CONFIG_NAME)
    return BaseModel(
        path=folder,
        config=config,
        layout=layout,
        num_hidden_layers=_config_int(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        tie_word_embeddings=_tied(config),
        dtype=_model_dtype(config, layout),
        model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
    )


def check_base_folder(path: str | Path) -> dict[str, Any]:
    """The cheap check of `dipm check --base DIR` (SPEC §7.8): config.json and the shard index
    only — shards are stat'ed, not opened. Returns the config."""
    folder = _folder(path)
    weights_files(folder)
    config = _read_config(folder)
    _check_unquantized(config, None, folder / CONFIG_NAME)
    return config


def _folder(path: str | Path) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise AdapterError("base model folder not found" if not folder.exists() else
                           "not a folder; give the model folder (with config.json)", folder)
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / CONFIG_NAME
    if not config_file.exists():
        raise AdapterError(f"missing {CONFIG_NAME}; not a model folder as save_pretrained writes it", config_file)
    config = read_json(config_file, CONFIG_NAME)
    if not isinstance(config, dict):
        raise AdapterError("config.json must be a JSON object", config_file)
    return config


def _check_unquantized(config: Mapping[str, Any], layout: ModelLayout | None, config_file: Path) -> None:
    quantization = config.get("quantization_config") or _text_config(config).get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else "unknown"
        raise AdapterError(f"the base model is quantized (quantization_config, quant_method {method!r}); "
                           "W0 + ΔW needs the full-precision weights", config_file, hint=_UNQUANTIZED_HINT)
    for key, entry in (layout.tensors if layout else {}).items():
        if key.endswith(_QUANTIZED_SUFFIXES) or any(marker in key for marker in _QUANTIZED_MARKERS):
            raise AdapterError(f"the base model is quantized (tensor {key!r}); W0 + ΔW needs the "
                               "full-precision weights", layout.folder / entry.shard, hint=_UNQUANTIZED_HINT)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a multimodal config (or an empty mapping)."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else {}


def _config_int(config: Mapping[str, Any], *keys: str) -> int | None:
    for source in (config, _text_config(config)):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _tied(config: Mapping[str, Any]) -> bool:
    """config's `tie_word_embeddings` (transformers' default, True, when absent)."""
    for source in (config, _text_config(config)):
        value = source.get("tie_word_embeddings")
        if isinstance(value, bool):
            return value
    return True


_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


def _model_dtype(config: Mapping[str, Any], layout: ModelLayout) -> torch.dtype:
    for key in ("dtype", "torch_dtype"):
        name = config.get(key) or _text_config(config).get(key)
        if isinstance(name, str) and name.removeprefix("torch.") in _DTYPE_NAMES:
            return _DTYPE_NAMES[name.removeprefix("torch.")]
    counts: dict[torch.dtype, int] = {}
    for entry in layout.tensors.values():
        if entry.dtype is not None and entry.dtype.is_floating_point:
            counts[entry.dtype] = counts.get(entry.dtype, 0) + entry.nbytes
    return max(counts, key=counts.__getitem__) if counts else torch.float32


# --- pairs of models (extract) ---------------------------------------------------------------


def check_pair(tuned: BaseModel, base: BaseModel) -> None:
    """A fine-tuned model and its base must hold the same tensors with the same shapes and dtypes."""
    missing = sorted(set(base.tensors) - set(tuned.tensors))
    extra = sorted(set(tuned.tensors) - set(base.tensors))
    if missing or extra:
        which, model, other = (missing[0], tuned, base) if missing else (extra[0], base, tuned)
        raise AdapterError(f"tensor {which!r} of {other.path} is not in this model; a fine-tuned model and its "
                           "base must hold the same tensors", model.path)
    for key, entry in base.tensors.items():
        other = tuned.tensors[key]
        if (other.shape, other.code) != (entry.shape, entry.code):
            raise AdapterError(f"tensor {key!r} is {list(other.shape)} {other.code} here but {list(entry.shape)} "
                               f"{entry.code} in the base model {base.path}", tuned.path / other.shard)


def read_pair(tuned: BaseModel, base: BaseModel, names: Sequence[str], *,
              kinds: ModuleKind | Mapping[str, ModuleKind] = "linear",
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """W_tuned − W0 for same-shape modules, `[G, m, n]` in the LoRA layout (for `extract`).

    The two models must map every name to tensors of one shape and dtype (an AdapterError
    naming the module otherwise). The difference is taken in `dtype` after converting each side
    (exact for bf16/f16 checkpoints read in float32).
    """
    for name in names:
        kind = kinds if isinstance(kinds, str) else kinds.get(name, "linear")
        a, b = tuned.weight(name, kind), base.weight(name, kind)
        if (a.entry.shape, a.entry.code, a.transpose) != (b.entry.shape, b.entry.code, b.transpose):
            raise AdapterError(f"module {name!r}: {a.key!r} is {list(a.entry.shape)} {a.entry.code} in the tuned "
                               f"model but {b.key!r} is {list(b.entry.shape)} {b.entry.code} in the base "
                               f"{base.path}", tuned.path / a.entry.shard)
    delta = tuned.read_weights(names, kinds=kinds, dtype=dtype)
    delta -= base.read_weights(names, kinds=kinds, dtype=dtype)
    return delta.to(device)

