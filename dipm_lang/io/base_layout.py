"""The files of a model folder as `save_pretrained` writes it, checked from headers and index alone.

A base model is read module by module, so before any tensor is read we know, for every tensor
name, which shard holds it and where: `read_layout` parses each shard's safetensors header (8-byte
little-endian length, JSON) and the shard index, and refuses anything inconsistent — a missing
shard, an index naming a tensor its shard lacks (or a tensor no index names), a tensor in two
shards or twice in one header, data offsets that overlap or leave gaps, pickled or quantized
weights. We parse the header ourselves rather than through `safe_open` because we need what it
does not expose: duplicate keys (`json` keeps the last silently), absolute data offsets for
seek-and-read, and the stored order of the data.

Layouts (transformers' `modeling_utils` precedence): `model.safetensors` if present, else
`model.safetensors.index.json` with its shards. Pickled weights (`pytorch_model*.bin`, `*.pt`,
`*.pth`, `*.ckpt`) are refused, never unpickled: reading one module of a pickle loads the
whole file, and a converted copy is one command away (see `_PICKLE_HINT`).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.errors import AdapterError

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# safetensors dtype codes: (bytes per element, torch dtype or None where torch has none here)
DTYPE_CODES: dict[str, tuple[int, torch.dtype | None]] = {
    "F64": (8, torch.float64), "F32": (4, torch.float32), "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16), "F8_E4M3": (1, torch.float8_e4m3fn), "F8_E5M2": (1, torch.float8_e5m2),
    "I64": (8, torch.int64), "I32": (4, torch.int32), "I16": (2, torch.int16), "I8": (1, torch.int8),
    "U8": (1, torch.uint8), "U16": (2, torch.uint16), "U32": (4, torch.uint32), "U64": (8, torch.uint64),
    "BOOL": (1, torch.bool),
}
CODE_OF = {dtype: code for code, (_, dtype) in DTYPE_CODES.items()}

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
MAX_JSON_BYTES = 64 * 2**20  # an index of a very large model is a few MB

_PICKLE_HINT = (
    "convert it to safetensors first, e.g. `python -c \"import transformers as t; "
    "t.AutoModelForCausalLM.from_pretrained('IN').save_pretrained('OUT')\"` (transformers reads the "
    "pickle with torch.load(weights_only=True) and writes model.safetensors shards)"
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a shard: where its bytes are and what they hold."""

    key: str
    shard: str  # file name inside the folder
    code: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the shard file
    nbytes: int

    @property
    def dtype(self) -> torch.dtype | None:
        """The torch dtype of the stored data (None for a code torch has no type for)."""
        return DTYPE_CODES[self.code][1]

    @property
    def itemsize(self) -> int:
        return DTYPE_CODES[self.code][0]


@dataclass(frozen=True)
class Shard:
    """One safetensors file of the model, as validated (size and mtime detect later changes)."""

    name: str
    size: int
    mtime_ns: int
    metadata: dict[str, str]
    keys: tuple[str, ...]  # in the order their data is stored


@dataclass(frozen=True)
class ModelLayout:
    """Every tensor of a model folder and the shard it lives in; nothing read but headers."""

    folder: Path
    shards: tuple[Shard, ...]  # sorted by file name (save_pretrained's numbering)
    tensors: dict[str, TensorEntry]
    index: dict[str, Any] | None = None  # the parsed index, None for a single `model.safetensors`
    shard_of: dict[str, Shard] = field(default_factory=dict, repr=False)  # name → Shard

    @property
    def sharded(self) -> bool:
        return self.index is not None


def read_layout(folder: Path) -> ModelLayout:
    """Validate the weights of a model folder from its index and safetensors headers."""
    index, names = weights_files(folder)
    shards = [_read_header(folder, name, index is not None) for name in names]
    layout = _layout(folder, shards, index)
    if index is not None:
        _check_index(layout, index["weight_map"], folder / SAFE_INDEX_NAME)
    return layout


def weights_files(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(the parsed index or None, the shard file names) — from the index alone, each shard only
    stat'ed. Pickled or missing weights are refused here."""
    if (folder / SAFE_WEIGHTS_NAME).exists():
        return None, [_existing(folder, SAFE_WEIGHTS_NAME, False)]
    index_file = folder / SAFE_INDEX_NAME
    if index_file.exists():
        index = _read_index(index_file)
        return index, [_existing(folder, name, True) for name in sorted(set(index["weight_map"].values()))]
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES)) \
        if folder.is_dir() else []
    if pickles:
        raise AdapterError(f"the base model's weights are pickled ({', '.join(pickles[:3])}); dipm_lang reads "
                           "only safetensors and never unpickles a model", folder / pickles[0], hint=_PICKLE_HINT)
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    hint = f"found {', '.join(others[:3])}, but save_pretrained names its weights model*.safetensors" if others else None
    raise AdapterError(f"no {SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME}: not a model folder as save_pretrained "
                       "writes it", folder, hint=hint)


def _existing(folder: Path, name: str, indexed: bool) -> str:
    file = folder / name
    if not file.exists():
        raise AdapterError(f"shard {name} is missing (the index names it)" if indexed else "missing", file)
    if not file.is_file():
        raise AdapterError("not a regular file", file)
    return name


