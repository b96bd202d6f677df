"""Where a program's adapters come from: one interface for every kind of input.

The runtime plans and reads every input through `AdapterSource`, whatever holds it — a PEFT
folder (`io/reader.py`), an in-memory PEFT model or value (`io/memory.py`), and as they arrive the
Hub, other file formats and base weights. `open_source` turns a `load` path into a source; LoRA files of image models
(kohya, diffusers, LyCORIS) are `io/lora_files.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dipm_lang.errors import UsageError

if TYPE_CHECKING:
    import torch

    from dipm_lang.backend.lowrank import LowRank
    from dipm_lang.io.reader import ModuleInfo

MEMORY_PREFIX = "<memory:"


class AdapterSource(Protocol):
    """What the runtime needs of an input: validated metadata up front, tensors on demand."""

    path: Path | str                  # the folder, or a label such as `<memory:H>`
    config: dict[str, Any]            # the adapter config (copied into outputs by the writer)
    base_model: str | None
    modules: dict[str, "ModuleInfo"]  # module -> shape, rank, scale, dtype, kind
    dtype: "torch.dtype"              # the dominant stored dtype

    @property
    def on_disk(self) -> bool:
        """Whether the source is files (outputs must never overwrite them)."""
        ...

    @property
    def label(self) -> str:
        """How provenance names the input: a folder's base name, a Hub id — never a local path."""
        ...

    @property
    def sha256(self) -> str:
        """A content hash for provenance."""
        ...

    def read(self, names: Sequence[str], *, dtype: "torch.dtype", device: Any) -> "LowRank":
        """Same-shape modules stacked `[G, m, r] @ [G, r, n]`, each module's scale folded into `B`."""
        ...


def memory_key(label: str) -> str:
    """The load-node path that names an in-memory input (never a real folder)."""
    return f"{MEMORY_PREFIX}{label}>"


def is_memory_key(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(MEMORY_PREFIX) and path.endswith(">")


def open_source(path: str, memory: Mapping[str, AdapterSource] | None = None, *,
                family: str | None = None) -> AdapterSource:
    """The source a `load` path names: an in-memory input by its key, a LoRA file of an image model
    (a `.safetensors` file, a diffusers folder, or any folder with `family=`; SPEC §7.10), else a
    PEFT adapter folder."""
    if is_memory_key(path):
        if memory is None or path not in memory:
            raise UsageError(f"{path}: no such in-memory input")
        return memory[path]
    from dipm_lang.io.lora_files import is_lora_path, open_lora_source  # torch: only when really opened

    if family is not None or is_lora_path(path):
        return open_lora_source(path, family=family)
    from dipm_lang.io.reader import open_adapter

    return open_adapter(path)


def file_inputs(sources: Sequence[AdapterSource] | Any) -> list[Path]:
    """The folders of the sources that are files (outputs must never overwrite them)."""
    return [Path(source.path) for source in sources if source.on_disk]
