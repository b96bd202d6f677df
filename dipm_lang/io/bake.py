"""Bake: write W0 + ΔW for every changed module as a model folder with the base's layout (SPEC §7.8).

The output is what `save_pretrained` of the merged model would write, shard for shard: the
same shard names holding the same tensors, the index (recomputed sizes), `config.json`, and the
tokenizer and generation files (`COPIED_FILES`). It is written into an empty folder the caller
gives — a staging folder that the caller renames into place — and nothing else is touched.

Streaming: shards are written one after the other, tensor by tensor. A changed module is
computed when its turn comes, as W0 + ΔW in float32 (float64 when ΔW is float64) and cast once
to the output dtype; the caller's `deltas` is called once per group of equal-shape modules of
the shard (so it can batch them), and only that group's updates wait. Every other tensor is
copied byte for byte from the base in chunks. Peak memory is therefore one group's updates
(factors, or at most `group_bytes` of dense ones) plus about two copies of one module — never
a shard, let alone the model (`benchmarks/bake_memory.py` measures it).

Each output shard's header is known before any data is computed (a merged weight keeps its
shape and dtype), so it is written first and the data streamed after it — unlike the adapter
writer (`safetensors_file.SafetensorsWriter`), which reserves header room for outputs whose
shapes appear as they are computed, and which writes float tensors only. Data is laid out by
decreasing element size, then name (safetensors' own order, which keeps every tensor aligned),
the header lists tensors by name, and JSON files are written with sorted keys: the same inputs
give the same bytes.

Whole tensors (SPEC §7.4: an adapter's `modules_to_save` and trained biases) replace the base's
tensor of the same name, in its stored layout (they are copies of the model's own modules), cast
to the output dtype; one the base lacks, or of another shape (a task head of another size, a
resized vocabulary), is an error naming it — before anything is written.

Tied embeddings: when `tie_word_embeddings` is set and the adapter changes `lm_head` or the input
embedding (by an update or a whole tensor), the output unties them (`tie_word_embeddings: false`) and stores `lm_head.weight`
itself (the embedding plus lm_head's ΔW, if any) in the embedding's shard. That is the model the
adapter means: PEFT's forward applies the two LoRA modules separately, so an embedding LoRA does
not move a tied lm_head (PEFT's `merge_and_unload`, writing into the shared tensor, would).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

import torch
from torch import Tensor

from dipm_lang.backend.dora import DoraForm
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.base_layout import CODE_OF, CONFIG_NAME, DTYPE_CODES, SAFE_INDEX_NAME, Shard, TensorEntry
from dipm_lang.io.base_model import BaseModel, ModuleKind, ModuleWeight, read_into
from dipm_lang.io.finite import all_finite

# Files of the base folder copied unchanged, and why: what `from_pretrained`, tokenizers and
# `generate` read besides the weights. Not copied: other weights (`*.bin`, `consolidated.*`,
# which would be the unmerged base), README.md (its model card describes the base model),
# anything else unknown.
COPIED_FILES: dict[str, str] = {
    "generation_config.json": "generation defaults (eos/pad ids, sampling) that generate() reads",
    "tokenizer.json": "the fast tokenizer",
    "tokenizer_config.json": "tokenizer class, special tokens and chat template",
    "special_tokens_map.json": "special tokens (older tokenizers)",
    "added_tokens.json": "tokens added to the vocabulary (older tokenizers)",
    "tokenizer.model": "SentencePiece model (Llama, Mistral, Gemma)",
    "spiece.model": "SentencePiece model (T5 and kin)",
    "sentencepiece.bpe.model": "SentencePiece model (XLM-R and kin)",
    "vocab.json": "BPE vocabulary (GPT-2 and kin)",
    "merges.txt": "BPE merges (GPT-2 and kin)",
    "vocab.txt": "WordPiece vocabulary (BERT and kin)",
    "chat_template.jinja": "chat template (transformers ≥ 4.43 saves it on its own)",
    "chat_template.json": "chat template of a processor",
    "preprocessor_config.json": "image/audio preprocessing of a multimodal model",
    "processor_config.json": "processor settings of a multimodal model",
}
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "NOTICE")  # the base's terms apply to a model derived from it
COPY_CHUNK = 16 * 2**20
DEFAULT_GROUP_BYTES = 64 * 2**20  # dense float32 updates per deltas() call

Delta = Union[Tensor, LowRank, DoraForm]
"""One module's update in the LoRA layout [m, n] (or a stack [G, m, n])."""
DeltaSource = Callable[[list[str]], Union[Delta, Sequence[Delta]]]
"""Given module names of one shape, their updates: one stack, or one value per name in order."""


