"""A deterministic, streaming safetensors writer.

`safetensors.torch.save_file` stores metadata from a hash map, so its header order (and so
the file's bytes) changes from run to run, and it needs every tensor in memory at once. We
write the (simple, documented) format ourselves: 8-byte little-endian header length, a JSON
header (metadata first, then tensors by name) padded with spaces, then the data.

Tensors are appended as they are computed, straight from their buffers, so a run never holds
its whole output: the data goes after a header region reserved up front (`header_bound`, the
longest header the outputs could need) and the header is written last into that region,
padded with spaces as the format allows. Data is laid out in the order tensors were added;
for the same additions the bytes are the same.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

import torch

DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_LARGEST = 10**20 - 1  # more digits than any shape or offset of a real file: a placeholder for bounds
_SYNC_BYTES = 64 * 2**20  # start writing back every so many bytes, so the final fsync waits less


def _header_text(entries: Mapping[str, dict], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    header.update((name, entries[name]) for name in sorted(entries))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def header_bound(tensors: Iterable[tuple[str, torch.dtype, int]], metadata: Mapping[str, str]) -> int:
    """Bytes that the header of any file holding at most these tensors (name, dtype, number of
    dims) with metadata of these lengths can need: every shape and offset at its widest."""
    entries = {name: {"dtype": DTYPE_CODES[dtype], "shape": [_LARGEST] * ndim, "data_offsets": [_LARGEST] * 2}
               for name, dtype, ndim in tensors}
    return len(_header_text(entries, metadata))


class SafetensorsWriter:
    """Append tensors to a new safetensors file, then `finish` it with the header and metadata."""

    def __init__(self, path: Path, header_reserve: int):
        self.path = Path(path)
        self._reserve = header_reserve + (-header_reserve % 8)
        self._entries: dict[str, dict] = {}
        self._offset = 0
        self._unsynced = 0
        self._file = open(self.path, "wb", buffering=0)
        self._file.seek(8 + self._reserve)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name!r} written twice")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported dtype {tensor.dtype} for {name}")
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        _write_all(self._file, data)
        self._entries[name] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                               "data_offsets": [self._offset, self._offset + len(data)]}
        self._offset += len(data)
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_BYTES and hasattr(os, "sync_file_range"):
            # Let the disk start on what is written while the rest is computed (Linux only).
            os.sync_file_range(self._file.fileno(), 0, 0, os.SYNC_FILE_RANGE_WRITE)
            self._unsynced = 0

    def finish(self, metadata: Mapping[str, str]) -> None:
        """Write the header into its reserved region (or, if it outgrew it, rewrite the file)."""
        text = _header_text(self._entries, metadata)
        if len(text) > self._reserve:
            self._file.close()
            self._relocate(len(text))
            self._file = open(self.path, "r+b", buffering=0)
        _write_all(self._file, struct.pack("<Q", self._reserve) + text + b" " * (self._reserve - len(text)), at=0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        self._file.close()

    def _relocate(self, needed: int) -> None:
        """Move the data further back to make room for a header longer than reserved (a module
        set that was not announced); slow but never wrong."""
        needed += -needed % 8
        moved = self.path.with_name(self.path.name + ".relocate")
        with open(self.path, "rb") as source, open(moved, "wb") as target:
            source.seek(8 + self._reserve)
            target.seek(8 + needed)
            while chunk := source.read(16 * 2**20):
                target.write(chunk)
        os.replace(moved, self.path)
        self._reserve = needed


def _write_all(f, data: bytes | memoryview, at: int | None = None) -> None:
    # An unbuffered write may be short (signals, quotas); loop until every byte is out.
    if at is not None:
        f.seek(at)
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