def _layout(folder: Path, shards: list[tuple[Shard, list[TensorEntry]]], index: dict[str, Any] | None
            ) -> ModelLayout:
    tensors: dict[str, TensorEntry] = {}
    for shard, entries in shards:
        for entry in entries:
            key = entry.key
            if key in tensors:
                raise AdapterError(f"tensor {key!r} is stored twice: in {tensors[key].shard} and in {shard.name}",
                                   folder / shard.name)
            tensors[key] = entry
    return ModelLayout(folder, tuple(s for s, _ in shards), tensors, index, {s.name: s for s, _ in shards})


def _check_index(layout: ModelLayout, weight_map: Mapping[str, str], index_file: Path) -> None:
    """The index must describe the shards exactly: every tensor where it says, and no other."""
    for key, shard in weight_map.items():
        entry = layout.tensors.get(key)
        if entry is None:
            raise AdapterError(f"the index lists tensor {key!r} in {shard}, but no shard holds it", index_file)
        if entry.shard != shard:
            raise AdapterError(f"the index lists tensor {key!r} in {shard}, but it is in {entry.shard}", index_file)
    unlisted = sorted(set(layout.tensors) - set(weight_map))
    if unlisted:
        entry = layout.tensors[unlisted[0]]
        raise AdapterError(f"tensor {unlisted[0]!r} of {entry.shard} is missing from the index "
                           f"({len(unlisted)} unlisted); the index does not describe the shards", index_file)


# --- index and headers ----------------------------------------------------------------------


def read_json(file: Path, what: str) -> Any:
    """A JSON file, with AdapterError naming it for anything unreadable; duplicate keys refused."""
    if not file.is_file():
        raise AdapterError(f"{what} is not a regular file", file)
    try:
        if file.stat().st_size > MAX_JSON_BYTES:
            raise AdapterError(f"{what} is too large ({file.stat().st_size} bytes)", file)
        return json.loads(file.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise AdapterError(f"{what} names {exc.args[0]!r} twice", file) from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"malformed JSON in {what}: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                           file) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdapterError(f"cannot read {what}: {exc}", file) from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_index(index_file: Path) -> dict[str, Any]:
    index = read_json(index_file, "the shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise AdapterError("the shard index has no 'weight_map' object", index_file)
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_file_name(shard):
            raise AdapterError(f"the index maps {key!r} to {shard!r:.200}, which is not a file name in this "
                               "folder", index_file)
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        raise AdapterError("the shard index's 'metadata' must be an object", index_file)
    return index


def _plain_file_name(name: str) -> bool:
    """A shard name must stay inside the folder: no separators, no '..', not absolute."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _read_header(folder: Path, name: str, indexed: bool) -> tuple[Shard, list[TensorEntry]]:
    """Parse and check one shard's header; its entries come back in stored order."""
    file = folder / _existing(folder, name, indexed)
    try:
        with open(file, "rb") as handle:
            stat = os.fstat(handle.fileno())
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise AdapterError("not a safetensors file: shorter than its 8-byte header length", file)
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, stat.st_size - 8):
                raise AdapterError(f"not a safetensors file: header length {length} exceeds the file", file)
            text = handle.read(length)
    except OSError as exc:
        raise AdapterError(f"cannot read: {exc}", file) from None
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise AdapterError(f"the safetensors header names tensor {exc.args[0]!r} twice", file) from None
    except (ValueError, RecursionError) as exc:
        raise AdapterError(f"not a safetensors file: malformed header ({exc})", file) from None
    if not isinstance(header, dict):
        raise AdapterError("not a safetensors file: the header is not a JSON object", file)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterError("the safetensors '__metadata__' must map names to strings", file)
    data_start = 8 + length
    entries = [_entry(key, value, name, data_start, file) for key, value in header.items()]
    entries.sort(key=lambda e: e.start)
    position = data_start
    for entry in entries:  # contiguous, no overlap, no gap: what safetensors itself enforces
        if entry.start != position:
            raise AdapterError(f"tensor {entry.key!r}: its data offsets overlap or leave a gap", file)
        position += entry.nbytes
    if position != stat.st_size:
        raise AdapterError(f"the header describes {position} bytes but the file has {stat.st_size} "
                           "(truncated or padded)", file)
    return Shard(name, stat.st_size, stat.st_mtime_ns, dict(metadata), tuple(e.key for e in entries)), entries


def _entry(key: str, value: Any, shard: str, data_start: int, file: Path) -> TensorEntry:
    if not isinstance(value, dict):
        raise AdapterError(f"tensor {key!r}: malformed header entry", file)
    code, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if code not in DTYPE_CODES:
        raise AdapterError(f"tensor {key!r}: unsupported dtype {code!r:.40}", file)
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise AdapterError(f"tensor {key!r}: malformed shape {shape!r:.80}", file)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise AdapterError(f"tensor {key!r}: malformed data_offsets {offsets!r:.80}", file)
    nbytes = math.prod(shape) * DTYPE_CODES[code][0]
    if offsets[1] - offsets[0] != nbytes:
        raise AdapterError(f"tensor {key!r}: shape {shape} needs {nbytes} bytes but its offsets span "
                           f"{offsets[1] - offsets[0]}", file)
    return TensorEntry(key, shard, code, tuple(shape), data_start + offsets[0], nbytes)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