@dataclass(frozen=True)
class BakeReport:
    """What `bake` wrote."""

    files: tuple[str, ...]  # every file written into the output folder, by name
    modules: tuple[str, ...]  # the modules whose weights changed
    untied: bool  # tied embeddings were untied (lm_head written on its own)
    dtype: torch.dtype | None  # the dtype floating tensors were cast to (None: kept as stored)


class Replacement(Protocol):
    """A whole tensor that replaces the base's (SPEC §7.4; `io.full.FullOutput` is one): its name
    `<module>.<param>` in PEFT's module naming, its shape in the model's own layout, its value."""

    @property
    def name(self) -> str: ...

    @property
    def module(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def value(self, dtype: torch.dtype) -> Tensor: ...


def check_replacements(base: BaseModel, replacements: Sequence[Replacement]) -> None:
    """Every whole tensor has a counterpart of its shape in the base (AdapterError naming it), from
    the headers alone — so a run can refuse before any work."""
    _replacement_keys(base, replacements, {})


@dataclass(frozen=True)
class _Out:
    """One tensor of an output shard: where its bytes come from."""

    key: str
    code: str
    shape: tuple[int, ...]
    source: TensorEntry
    module: ModuleWeight | None  # changed: W0 + ΔW of this module
    replacement: Replacement | None = None  # replaced by a whole tensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_CODES[self.code][0]


def bake(base: BaseModel, deltas: DeltaSource, out_dir: str | Path, *,
         modules: Mapping[str, ModuleKind] | Iterable[str], dtype: torch.dtype | None = None,
         group_bytes: int = DEFAULT_GROUP_BYTES, replacements: Sequence[Replacement] = ()) -> BakeReport:
    """Write base + updates into the empty folder `out_dir` as a model folder (see the module doc).

    `modules` names the changed modules (name → "linear"/"embedding", or names: linear);
    `deltas(names)` returns their updates in the LoRA layout, as dense tensors, `LowRank`s or
    `DoraForm`s (evaluated here against W0). `dtype` casts every floating tensor (and the
    config's dtype); by default each tensor keeps its stored dtype. AdapterError for a module the
    base lacks or whose update has the wrong shape or is not finite, naming the module.
    `replacements`: whole tensors written instead of the base's (see the module doc).
    """
    out = _empty_folder(out_dir, base)
    kinds = dict(modules) if isinstance(modules, Mapping) else {name: "linear" for name in modules}
    weights = [base.weight(name, kind) for name, kind in kinds.items()]
    by_key: dict[str, ModuleWeight] = {}
    for weight in weights:
        if weight.tied:  # a tied lm_head gets a tensor of its own (see _untie)
            continue
        if weight.key in by_key:
            raise AdapterError(f"modules {by_key[weight.key].name!r} and {weight.name!r} both map to base tensor "
                               f"{weight.key!r}", base.path)
        by_key[weight.key] = weight
    replaced, tied_head = _replacement_keys(base, replacements, by_key)
    untie, lm_head = _untie(base, weights, by_key, replaced, tied_head)
    plans = _plan(base, by_key, lm_head, lm_head is not None and lm_head.name in kinds, dtype, replaced, tied_head)

    written = []
    for shard in base.layout.shards:
        _write_shard(base, shard, plans[shard.name], out / shard.name, deltas, group_bytes)
        written.append(shard.name)
    if base.layout.sharded:
        _write_json(out / SAFE_INDEX_NAME, _index(base, plans))
        written.append(SAFE_INDEX_NAME)
    _write_json(out / CONFIG_NAME, _config(base, untie, dtype))
    written.append(CONFIG_NAME)
    written += _copy_files(base, out)
    changed = [w.name for w in weights] + [r.module for r in replacements if r.module not in kinds]
    return BakeReport(tuple(sorted(written)), tuple(dict.fromkeys(changed)), untie, dtype)


def _replacement_keys(base: BaseModel, replacements: Sequence[Replacement], by_key: Mapping[str, ModuleWeight]
                      ) -> tuple[dict[str, Replacement], Replacement | None]:
    """Each whole tensor's base key (the module's weight key with its param in place of `weight`),
    checked to exist with the same shape; and a replaced lm_head that the base ties to the
    embedding (it becomes a tensor of its own: see _untie)."""
    keys: dict[str, Replacement] = {}
    tied_head = None
    for r in replacements:
        owner, _, leaf = r.name.rpartition(".")  # the submodule holding the tensor: its weight locates it
        weight_key, tied = base.resolve(owner)
        if tied and leaf == "weight":
            tied_head = r
            entry = base.tensors[weight_key]
        else:
            key = None if weight_key is None or tied else f"{weight_key.removesuffix('.weight')}.{leaf}"
            entry = base.tensors.get(key) if key is not None else None
            if entry is None:
                raise AdapterError(f"the adapter's whole tensor {r.name!r} (modules_to_save or a trained bias) has "
                                   "no counterpart in the base model, so baking cannot place it (is it the base "
                                   "the adapter was trained on, with the same task head?)", base.path)
            if key in by_key:  # PEFT trains a module either by LoRA or whole, never both (checked when planning)
                raise AdapterError(f"base tensor {key!r} has both an update and a whole tensor", base.path)
            keys[key] = r
        if tuple(entry.shape) != tuple(r.shape):
            raise AdapterError(f"the adapter's whole tensor {r.name!r} is {list(r.shape)} but the base's "
                               f"{entry.key!r} is {list(entry.shape)} (another head size or vocabulary)", base.path)
    return keys, tied_head


def _empty_folder(out_dir: str | Path, base: BaseModel) -> Path:
    out = Path(out_dir).expanduser().resolve()
    if not out.is_dir():
        raise AdapterError("the bake output must be an existing, empty folder (the staging folder)", out)
    if any(out.iterdir()):
        raise AdapterError("the bake output folder is not empty; bake writes only into an empty folder", out)
    if out == base.path or base.path in out.parents:
        raise AdapterError("the bake output is inside the base model's folder, which is never written", out)
    return out


def _untie(base: BaseModel, weights: Sequence[ModuleWeight], by_key: Mapping[str, ModuleWeight],
           replaced: Mapping[str, Replacement] = {}, tied_head: Replacement | None = None
           ) -> tuple[bool, ModuleWeight | None]:
    """(untie?, the lm_head module to store on its own: a tied one, or a stand-in copying the embedding)."""
    if not base.tie_word_embeddings:
        return False, None
    tied = next((w for w in weights if w.tied), None)
    if tied is None and tied_head is not None:
        tied = base.weight(tied_head.name.removesuffix(".weight"))
    embedding = base.input_embedding_key()
    lm_stored = base.resolve("lm_head")
    changed = set(by_key) | set(replaced)
    changes_tied_pair = tied is not None or (embedding in changed) or (lm_stored[0] in changed and not lm_stored[1])
    if not changes_tied_pair:
        return False, None
    if tied is None and lm_stored[1]:  # the embedding changes, the tied lm_head keeps the old embedding
        tied = base.weight("lm_head")
    return True, tied


def _plan(base: BaseModel, by_key: Mapping[str, ModuleWeight], lm_head: ModuleWeight | None, lm_changed: bool,
          dtype: torch.dtype | None, replaced: Mapping[str, Replacement] = {},
          tied_head: Replacement | None = None) -> dict[str, list[_Out]]:
    """The tensors of every output shard, with their output dtype codes; an untied `lm_head` (a
    copy of the embedding, merged with its own update when `lm_changed`, or the adapter's whole
    lm_head) joins the embedding's shard."""
    def code(entry: TensorEntry) -> str:
        floating = entry.dtype is not None and entry.dtype.is_floating_point
        return CODE_OF[dtype] if dtype is not None and floating else entry.code

    plans: dict[str, list[_Out]] = {shard.name: [] for shard in base.layout.shards}
    for shard in base.layout.shards:
        for key in shard.keys:
            entry = base.tensors[key]
            plans[shard.name].append(_Out(key, code(entry), entry.shape, entry, by_key.get(key), replaced.get(key)))
    if lm_head is not None:
        key = f"{lm_head.name}.weight"
        if key in base.tensors:
            raise AdapterError(f"cannot untie {lm_head.name!r}: the base already has a tensor {key!r}", base.path)
        entry = lm_head.entry
        plans[entry.shard].append(_Out(key, code(entry), entry.shape, entry, lm_head if lm_changed else None,
                                       tied_head))
    return plans


# --- writing one shard ---------------------------------------------------------------------


def _write_shard(base: BaseModel, shard: Shard, plan: list[_Out], file: Path, deltas: DeltaSource,
                 group_bytes: int) -> None:
    """Write one output shard: header first (known up front), then each tensor's data in turn.

    A changed module is merged when its turn comes; the first member of a group triggers one
    `deltas` call for the whole group, whose values wait (as returned: factors, or dense updates
    of at most `group_bytes`) until their tensors are written.
    """
    order = sorted(plan, key=lambda t: (-DTYPE_CODES[t.code][0], t.key))
    offsets, position = {}, 0
    for tensor in order:
        offsets[tensor.key] = (position, position + tensor.nbytes)
        position += tensor.nbytes
    header: dict[str, object] = {"__metadata__": dict(sorted((shard.metadata or {"format": "pt"}).items()))}
    for tensor in sorted(plan, key=lambda t: t.key):
        header[tensor.key] = {"dtype": tensor.code, "shape": list(tensor.shape), "data_offsets": list(offsets[tensor.key])}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    group_of = _groups([t for t in order if t.module is not None], group_bytes)
    waiting: dict[str, Delta] = {}
    with open(file, "xb", buffering=0) as handle:
        _write_all(handle, len(text).to_bytes(8, "little") + text)
        for tensor in order:
            if tensor.module is not None:
                if tensor.key not in waiting:
                    waiting.update(_call(deltas, group_of[tensor.key]))
                _write_all(handle, _bytes(_merge(base, tensor, waiting.pop(tensor.key))))
            elif tensor.replacement is not None:
                _write_all(handle, _bytes(_whole(tensor, base)))
            elif tensor.code == tensor.source.code:
                _copy_bytes(base, tensor.source, handle)
            else:
                _write_all(handle, _bytes(base.read_tensor(tensor.source.key).to(DTYPE_CODES[tensor.code][1])))
        os.fsync(handle.fileno())


def _groups(changed: list[_Out], group_bytes: int) -> dict[str, list[_Out]]:
    """Chunks of same-shape, same-kind changed tensors (in write order), each at most `group_bytes`
    of float32 ΔW; maps every member's key to its chunk."""
    by_shape: dict[tuple, list[_Out]] = {}
    for tensor in changed:
        by_shape.setdefault((tensor.module.shape, tensor.module.kind), []).append(tensor)
    group_of: dict[str, list[_Out]] = {}
    for (shape, _kind), members in by_shape.items():
        size = max(1, group_bytes // max(1, 4 * shape[0] * shape[1]))
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            group_of.update((tensor.key, chunk) for tensor in chunk)
    return group_of


def _call(deltas: DeltaSource, chunk: list[_Out]) -> dict[str, Delta]:
    """Run `deltas` for one chunk; its value(s), one per tensor key."""
    names = [t.module.name for t in chunk]
    value = deltas(list(names))
    if isinstance(value, (Tensor, LowRank, DoraForm)):
        values: Sequence[Delta] = [value[i] for i in range(len(names))] if _batched(value) else [value]
    else:
        values = list(value)
    if len(values) != len(names):
        raise ValueError(f"deltas({names}) returned {len(values)} updates")
    return {t.key: v for t, v in zip(chunk, values)}


def _merge(base: BaseModel, tensor: _Out, delta: Delta) -> Tensor:
    """W0 + ΔW of one module in its stored layout and output dtype, summed in float32 (float64
    for a float64 ΔW) and cast once. Works in place on the stored weight: about two copies of
    the module at a time."""
    module = tensor.module
    work = torch.float64 if delta.dtype == torch.float64 else torch.float32
    # W0 is checked for NaN/Inf through the result (one pass instead of two); see below.
    weight = base.read_weights([module.name], kinds=module.kind, dtype=work, layout="stored", check_finite=False)[0]
    in_lora_layout = weight.mT if module.transpose else weight  # a view
    dense = delta.dense(in_lora_layout) if isinstance(delta, DoraForm) else \
        delta.dense() if isinstance(delta, LowRank) else delta
    if tuple(dense.shape) != module.shape:
        raise AdapterError(f"module {module.name!r}: its update is {list(dense.shape)} but the base weight "
                           f"{module.key!r} is {list(module.shape)} in the LoRA layout", base.path)
    in_lora_layout += dense.to(work)
    del dense
    target = DTYPE_CODES[tensor.code][1]
    weight = weight.to(target)
    if not all_finite(weight):
        base.read_weights([module.name], kinds=module.kind, dtype=work)  # names W0's NaN/Inf, if it is W0's
        raise AdapterError(f"module {module.name!r}: W0 + ΔW has NaN or Inf values in {target}", base.path)
    return weight


def _whole(tensor: _Out, base: BaseModel) -> Tensor:
    """A replacing whole tensor in the output dtype (contiguous, checked finite)."""
    value = tensor.replacement.value(DTYPE_CODES[tensor.code][1]).contiguous()
    if not all_finite(value):
        raise AdapterError(f"the adapter's whole tensor {tensor.replacement.name!r} has NaN or Inf values in "
                           f"{DTYPE_CODES[tensor.code][1]}", base.path)
    return value


def _batched(value: Delta) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 3
    return len(value.K.batch_shape if isinstance(value, DoraForm) else value.batch_shape) == 1


def _bytes(tensor: Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")


def _copy_bytes(base: BaseModel, entry: TensorEntry, handle) -> None:
    """Copy a tensor's stored bytes from its base shard in chunks (any dtype, never decoded)."""
    done = 0
    while done < entry.nbytes:
        size = min(COPY_CHUNK, entry.nbytes - done)
        chunk = bytearray(size)
        part = TensorEntry(entry.key, entry.shard, "U8", (size,), entry.start + done, size)
        read_into(base.layout, part, chunk)
        _write_all(handle, chunk)
        done += size


def _write_all(handle, data) -> None:
    # An unbuffered write may be short; loop until every byte is out.
    view = memoryview(data).cast("B")
    while view:
        view = view[handle.write(view):]


# --- index, config and other files ---------------------------------------------------------


def _index(base: BaseModel, plans: Mapping[str, list[_Out]]) -> dict:
    index = base.layout.index or {}
    metadata = dict(index.get("metadata") or {})
    tensors = [t for plan in plans.values() for t in plan]
    metadata["total_size"] = sum(t.nbytes for t in tensors)
    if "total_parameters" in metadata:
        metadata["total_parameters"] = sum(math.prod(t.shape) for t in tensors)
    weight_map = {t.key: shard for shard, plan in plans.items() for t in plan}
    return {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}


def _config(base: BaseModel, untie: bool, dtype: torch.dtype | None) -> dict:
    config = json.loads(json.dumps(base.config))  # a deep copy
    sections = [config] + ([config["text_config"]] if isinstance(config.get("text_config"), dict) else [])
    if untie:
        for section in sections:
            if section is config or "tie_word_embeddings" in section:
                section["tie_word_embeddings"] = False
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        for section in sections:
            keys = [k for k in ("dtype", "torch_dtype") if k in section] or (["dtype"] if section is config else [])
            for key in keys:
                section[key] = name
    return config


def _write_json(file: Path, value: object) -> None:
    with open(file, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _copy_files(base: BaseModel, out: Path) -> list[str]:
    """Copy COPIED_FILES, licence files and (for remote-code models) the code config.json points to."""
    names = [name for name in COPIED_FILES if (base.path / name).is_file()]
    names += sorted(p.name for p in base.path.iterdir() if p.is_file() and p.name.upper().startswith(LICENSE_PREFIXES))
    if isinstance(base.config.get("auto_map"), dict):  # custom modelling code the config refers to
        names += sorted(p.name for p in base.path.glob("*.py") if p.is_file())
    for name in names:
        shutil.copyfile(base.path / name, out / name)  # follows the Hub cache's symlinks to the blobs
    return names
