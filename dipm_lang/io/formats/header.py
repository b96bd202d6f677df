"""What a safetensors file says about itself before any tensor is read: names, dtypes, shapes, metadata.

`safetensors.safe_open` parses and validates the header (offsets, sizes, dtypes) and maps the file
without reading tensor data; we keep its answers as plain values so that everything after this
works from the header alone (`adapter` then reads only the `.alpha` scalars).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dipm_lang.errors import AdapterError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: str | Path) -> Header:
    """Names, dtypes and shapes of every tensor and the `__metadata__` of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise AdapterError("is a folder; give the LoRA's .safetensors file", path)
    if not path.is_file():
        raise AdapterError("no such file", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {}
            for name in handle.keys():
                view = handle.get_slice(name)
                tensors[name] = TensorInfo(_dtype(view.get_dtype(), name, path), tuple(view.get_shape()))
    except AdapterError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError for bad files
        raise AdapterError(f"is not a readable safetensors file ({exc})", path) from None
    if not tensors:
        raise AdapterError("holds no tensors", path)
    return Header(path, tensors, dict(metadata))


_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _dtype(code: str, name: str, path: Path) -> torch.dtype:
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise AdapterError(f"tensor {name!r} has dtype {code}, which dipm does not read", path)
    return dtype

