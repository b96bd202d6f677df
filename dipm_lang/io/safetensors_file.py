"""A deterministic safetensors writer.

`safetensors.torch.save_file` stores metadata from a hash map, so its header order (and so
the file's bytes) changes from run to run. Outputs must be byte-identical for the same
script and inputs, so we write the (simple, documented) format ourselves with sorted keys:
8-byte little-endian header length, a JSON header padded with spaces to 8 bytes, the data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import torch

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write `tensors` (sorted by name) and `metadata`; each tensor's bytes go straight from its
    buffer to the file, so writing never holds a second copy of the output."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[memoryview] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {tensor.dtype} for {name}")
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb", buffering=0) as f:
        _write_all(f, struct.pack("<Q", len(text)) + text)
        for chunk in chunks:
            _write_all(f, chunk)


def _write_all(f, data: bytes | memoryview) -> None:
    # An unbuffered write may be short (signals, quotas); loop until every byte is out.
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
