"""Write PEFT LoRA adapter folders atomically.

The output loads with `peft.PeftModel.from_pretrained(base, path)` and each module's
`get_delta_weight` equals `B @ A`: the scale is already folded into `B`, so every module is
written with `lora_alpha == rank` (scale 1, no rsLoRA), the most common rank as `r` and the
others in `rank_pattern` / `alpha_pattern` under keys that match exactly one module.

Writing is two-phase so a script with several saves writes all or nothing: `stage_adapter`
fills a hidden temporary sibling folder, `commit_staged` renames every staged folder into
place (rolling back on failure) and `discard_staged` throws them away. `write_adapter` is
stage + commit for a single output.

A process killed outright (SIGKILL, power loss) cannot clean up, but it never leaves a partial
folder at the destination either: only hidden siblings named `.NAME.dipm-tmp-PID-*` (a staged
copy) or `.NAME.dipm-old-PID-*` (the previous output, moved aside during a `--force` commit).
`recover_stale` — run by the next `dipm run` that writes NAME — removes the staged copies of
dead processes and puts a moved-aside previous output back if the new one never arrived. (A
multi-output commit killed halfway can leave some outputs new and others old; each one is whole.)
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from glob import escape as glob_escape
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dipm_lang.backend.balance import balanced
from dipm_lang.backend.forms import DoraOutput
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io import vllm
from dipm_lang.io.atomic import current_umask
from dipm_lang.io.card import model_card, shared_license
from dipm_lang.io.finite import all_finite
from dipm_lang.io.full import FullOutput, longest_key, output_key, output_settings
from dipm_lang.io.safetensors_file import SafetensorsWriter, header_bound
from dipm_lang.io.peft_config import exact_pattern_keys, parse_settings
from dipm_lang.io.layout import BIN_NAME, CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME, SAFETENSORS_NAME
from dipm_lang.io.reader import FACTOR_SUFFIXES, KEY_PREFIX, AdapterInfo
from dipm_lang.ir.modules import natural_key

OUTPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"  # a DoRA module's magnitudes, as PEFT saves them


@dataclass
class StagedOutput:
    """An adapter written to a temporary folder, waiting to be renamed onto `destination`."""

    destination: Path
    temp_dir: Path
    force: bool
    # Folders `stage_adapter` had to create for the destination's parent (removed on discard).
    created_dirs: list[Path] = field(default_factory=list)
    modules: tuple[str, ...] = ()
    zero_modules: tuple[str, ...] = ()  # modules whose update is exactly zero (left out, or all rank-1 zeros)
    warnings: tuple[str, ...] = ()
    full: tuple[str, ...] = ()  # full-weight modules and biases written (modules_to_save, bias; io/full.py)
    file: str | None = None  # a one-file output (a LoRA file, SPEC §7.10): `temp_dir / file` becomes `destination`

    @property
    def staged(self) -> Path:
        """What is renamed onto the destination: the staged folder, or the file in it."""
        return self.temp_dir / self.file if self.file else self.temp_dir


# --------------------------------------------------------------------------- validation


def prepare_output(path: str | Path, *, inputs: Sequence[str | Path], force: bool,
                   foreign_entries: Callable[[Path], list[str]] | None = None, what: str = "an adapter") -> None:
    """Check that `path` may be written, before any work is done.

    Refuses: the destination equal to, inside, or containing an input folder; an existing
    destination without `force`; an existing destination that is a file, or (even with `force`)
    a non-empty folder that is not an adapter folder; a parent that cannot be created or written.
    `foreign_entries`/`what`: the same rules for another kind of output folder (a baked model).
    """
    raw = Path(path).expanduser()
    if raw.is_symlink() and not raw.exists():
        raise AdapterError(f"the output path is a symbolic link to {os.readlink(raw)!r}, which does not exist; "
                           "refusing to follow it", raw)
    dest = _resolve(path)
    for item in inputs:
        source = _resolve(item)
        if dest == source:
            raise AdapterError("refusing to write over an input adapter", dest)
        if source in dest.parents:
            raise AdapterError(f"refusing to write inside the input adapter {source}", dest)
        if dest in source.parents:
            raise AdapterError(f"refusing to replace a folder that contains the input adapter {source}", dest)
    if dest.exists() or dest.is_symlink():
        if not force:
            raise AdapterError("the output already exists (use --force to replace it)", dest)
        if not dest.is_dir():
            raise AdapterError("the output exists and is not a folder; refusing to replace it", dest)
        foreign = (foreign_entries or _foreign_entries)(dest)
        if foreign:
            # --force replaces adapter folders (or an empty one), never an arbitrary folder such as "." by mistake.
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            marker = CONFIG_NAME if foreign_entries is None else "config.json"
            what = f"is not {what} folder" if not (dest / marker).exists() else f"holds more than {what}"
            raise AdapterError(f"the output exists and {what} (it holds {shown}); refusing to replace it "
                               "even with --force", dest, hint="remove it yourself, or choose another folder")
    ancestor = dest.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdapterError(f"cannot create the output: {ancestor} is not a folder", dest)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise AdapterError(f"cannot create the output: {ancestor} is not writable", dest)


OUTPUT_FILES = (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME, "README.md", DIFFUSERS_WEIGHTS_NAME)
"""What an adapter folder holds (what dipm and PEFT write; diffusers' LoRA folders hold their weights file):
the only folder `--force` replaces."""


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing output folder that are not an adapter folder's files (sorted)."""
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError as exc:
        raise AdapterError(f"cannot read the existing output: {exc.strerror or exc}", folder) from None
    if names and CONFIG_NAME not in names and DIFFUSERS_WEIGHTS_NAME not in names:
        return names
    return [name for name in names if name not in OUTPUT_FILES]


def _resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def apply_umask(folder: Path) -> None:
    """Give a staged folder and its files the permissions a plain mkdir/open would have given them
    (mkdtemp makes 0700 folders, so a service running as another user could not read the output)."""
    mask = current_umask()
    for entry in folder.iterdir():
        os.chmod(entry, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


# --------------------------------------------------------------------------- staging


class AdapterStage:
    """An output adapter being written into a hidden staging folder, batch of modules by batch.

    `add` checks and appends modules as they are computed (so a run never holds its whole
    output); `finish` writes the header, config and model card, fsyncs, and returns the
    `StagedOutput` for `commit_staged`. Any failure, and `discard`, remove the staging folder
    and the parent folders it created. `expected` (module → (m, n)) announces the modules that
    may come, to reserve the header (`safetensors_file.header_bound`); `metadata_bound` is
    metadata of the final lengths (the final values may be unknown until the end). `full` are the
    full-weight modules and biases to write (SPEC §7.4), in `full_dtype` when given, else as stored.
    """

    def __init__(self, path: str | Path, *, template: AdapterInfo | None, dtype: torch.dtype,
                 expected: Mapping[str, tuple[int, int]], metadata_bound: Mapping[str, str], force: bool,
                 inputs: Sequence[str | Path] = (), dora: bool = False, target: str | None = None,
                 max_lora_rank: int | None = None, full: Sequence[FullOutput] = (),
                 full_dtype: torch.dtype | None = None):
        self.inputs = list(inputs) or ([template.path] if template is not None else [])
        # target="vllm": modules are held until `finish`, then written at one rank (io/vllm.py)
        self.target, self.max_lora_rank = target, max_lora_rank
        self._held: dict[str, tuple[LowRank, str]] = {}
        self.kept: dict[str, int] = {}  # module -> the rank it keeps (before any padding)
        self._shapes: dict[str, tuple[int, ...]] = {}  # tensor key -> shape, as written
        recover_stale(path)
        prepare_output(path, inputs=self.inputs, force=force)
        self.destination = _resolve(path)
        if dtype not in OUTPUT_DTYPES:
            raise AdapterError(f"unsupported output dtype {dtype}; use float16, bfloat16 or float32", self.destination)
        self.template, self.dtype, self.force = template, dtype, force
        self.full, self.full_dtype = list(full), full_dtype
        self.ranks: dict[str, tuple[int, str]] = {}
        self.zeros: dict[str, tuple[int, int]] = {}  # module -> (m, n) of updates that are exactly zero
        self.rebalanced: list[str] = []  # modules re-factored so the cast keeps the computed value
        self.dora = False  # a DoRA magnitude vector was written (SPEC §7.8): the config says use_dora
        self.created = _make_parents(self.destination.parent)
        self.temp_dir: Path | None = None
        self._writer: SafetensorsWriter | None = None
        with self._cleanup_on_failure():
            self.temp_dir = Path(tempfile.mkdtemp(prefix=_staging_prefix(self.destination, "tmp"),
                                                  dir=self.destination.parent))
            names = [(f"{KEY_PREFIX}{name}{suffix}", dtype, 2) for name in expected
                     for suffix in FACTOR_SUFFIXES[self._kind(name)]]
            if dora:
                names += [(f"{KEY_PREFIX}{name}{MAGNITUDE_SUFFIX}", dtype, 1) for name in expected]
            names += [(longest_key(out.tensor), torch.bfloat16, len(out.tensor.shape)) for out in self.full]
            reserve = header_bound(names, _build_metadata(metadata_bound, self.destination))
            self._writer = SafetensorsWriter(self.temp_dir / SAFETENSORS_NAME, reserve)

    def add(self, modules: Mapping[str, LowRank], *, verbatim: bool = False) -> None:
        """Check and write `modules` (scale folded into B); zero modules are left out (and listed).
        `verbatim`: the factors are an input's own (`save(load(x))`) and are written as they are."""
        with self._cleanup_on_failure():
            assert self._writer is not None
            for name in sorted(modules, key=natural_key):
                self._add(name, modules[name], verbatim)

    def _add(self, name: str, value: Any, verbatim: bool = False) -> None:
        if isinstance(value, DoraOutput):
            self._add_dora(name, value)
            return
        b, a = value.B, value.A
        if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
            raise AdapterError(f"module {name!r}: B {list(b.shape)} and A {list(a.shape)} are not factors",
                               self.destination)
        rank = int(a.shape[0])
        if name in self.ranks or name in self.zeros or name in self._held:
            raise AdapterError(f"module {name!r} written twice", self.destination)
        if not verbatim:
            value = self._faithful(name, value)
        if value.rank == 0:
            self.zeros[name] = (int(b.shape[0]), int(a.shape[1]))  # PEFT cannot hold rank 0: left out
            return
        b, a, rank = value.B, value.A, value.rank
        kind = self._kind(name)
        if self.template is not None and name in self.template.modules:
            known = self.template.modules[name]
            if known.shape != (b.shape[0], a.shape[1]):
                raise AdapterError(
                    f"module {name!r} is {b.shape[0]}x{a.shape[1]} but {known.out_features}x{known.in_features} "
                    f"in {self.template.path}", self.destination)
        self.kept[name] = rank
        if self.target == "vllm":
            self._held[name] = (value, kind)
            return
        self._write_factors(name, kind, b, a)
        self.ranks[name] = (rank, kind)

    def _add_dora(self, name: str, value: DoraOutput) -> None:
        """A DoRA module: factors with B·A = L (scale 1) and its magnitude vector (SPEC §7.8). An
        update that is exactly zero is left out, as a zero LoRA module is."""
        m, n = value.lora.m, value.lora.n
        if name in self.ranks or name in self.zeros:
            raise AdapterError(f"module {name!r} written twice", self.destination)
        if bool(value.unchanged):
            self.zeros[name] = (m, n)
            return
        lora = self._faithful(name, value.lora)
        if lora.rank == 0:  # L = 0 (the update is c·W0): PEFT needs a rank, so one zero direction
            lora = LowRank(torch.zeros(m, 1, dtype=lora.dtype), torch.zeros(1, n, dtype=lora.dtype))
        kind = self._kind(name)
        self._write_factors(name, kind, lora.B, lora.A)
        magnitude = value.magnitude.detach().to(device="cpu", dtype=self.dtype).contiguous()
        if not all_finite(magnitude):
            raise AdapterError(f"module {name!r}: the DoRA magnitude vector has NaN or Inf values in "
                               f"{str(self.dtype).removeprefix('torch.')}", self.destination)
        assert self._writer is not None
        self._writer.add(f"{KEY_PREFIX}{name}{MAGNITUDE_SUFFIX}", magnitude)
        self.ranks[name] = (lora.rank, kind)
        self.dora = True

    def _write_held(self) -> None:
        """A vLLM output: every held module at the one rank vLLM serves it at, zero-padded."""
        rank = vllm.serving_rank({name: value for name, (value, _) in self._held.items()}, self.max_lora_rank,
                                 self.destination)
        for name in sorted(self._held, key=natural_key):
            value, kind = self._held.pop(name)
            value = vllm.padded(value, rank)
            self._write_factors(name, kind, value.B, value.A)
            self.ranks[name] = (rank, kind)

    def _faithful(self, name: str, value: LowRank) -> LowRank:
        x, rebalanced = faithful(value)
        if rebalanced:
            self.rebalanced.append(name)
        return x

    def _write_factors(self, name: str, kind: str, b: torch.Tensor, a: torch.Tensor) -> None:
        a_suffix, b_suffix = FACTOR_SUFFIXES[kind]
        assert self._writer is not None
        for suffix, tensor, part in ((a_suffix, a, "A"), (b_suffix, b, "B")):
            out = tensor.detach().to(device="cpu", dtype=self.dtype).contiguous()
            if not all_finite(out):
                raise AdapterError(
                    f"module {name!r}: factor {part} has NaN or Inf values in {str(self.dtype).removeprefix('torch.')}"
                    + (" (too large for float16? try float32 or bfloat16)" if self.dtype == torch.float16 else ""),
                    self.destination)
            self._writer.add(f"{KEY_PREFIX}{name}{suffix}", out)
            self._shapes[f"{KEY_PREFIX}{name}{suffix}"] = tuple(out.shape)

    def finish(self, *, metadata: Mapping[str, str], recipe: str,
               errors: Mapping[str, float] | None = None) -> StagedOutput:
        """Complete the staged folder (header, config, model card, fsync); nothing is visible yet.
        `errors`: each module's relative error dropped (energy=), for the card."""
        with self._cleanup_on_failure():
            assert self._writer is not None and self.temp_dir is not None
            warnings = []
            if self._held:
                self._write_held()
            if not self.ranks:
                if not self.zeros:
                    raise AdapterError("the result has no modules; there is nothing to save", self.destination)
                # A valid adapter that changes nothing (PEFT's own linear([X, X], [1, -1]); a sweep's λ = 0):
                # rank-1 zero factors, as PEFT's freshly initialised adapters are a no-op.
                for name, (m, n) in sorted(self.zeros.items(), key=lambda item: natural_key(item[0])):
                    kind = self._kind(name)
                    self._write_factors(name, kind, torch.zeros(m, 1), torch.zeros(1, n))
                    self.ranks[name] = (1, kind)
                    self.kept[name] = 1
                warnings.append("the result is zero everywhere: written as rank-1 zero factors (an adapter that "
                                "changes nothing)")
            ranks = {name: self.ranks[name] for name in sorted(self.ranks, key=natural_key)}
            config = build_config(ranks, self.template, dora=self.dora)
            if self.full:
                config["modules_to_save"], config["bias"] = self._write_full(ranks)
            if self.target == "vllm":  # what vLLM's loader checks, on what is about to be written
                vllm.refuse(vllm.check_adapter(config, self._shapes, self.max_lora_rank), self.destination)
            st_metadata = _build_metadata(metadata, self.destination)
            card = model_card(self.destination.name, recipe, config.get("base_model_name_or_path"), metadata,
                              ranks={name: self.kept.get(name, rank) for name, (rank, _) in ranks.items()},
                              errors=errors, written_rank=ranks[next(iter(ranks))][0] if self.target == "vllm" else None,
                              task_type=config.get("task_type"), license=shared_license(self.inputs),
                              target=self.target)
            self._writer.finish(st_metadata)
            write_text(self.temp_dir / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
            write_text(self.temp_dir / "README.md", card)
            apply_umask(self.temp_dir)
        return StagedOutput(destination=self.destination, temp_dir=self.temp_dir, force=self.force,
                            created_dirs=self.created, modules=tuple(ranks),
                            zero_modules=tuple(sorted(self.zeros, key=natural_key)), warnings=tuple(warnings),
                            full=tuple(out.name for out in self.full))

    def _write_full(self, ranks: Mapping[str, tuple[int, str]]) -> tuple[list[str] | None, str]:
        """Write the full-weight tensors under the keys PEFT loads them from, beside these LoRA
        modules; return the config's `modules_to_save` and `bias`."""
        assert self._writer is not None
        saved, bias = output_settings(self.full, ranks)
        for out in self.full:
            dtype = self.full_dtype or _stored_dtype(out)
            tensor = out.value(dtype)
            if not all_finite(tensor):
                raise AdapterError(f"{out.name}: the result has NaN or Inf values in "
                                   f"{str(dtype).removeprefix('torch.')}", self.destination)
            key = output_key(out.tensor, ranks, saved or ())
            self._writer.add(key, tensor)
            self._shapes[key] = tuple(tensor.shape)
        return saved, bias

    def discard(self) -> None:
        self._held.clear()
        if self._writer is not None:
            self._writer.close()
        remove_own_staging(self.destination)
        _remove_created(self.created)

    def _kind(self, name: str) -> str:
        if self.template is not None and name in self.template.modules:
            return self.template.modules[name].kind
        return "linear"

    @contextmanager
    def _cleanup_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            # Every staging folder of this process for the destination, not just ours: an interrupt
            # (Ctrl-C, SIGTERM) can land after mkdtemp made the folder but before it returned its name.
            self.discard()
            if isinstance(exc, AdapterError) or not isinstance(exc, Exception):
                raise
            raise AdapterError(f"failed to write the output: {exc}", self.destination) from exc


def faithful(value: LowRank) -> tuple[LowRank, bool]:
    """The factors to store for `value`, and whether they were re-factored: `value`'s own, unless they
    are badly balanced for their product.

    A result that nearly cancels (`orth`, `shift`, `transfer − src` on nearly parallel inputs)
    has factors far larger than the update they make: ‖B‖·‖A‖/‖BA‖ in the thousands. Rounding
    them to the output dtype — or evaluating B @ A in it, as PEFT does — then loses that ratio
    times the dtype's precision. Such modules are re-factored exactly (`backend/balance.py`: QR of
    both factors, SVD of the small core), whose ratio is at most √rank; numerically-zero
    directions go, and an exact cancellation becomes a zero module.
    """
    x = LowRank(value.B.detach().cpu(), value.A.detach().cpu())
    if x.rank == 0:
        return x, False
    ratio = imbalance(x)
    if ratio <= 2.0 * math.sqrt(x.rank):
        return x, False
    candidate = balanced(x.to(torch.float64))
    if candidate.rank == 0 or imbalance(candidate) < ratio:
        return candidate, True
    return x, False


def _stored_dtype(out: FullOutput) -> torch.dtype:
    """The inputs' dtype of a full-weight tensor (float32 where they differ, or for float8)."""
    return out.stored_dtype if out.stored_dtype in OUTPUT_DTYPES else torch.float32


def imbalance(x: LowRank) -> float:
    """‖B‖·‖A‖/‖BA‖ (Frobenius, float64; inf for factors whose product is zero): how much rounding
    the factors (entry by entry, relative eps) can move their product, in units of eps·‖BA‖ — at
    most (2·eps + eps²)·‖B‖·‖A‖. Balanced factors have it at most √rank; a cancelling result, far
    more. ‖BA‖² = Σ (BᵀB ⊙ AAᵀ) from the two r×r Gram matrices (no m×n, no QR: a sweep checks every
    module of every point), in the factors' dtype but at least float32: its rounding, ~u·r·‖B‖²‖A‖²,
    is far below the ‖B‖²‖A‖²/4r that separates balanced factors from cancelling ones, and a
    cancellation past it reads as zero (inf: re-factored)."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, A = x.B.to(work), x.A.to(work)
    size_sq = float(((B.mT @ B) * (A @ A.mT)).sum())
    scale = float(torch.linalg.vector_norm(B)) * float(torch.linalg.vector_norm(A))
    if size_sq <= 0:
        return math.inf if scale > 0 else 1.0
    return scale / math.sqrt(size_sq)


def stage_adapter(
    path: str | Path,
    modules: Mapping[str, LowRank],
    *,
    template: AdapterInfo | None,
    dtype: torch.dtype,
    metadata: Mapping[str, str],
    recipe: str,
    force: bool,
    inputs: Sequence[str | Path] = (),
    target: str | None = None,
    max_lora_rank: int | None = None,
    errors: Mapping[str, float] | None = None,
    full: Sequence[FullOutput] = (),
    full_dtype: torch.dtype | None = None,
) -> StagedOutput:
    """Write the adapter into a temporary sibling of `path`; nothing visible changes yet.

    `modules` maps module names (e.g. `model.layers.0.self_attn.q_proj`) to updates with the
    scale folded into `B`. Rank-0 modules are omitted; if nothing is left, raises
    `AdapterError("the result is zero everywhere")`. `template` (the first input) supplies
    `base_model_name_or_path`, `task_type`, `fan_in_fan_out` and module kinds (embeddings).
    """
    stage = AdapterStage(path, template=template, dtype=dtype, metadata_bound=metadata, force=force, inputs=inputs,
                         expected={name: (value.m, value.n) for name, value in modules.items()},
                         target=target, max_lora_rank=max_lora_rank, full=full, full_dtype=full_dtype)
    stage.add(modules)
    return stage.finish(metadata=metadata, recipe=recipe, errors=errors)


def build_config(ranks: Mapping[str, tuple[int, str]], template: AdapterInfo | None, *,
                 dora: bool = False) -> dict[str, Any]:
    """An `adapter_config.json` giving every module scale 1 at its own rank (`dora`: a DoRA adapter)."""
    counts = Counter(rank for rank, _ in ranks.values())
    # The most common rank is `r`; ties go to the smaller rank, so the choice is deterministic.
    r = min(counts, key=lambda k: (-counts[k], k))
    others = [name for name, (rank, _) in ranks.items() if rank != r]
    keys = exact_pattern_keys(others, ranks)
    rank_pattern = {keys[name]: ranks[name][0] for name in others}
    source = template.config if template is not None else {}
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": source.get("task_type"),
        "base_model_name_or_path": source.get("base_model_name_or_path"),
        "revision": source.get("revision"),
        "r": r,
        "lora_alpha": r,  # alpha == r and no rsLoRA: scale 1, B already carries the scale
        "use_rslora": False,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "target_modules": list(ranks),
        "fan_in_fan_out": bool(source.get("fan_in_fan_out", False)),
        "init_lora_weights": True,
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": False,
        "use_dora": dora,
        "modules_to_save": None,
        "inference_mode": True,
    }
    if source.get("auto_mapping"):
        config["auto_mapping"] = source["auto_mapping"]  # lets AutoPeftModel find the base class
    _verify_scales(config, ranks)
    return config


def _verify_scales(config: Mapping[str, Any], ranks: Mapping[str, tuple[int, str]]) -> None:
    # Resolve the written config the way PEFT will; a mismatch is a bug in this module.
    settings = parse_settings(config)
    for name, (rank, _) in ranks.items():
        if settings.rank(name) != rank or settings.scale(name) != 1.0:
            raise AssertionError(f"config resolves {name!r} to rank {settings.rank(name)}, scale {settings.scale(name)}")


def _build_metadata(metadata: Mapping[str, str], dest: Path) -> dict[str, str]:
    out = {"format": "pt"}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise AdapterError(f"safetensors metadata must map strings to strings, got {key!r}: {value!r}", dest)
        if key != "format":  # PEFT / transformers expect "pt"
            out[key] = value
    return out


def write_text(path: Path, text: str) -> None:
    """Write a text file and flush it to disk (it is renamed into place next)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _make_parents(parent: Path) -> list[Path]:
    """Create `parent` and missing ancestors; return the ones created, outermost first."""
    missing = []
    folder = parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for folder in missing:
        try:
            folder.mkdir()
        except OSError as exc:
            raise AdapterError(f"cannot create the folder: {exc}", folder) from None
    return missing


def _remove_created(created: Sequence[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty
        except OSError:
            break


# --------------------------------------------------------------------------- committing


def commit_staged(staged: Sequence[StagedOutput]) -> list[Path]:
    """Move every staged folder onto its destination: all of them, or none.

    An existing destination (only allowed with `force`) is renamed aside first and deleted
    once every output is in place; on any failure the outputs already moved are taken back,
    the old folders restored and all temporary folders removed.
    """
    dests = [item.destination for item in staged]
    if len(set(dests)) != len(dests):
        duplicate = next(d for d in dests if dests.count(d) > 1)
        discard_staged(staged)
        raise AdapterError("two outputs of the same run write this folder", duplicate)
    for item in staged:
        if (item.destination.exists() or item.destination.is_symlink()) and not item.force:
            discard_staged(staged)
            raise AdapterError("the output appeared while the run was working (use --force to replace it)",
                               item.destination)

    done: list[tuple[StagedOutput, Path | None]] = []  # (output, where its old folder (or file) went)
    try:
        for item in staged:
            old = None
            if item.destination.exists() or item.destination.is_symlink():
                old = _aside_name(item.destination, "old")
                if item.file:  # an old file goes inside the aside folder, under its own name
                    old = old / item.destination.name
                try:
                    os.replace(item.destination, old)
                except BaseException:
                    (old.parent if item.file else old).rmdir()  # the empty placeholder mkdtemp made
                    raise
            try:
                os.replace(item.staged, item.destination)
            except BaseException:
                if old is not None:
                    os.replace(old, item.destination)
                raise
            done.append((item, old))
    except BaseException as exc:
        for item, old in reversed(done):
            # Put the new output back where discard_staged will remove it, restore the old one.
            os.replace(item.destination, item.staged)
            if old is not None:
                os.replace(old, item.destination)
        discard_staged(staged)
        if isinstance(exc, Exception) and not isinstance(exc, AdapterError):
            raise AdapterError(f"failed to move the output into place: {exc}", staged[len(done)].destination) from exc
        raise
    for item, old in done:
        if old is not None:
            shutil.rmtree(old.parent if item.file else old, ignore_errors=True)  # the new outputs are in place
        if item.file:
            shutil.rmtree(item.temp_dir, ignore_errors=True)  # the staging folder its file came from
    return dests


def discard_staged(staged: Sequence[StagedOutput]) -> None:
    """Remove staged temporary folders (and parents created for them); never touches outputs."""
    for item in staged:
        shutil.rmtree(item.temp_dir, ignore_errors=True)
        _remove_created(item.created_dirs)


def staging_folder(destination: Path) -> tuple[Path, list[Path]]:
    """A hidden temporary sibling of `destination` to stage an output in (named so that `recover_stale`
    knows it), and the parent folders created for it (for `StagedOutput.created_dirs`)."""
    created = _make_parents(destination.parent)
    try:
        return Path(tempfile.mkdtemp(prefix=_staging_prefix(destination, "tmp"), dir=destination.parent)), created
    except BaseException:
        _remove_created(created)
        raise


def _aside_name(dest: Path, tag: str) -> Path:
    # mkdtemp reserves a unique name; the rename then replaces that empty folder.
    return Path(tempfile.mkdtemp(prefix=_staging_prefix(dest, tag), dir=dest.parent))


def _staging_prefix(dest: Path, tag: str) -> str:
    # The writer's pid in the name lets a later run tell a dead run's leftovers from a live one's.
    return f".{dest.name}.dipm-{tag}-{os.getpid()}-"


def remove_own_staging(path: str | Path) -> None:
    """Remove the staging folders this process made for `path` (after a failure or an interrupt)."""
    dest = _resolve(path)
    for leftover in dest.parent.glob(glob_escape(_staging_prefix(dest, "tmp")) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def recover_stale(path: str | Path) -> list[Path]:
    """Clean up what runs killed while writing `path` left behind; returns the folders handled.

    A staged copy (`.NAME.dipm-tmp-PID-*`) of a process that no longer runs is deleted. A previous
    output moved aside (`.NAME.dipm-old-PID-*`) is put back at `path` if nothing is there (the
    run died between the two renames of its commit), and deleted otherwise (it died after the
    new output was in place). Leftovers of live processes — a concurrent run — are not touched.
    """
    dest = _resolve(path)
    try:
        entries = sorted(dest.parent.iterdir())
    except OSError:
        return []
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.dipm-(tmp|old)-(\d+)-[^/]*")
    handled = []
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if not found or entry.is_symlink() or not entry.is_dir() or _alive(int(found[2])):
            continue
        if found[1] == "old" and not (dest.exists() or dest.is_symlink()):
            kept = entry / dest.name  # a one-file output's previous file waits inside (commit_staged)
            if kept.is_file() and not kept.is_symlink() and not (entry / CONFIG_NAME).exists():
                os.replace(kept, dest)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, dest)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        handled.append(entry)
    return handled


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:  # no process can have this pid
        return False
    return True


def write_adapter(
    path: str | Path,
    modules: Mapping[str, LowRank],
    *,
    template: AdapterInfo | None,
    dtype: torch.dtype,
    metadata: Mapping[str, str],
    recipe: str,
    force: bool,
    inputs: Sequence[str | Path] = (),
    **serving: Any,
) -> Path:
    """Write one adapter folder atomically (stage + commit); returns its resolved path. `serving`:
    `target`, `max_lora_rank`, `errors`, and `full`/`full_dtype` (the full-weight modules and biases
    to write beside the LoRA modules, SPEC §7.4) as `stage_adapter` takes them."""
    staged = stage_adapter(path, modules, template=template, dtype=dtype, metadata=metadata,
                           recipe=recipe, force=force, inputs=inputs, **serving)
    return commit_staged([staged])[0]
