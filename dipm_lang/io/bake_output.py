"""A baked model folder as an output (SPEC §7.8): checked before work, staged, renamed into place.

`io/bake.py` writes W0 + ΔW shard by shard into an empty folder; this module gives it the rules of
every dipm output (`io/writer.py`): the destination is checked before any work
(`prepare_model_output`: never an input or the base, never inside one, an existing folder only
with `--force` and only when it is a model folder or empty), the folder is written as a hidden
sibling (`.NAME.dipm-tmp-PID-*`) and returned as a `StagedOutput`, which `commit_staged` renames
into place together with the run's other outputs — all or none — and `recover_stale` cleans up
after a killed run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dipm_lang.io.bake import COPIED_FILES, LICENSE_PREFIXES, BakeReport, DeltaSource, Replacement, bake
from dipm_lang.io.base_layout import CONFIG_NAME, SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME
from dipm_lang.io.base_model import BaseModel, ModuleKind
from dipm_lang.io.writer import (StagedOutput, _make_parents, _remove_created, _resolve, _staging_prefix,
                                 apply_umask, prepare_output, recover_stale)

_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing folder that a model folder as bake writes it does not hold."""
    names = sorted(entry.name for entry in folder.iterdir())
    if names and CONFIG_NAME not in names:
        return names
    own = {CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, "README.md", *COPIED_FILES}
    return [name for name in names if name not in own and not _SHARD.fullmatch(name)
            and not name.upper().startswith(LICENSE_PREFIXES) and not name.endswith(".py")]


def prepare_model_output(path: str | Path, *, inputs: Sequence[str | Path], force: bool) -> None:
    """Check that the model folder `path` may be written (before any work; AdapterError otherwise)."""
    prepare_output(path, inputs=inputs, force=force, foreign_entries=_foreign_entries, what="a model")


def stage_bake(path: str | Path, base: BaseModel, deltas: DeltaSource, *, modules: Mapping[str, ModuleKind],
               dtype: torch.dtype | None, force: bool, inputs: Sequence[str | Path] = (),
               replacements: Sequence[Replacement] = ()) -> tuple[StagedOutput, BakeReport]:
    """Bake into a hidden sibling of `path`; nothing visible changes until `commit_staged`."""
    recover_stale(path)
    prepare_model_output(path, inputs=[*inputs, base.path], force=force)
    dest = _resolve(path)
    created = _make_parents(dest.parent)
    temp: Path | None = None
    try:
        temp = Path(tempfile.mkdtemp(prefix=_staging_prefix(dest, "tmp"), dir=dest.parent))
        report = bake(base, deltas, temp, modules=modules, dtype=dtype, replacements=replacements)
        apply_umask(temp)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        _remove_created(created)
        raise
    return StagedOutput(destination=dest, temp_dir=temp, force=force, created_dirs=created,
                        modules=report.modules), report


def bake_dtype(name: Any) -> torch.dtype | None:
    """`bake(…, dtype=…)`: None keeps each tensor's stored dtype (the base's)."""
    return None if name in (None, "base") else getattr(torch, name)
