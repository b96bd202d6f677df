"""Where a program's adapters come from: one interface for every kind of input.

The runtime plans and reads every input through `AdapterSource`, whatever holds it — a PEFT
folder (`io/reader.py`), an in-memory PEFT model or value (`io/memory.py`), an adapter on the
Hugging Face Hub (`io/hub_source.py`, `hf://` load paths), and as they arrive other file formats
and base weights. `open_source` turns a `load` path into a source; LoRA files of image
models (kohya, diffusers, LyCORIS) are `io/lora_files.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dipm_lang.errors import UsageError
from dipm_lang.io.hub_ref import is_hub_path

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
                family: str | None = None, progress: bool | None = None) -> AdapterSource:
    """The source a `load` path names: an in-memory input by its key, a Hub adapter by its `hf://`
    id (`progress`: huggingface_hub's download bars; None: when stderr is a terminal), a LoRA file
    of an image model (a `.safetensors` file, a diffusers folder, or any folder with `family=`;
    SPEC §7.10), else a PEFT adapter folder."""
    if is_memory_key(path):
        if memory is None or path not in memory:
            raise UsageError(f"{path}: no such in-memory input")
        return memory[path]
    if is_hub_path(path):
        from dipm_lang.io.hub_source import open_hub  # huggingface_hub: only for Hub inputs

        return open_hub(path, progress=progress)
    from dipm_lang.io.lora_files import is_lora_path, open_lora_source  # torch: only when really opened

    if family is not None or is_lora_path(path):
        return open_lora_source(path, family=family)
    from dipm_lang.io.reader import open_adapter

    return open_adapter(path)


def open_input(text: str, *, base_dir: Path | None = None, progress: bool | None = None) -> AdapterSource:
    """An adapter named as a user types it (`dipm inspect`, the REPL's `:inspect`): a folder, or a
    Hub id by SPEC §7.5's rule (relative paths against `base_dir`, default the working folder)."""
    from dipm_lang.io.hub_ref import hub_input

    ref = hub_input(text, base_dir=Path.cwd() if base_dir is None else base_dir)
    return open_source(str(ref) if ref is not None else text, progress=progress)


def file_inputs(sources: Sequence[AdapterSource] | Any) -> list[Path]:
    """The folders of the sources that are files (outputs must never overwrite them)."""
    return [Path(source.path) for source in sources if source.on_disk]
