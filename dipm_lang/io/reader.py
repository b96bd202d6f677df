"""Read PEFT LoRA adapter folders: validate everything up front, load tensors lazily.

`open_adapter` checks a folder completely (config, key layout, shapes, ranks, dtypes) from the
safetensors *header* alone, so a script fails before any work is done; `read_module` then reads
one module's two tensors when the executor needs them. Scales are folded into `B`, so a module's
update is always `ΔW = B @ A` (SPEC §2) in the file's layout.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import struct
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.digest import FileDigest, Stamp, file_digest, stamp_of
from dipm_lang.io.finite import all_finite, first_non_finite
from dipm_lang.io.full import (FullSettings, FullTensor, classify_keys, parse_full_settings, unknown_keys_hint,
                               unknown_keys_message)
from dipm_lang.io.layout import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME  # noqa: F401 - re-exported
from dipm_lang.io.peft_config import LoraSettings, parse_settings
from dipm_lang.safety.files import FileProblem, path_problem, read_bytes_limited
from dipm_lang.safety.limits import MAX_CONFIG_BYTES
from dipm_lang.ir.modules import natural_key

KEY_PREFIX = "base_model.model."

# Suffix of each factor's key, by module kind (PEFT_NOTES "Adapter folders").
FACTOR_SUFFIXES: dict[str, tuple[str, str]] = {
    "linear": (".lora_A.weight", ".lora_B.weight"),
    "embedding": (".lora_embedding_A", ".lora_embedding_B"),
}
_FACTOR_KEY = re.compile(
    r"^base_model\.model\.(?P<name>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"
)
_PART = {
    "lora_A.weight": ("linear", "A"),
    "lora_B.weight": ("linear", "B"),
    "lora_embedding_A": ("embedding", "A"),
    "lora_embedding_B": ("embedding", "B"),
}
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# init_lora_weights values with which PEFT rewrites the base weights when the adapter is
# created (peft/tuners/lora/layer.py::update_layer): the saved factors alone are not the update.
_BASE_REWRITING_INITS = ("pissa", "corda", "olora", "mica", "loftq", "orthogonal", "lora_ga")

ModuleKind = Literal["linear", "embedding"]


@dataclass(frozen=True)
class ModuleInfo:
    """One LoRA module as found in a file: `ΔW = scale · B @ A`, `B` [m, r], `A` [r, n]."""

    name: str
    out_features: int
    in_features: int
    rank: int
    scale: float
    dtype: torch.dtype
    a_key: str
    b_key: str
    kind: ModuleKind = "linear"
    # Absolute byte offsets of A's and B's data in a safetensors file (None for other sources).
    a_offset: int | None = None
    b_offset: int | None = None
    # DoRA (SPEC §7.8): the key of the module's `lora_magnitude_vector` [m] and its data offset.
    m_key: str | None = None
    m_offset: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """`(m, n)`: the shape of the module's update in the file's layout."""
        return (self.out_features, self.in_features)


@dataclass(frozen=True, eq=False)
class AdapterInfo:
    """A validated adapter folder; tensors stay on disk until `read_module`."""

    path: Path
    config: dict[str, Any]
    base_model: str | None
    modules: dict[str, ModuleInfo]
    dtype: torch.dtype
    digest: FileDigest | str  # SHA-256 of the weights file (`sha256`), computed on demand
    target_modules: list[str] | str | None
    weights_file: Path
    fan_in_fan_out: bool = False
    settings: LoraSettings | None = None
    ignored_keys: tuple[str, ...] = ()
    # Only for a legacy `adapter_model.bin`: its tensors, already loaded (safely) into memory.
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # (size, mtime, inode) of the weights file when it was validated: reads refuse a changed file.
    stamp: Stamp | None = None
    # A DoRA adapter (use_dora, a `lora_magnitude_vector` per module): its update needs the base
    # weights (SPEC §7.8), so a program reading it without a base is refused when it is planned.
    dora: bool = False
    # Full-weight modules and biases (modules_to_save, bias="all"|"lora_only"; io/full.py), by name.
    full: dict[str, FullTensor] = field(default_factory=dict)

    @property
    def task_type(self) -> str | None:
        """PEFT's `task_type` from the config (e.g. `"CAUSAL_LM"`), if any."""
        return self.config.get("task_type")

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the weights file (waits for a hash started with `digest.start()`)."""
        return self.digest if isinstance(self.digest, str) else self.digest.value()

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def label(self) -> str:
        """How outputs name this input: the folder's base name, never a local path (safety/privacy.py)."""
        return self.path.name

    def read(self, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> LowRank:
        """Same-shape modules stacked, scales folded into B (`io.sources.AdapterSource`)."""
        return read_modules(self, names, dtype=dtype, device=device)

    def read_magnitudes(self, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> torch.Tensor:
        """A DoRA adapter's magnitude vectors of same-shape modules, stacked `[G, m]`."""
        return read_magnitudes(self, names, dtype=dtype, device=device)

    def read_full(self, name: str) -> torch.Tensor:
        """One full-weight tensor (`self.full[name]`) as stored: its dtype, bit for bit."""
        return read_full(self, name)


# --------------------------------------------------------------------------- opening


def open_adapter(path: str | Path) -> AdapterInfo:
    """Validate a PEFT LoRA adapter folder without reading its tensor data.

    Raises `AdapterError`, naming the offending file, for anything dipm_lang cannot read as
    a LoRA update: a missing or malformed config, a non-LoRA `peft_type`, `lora_bias`,
    base-rewriting initialisations, a corrupt weights file, unknown keys, missing factors (or
    DoRA magnitudes), non-matrix or non-floating tensors, and ranks that disagree with the config.
    A DoRA adapter opens (`dora=True`); what it means depends on base weights, which the planner
    requires (SPEC §7.8).
    """
    problem = path_problem(str(path))
    if problem:
        raise AdapterError(problem, repr(str(path))[:200])
    folder = Path(path).expanduser().resolve()
    if not folder.exists():  # the Hub reading was not taken either (SPEC §7.5): say how to write one
        raise AdapterError("adapter folder not found", folder,
                           hint="an adapter on the Hugging Face Hub is written hf://ORG/NAME[@REVISION][/SUBFOLDER], "
                                "or ORG/NAME when no local folder ORG exists")
    if not folder.is_dir():
        raise AdapterError("not a folder; give the adapter folder (with adapter_config.json)", folder)

    config_path = folder / CONFIG_NAME
    config = read_config(config_path, folder)
    check_lora_variant(config, config_path)
    settings = parse_settings(config, config_path)

    weights_file, source = _open_weights(folder)
    dora = bool(config.get("use_dora"))
    modules, ignored, full = _scan_keys(source, settings, weights_file, parse_full_settings(config, config_path),
                                        dora=dora, config_path=config_path)

    # Dominant dtype by element count; ties go to the wider type.
    counts: Counter[torch.dtype] = Counter()
    for info in modules.values():
        counts[info.dtype] += info.rank * (info.in_features + info.out_features)
    dtype = max(counts, key=lambda d: (counts[d], d.itemsize))

    target = config.get("target_modules")
    stamp = _stamp(weights_file)
    return AdapterInfo(
        path=folder,
        config=config,
        base_model=config.get("base_model_name_or_path") or None,
        modules=modules,
        dtype=dtype,
        digest=file_digest(weights_file, stamp),
        target_modules=list(target) if isinstance(target, (list, tuple, set)) else target,
        weights_file=weights_file,
        fan_in_fan_out=settings.fan_in_fan_out,
        settings=settings,
        ignored_keys=tuple(ignored),
        _tensors=source.tensors if isinstance(source, _DictSource) else None,
        stamp=stamp if isinstance(source, _SafetensorsSource) else None,
        dora=dora,
        full=full,
    )


def _stamp(file: Path) -> Stamp:
    try:
        return stamp_of(file.stat())
    except OSError as exc:
        raise AdapterError(f"cannot read: {exc}", file) from None


def read_config(config_path: Path, folder: Path) -> dict[str, Any]:
    """An adapter folder's `adapter_config.json`, size-limited and checked to be a JSON object."""
    if not (config_path.exists() or config_path.is_symlink()):
        hint = None
        nested = sorted(p.parent.name for p in folder.glob(f"*/{CONFIG_NAME}"))
        if nested:
            # PEFT saves an adapter not named "default" in a subfolder.
            hint = f"adapters found in subfolders: {', '.join(nested)}"
        raise AdapterError(f"missing {CONFIG_NAME}; not a PEFT adapter folder", config_path, hint=hint)
    try:
        config = json.loads(read_bytes_limited(config_path, MAX_CONFIG_BYTES).decode("utf-8").removeprefix("\ufeff"))
    except FileProblem as exc:
        raise AdapterError(f"cannot read the config: {exc}", config_path) from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", config_path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterError(f"cannot read the config: {exc}", config_path) from None
    except (ValueError, RecursionError) as exc:  # a number too long for int(), nesting too deep for the parser
        raise AdapterError(f"malformed JSON: {str(exc).split(';')[0] or type(exc).__name__}", config_path) from None
    if not isinstance(config, dict):
        raise AdapterError(f"the config must be a JSON object, got {type(config).__name__}", config_path)
    for key in _TEXT_FIELDS:  # copied into outputs and compared across inputs
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise AdapterError(f"'{key}' must be a string, got {value!r:.80}", config_path)
    if config.get("auto_mapping") is not None and not isinstance(config["auto_mapping"], dict):
        raise AdapterError(f"'auto_mapping' must be an object, got {config['auto_mapping']!r:.80}", config_path)
    return config


_TEXT_FIELDS = ("base_model_name_or_path", "task_type", "revision")


def check_lora_variant(config: Mapping[str, Any], config_path: Path) -> None:
    """Refuse configs whose update is not `s · B @ A` on its own."""
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise AdapterError("the config has no 'peft_type'; expected \"LORA\"", config_path)
    if peft_type != "LORA":
        raise AdapterError(f"peft_type is {peft_type!r:.80}; dipm_lang reads only LoRA adapters (\"LORA\")", config_path)
    if config.get("use_dora") not in (None, True, False):
        raise AdapterError(f"'use_dora' must be true or false, got {config.get('use_dora')!r:.80}", config_path)
    if config.get("lora_bias"):
        raise AdapterError(_BIAS_MESSAGE, config_path)
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise AdapterError(
            f"init_lora_weights is {init!r}: PEFT rewrites the base weights for this adapter, so its "
            "factors alone are not its update; convert it to a plain LoRA first "
            "(save_pretrained(..., path_initial_model_for_weight_conversion=...))",
            config_path,
        )


DORA_MESSAGE = (
    "DoRA adapters (use_dora / lora_magnitude_vector) need the base model's weights: their update "
    "m ⊙ normalize_rows(W0 + s·B·A) − W0 depends on W0"
)
DORA_HINT = "give the base model with --base DIR (or base(\"DIR\") in the script)"
_BIAS_MESSAGE = "adapters with lora_bias are not supported: a bias cannot be expressed as a low-rank update"


# --------------------------------------------------------------------------- tensor sources


class _SafetensorsSource:
    """Header-only view of a safetensors file (safe_open validates offsets and sizes)."""

    tensors = None

    def __init__(self, file: Path):
        self.file = file
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                self._meta = {k: (tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype())
                              for k in handle.keys()}
            self.offsets = _data_offsets(file)
        except Exception as exc:  # SafetensorError, OSError, ... — all mean "unreadable file"
            raise AdapterError(f"not a valid safetensors file: {exc}", file) from None

    def keys(self) -> list[str]:
        return list(self._meta)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype | str:
        code = self._meta[key][1]
        return _SAFETENSORS_DTYPES.get(code, code)

    def offset(self, key: str) -> int | None:
        return self.offsets[key]


def _data_offsets(file: Path) -> dict[str, int]:
    """Absolute offset of each tensor's data (called after `safe_open` validated the header)."""
    with open(file, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {key: 8 + size + int(entry["data_offsets"][0]) for key, entry in header.items() if key != "__metadata__"}


class _DictSource:
    """Tensors loaded from a legacy `adapter_model.bin` with `weights_only=True`."""

    def __init__(self, file: Path):
        self.file = file
        try:
            # weights_only=True: the restricted unpickler refuses any global that is not a tensor
            # type, so a malicious pickle raises here instead of running code.
            loaded = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"refusing to load this pickle: {_pickle_problem(exc)}", file,
                               hint="convert the adapter to safetensors where it came from") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise AdapterError("expected a mapping of key names to tensors", file)
        self.tensors: dict[str, torch.Tensor] = loaded

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype | str:
        return self.tensors[key].dtype

    def offset(self, key: str) -> int | None:
        return None


def _pickle_problem(exc: Exception) -> str:
    """The one useful line of torch's long weights-only error (which also advertises turning the check off)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours part of its message
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it would call {found[1]}, so it is not plain tensor data"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"it is not plain tensor data ({type(exc).__name__}: {first[:200]})"


def _open_weights(folder: Path) -> tuple[Path, _SafetensorsSource | _DictSource]:
    safetensors_file = folder / SAFETENSORS_NAME
    bin_file = folder / BIN_NAME
    for file in (safetensors_file, bin_file):
        if file.exists() and not file.is_file():  # a FIFO or a device would block or never end a read
            raise AdapterError("not a regular file", file)
    if safetensors_file.exists():  # PEFT prefers safetensors when both are present
        return safetensors_file, _SafetensorsSource(safetensors_file)
    if bin_file.exists():
        return bin_file, _DictSource(bin_file)
    raise AdapterError(f"no adapter weights: neither {SAFETENSORS_NAME} nor {BIN_NAME} exists", folder)


# --------------------------------------------------------------------------- key layout


def _scan_keys(
    source: _SafetensorsSource | _DictSource, settings: LoraSettings, file: Path, full_settings: FullSettings, *,
    dora: bool = False, config_path: Path | None = None,
) -> tuple[dict[str, ModuleInfo], list[str], dict[str, FullTensor]]:
    """Group the file's keys into modules and check every shape, rank and dtype; the keys that are
    not LoRA factors are full-weight modules and biases (io/full.py) or refused; `dora`: every module
    has its magnitude vector (SPEC §7.8)."""
    factors: dict[str, dict[str, str]] = {}
    magnitudes: dict[str, str] = {}
    kinds: dict[str, ModuleKind] = {}
    unknown: list[str] = []
    maybe_ignored: list[str] = []
    for key in source.keys():
        match = _FACTOR_KEY.match(key)
        if match:
            name = match["name"]
            kind, part = _PART[match["part"]]
            if kinds.setdefault(name, kind) != kind:
                raise AdapterError(f"module {name!r} has both linear and embedding LoRA keys", file)
            factors.setdefault(name, {})[part] = key
        elif key.startswith(KEY_PREFIX) and key.endswith(_MAGNITUDE_SUFFIXES):
            if not dora:
                raise AdapterError(f"key {key!r} is a DoRA magnitude vector, but the config does not set "
                                   "use_dora", file)
            owner = key[len(KEY_PREFIX):].rsplit(".lora_magnitude_vector", 1)[0]
            if owner in magnitudes:
                raise AdapterError(f"module {owner!r} has two DoRA magnitude vectors", file)
            magnitudes[owner] = key
        elif key.endswith(".lora_B.bias"):
            raise AdapterError(f"{_BIAS_MESSAGE} (key {key!r})", file)
        elif key.startswith(KEY_PREFIX) and key.endswith(".base_layer.weight"):
            maybe_ignored.append(key)
        else:
            unknown.append(key)

    # PEFT saves the base weight of a targeted embedding layer next to its LoRA factors
    # (save_embedding_layers; `lm_head` counts as one, so a LoRA on lm_head saves
    # `lm_head.base_layer.weight` too): base weights, not part of the update, so they are
    # skipped. Without LoRA factors for the module it is unknown.
    ignored = []
    for key in maybe_ignored:
        owner = key[len(KEY_PREFIX) : -len(".base_layer.weight")]
        (ignored if owner in kinds else unknown).append(key)
    full, unknown = classify_keys(unknown, full_settings, shape=source.shape, dtype=source.dtype,
                                  offset=source.offset, path=file)
    if unknown:
        raise AdapterError(unknown_keys_message(unknown), file, hint=unknown_keys_hint(unknown))
    if not factors:
        raise AdapterError("the file holds no LoRA weights", file)

    stray = sorted(set(magnitudes) - set(factors))
    if stray:
        raise AdapterError(f"module {stray[0]!r} has a DoRA magnitude vector but no LoRA factors", file)
    modules = {}
    for name, parts in factors.items():
        modules[name] = _module_info(name, kinds[name], parts, source, settings, file)
        if dora:
            modules[name] = _with_magnitude(modules[name], magnitudes.get(name), source, file, config_path)
    return modules, ignored, full


_MAGNITUDE_SUFFIXES = (".lora_magnitude_vector", ".lora_magnitude_vector.weight")


def _with_magnitude(module: ModuleInfo, key: str | None, source: _SafetensorsSource | _DictSource, file: Path,
                    config_path: Path | None) -> ModuleInfo:
    """A DoRA module: its magnitude vector must be there, one entry per output row, floating point."""
    if key is None:
        raise AdapterError(f"DoRA adapters have a lora_magnitude_vector per module: module {module.name!r} has "
                           "none, but the config sets use_dora", config_path or file)
    shape, dtype = source.shape(key), source.dtype(key)
    if tuple(shape) != (module.out_features,):
        raise AdapterError(f"module {module.name!r}: its DoRA magnitude vector is {list(shape)}, expected "
                           f"[{module.out_features}] (one per output row)", file)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise AdapterError(f"module {module.name!r}: its DoRA magnitude vector must be floating point, got "
                           f"{_dtype_name(dtype)}", file)
    return dataclasses.replace(module, m_key=key, m_offset=source.offset(key))


def _module_info(
    name: str,
    kind: ModuleKind,
    parts: Mapping[str, str],
    source: _SafetensorsSource | _DictSource,
    settings: LoraSettings,
    file: Path,
) -> ModuleInfo:
    a_suffix, b_suffix = FACTOR_SUFFIXES[kind]
    for part, suffix in (("A", a_suffix), ("B", b_suffix)):
        if part not in parts:
            raise AdapterError(f"module {name!r} lacks its {part} factor ({KEY_PREFIX}{name}{suffix})", file)
    a_key, b_key = parts["A"], parts["B"]
    a_shape, b_shape = source.shape(a_key), source.shape(b_key)
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise AdapterError(
            f"module {name!r}: factors must be matrices, got A {list(a_shape)} and B {list(b_shape)} "
            "(convolution LoRA is not supported)",
            file,
        )
    (r, n), (m, r_b) = a_shape, b_shape
    if min(r, n, m, r_b) < 1:
        raise AdapterError(f"module {name!r}: empty factors A {list(a_shape)} and B {list(b_shape)}", file)
    if r != r_b:
        raise AdapterError(f"module {name!r}: A is {list(a_shape)} but B is {list(b_shape)}; their ranks differ", file)
    expected = settings.rank(name)
    if r != expected:
        raise AdapterError(
            f"module {name!r} has rank {r} in the file but the config (r / rank_pattern) says {expected}", file
        )
    dtypes = {source.dtype(a_key), source.dtype(b_key)}
    for dtype in dtypes:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise AdapterError(f"module {name!r}: tensors must be floating point, got {_dtype_name(dtype)}", file)
    if len(dtypes) != 1:
        raise AdapterError(f"module {name!r}: A and B have different dtypes", file)
    scale = settings.scale(name)
    if not math.isfinite(scale):
        raise AdapterError(f"module {name!r}: its scale is not finite", file)
    return ModuleInfo(name=name, out_features=m, in_features=n, rank=r, scale=scale,
                      dtype=dtypes.pop(), a_key=a_key, b_key=b_key, kind=kind,
                      a_offset=source.offset(a_key), b_offset=source.offset(b_key))


_CODE_NAMES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
               "U32": "uint32", "I64": "int64", "U64": "uint64"}


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):  # a safetensors dtype code torch has no float type for
        return _CODE_NAMES.get(dtype, dtype)
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- reading


def read_module(
    info: AdapterInfo,
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    check_finite: bool = True,
) -> LowRank:
    """Read one module's factors, fold its scale into `B`, and cast to `dtype` on `device`.

    Raises `AdapterError` for an unknown module, a file changed since `open_adapter`, or
    (with `check_finite`) NaN/Inf values, naming the file and the module.
    """
    return read_modules(info, [name], dtype=dtype, device=device, check_finite=check_finite)[0]


def read_modules(
    info: AdapterInfo,
    names: Sequence[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    check_finite: bool = True,
) -> LowRank:
    """Read same-shape modules into one stack `B [k, m, r]`, `A [k, r, n]`, scales folded into `B`.

    Each factor is read from the file straight into its slice of the stack (one copy, no
    per-module file opening), and the NaN/Inf check runs once over the whole stack.
    """
    modules = []
    for name in names:
        module = info.modules.get(name)
        if module is None:
            close = difflib.get_close_matches(name, list(info.modules), n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            raise AdapterError(f"the adapter has no module {name!r}", info.path, hint=hint)
        modules.append(module)
    first = modules[0]
    if any(mod.shape != first.shape or mod.rank != first.rank for mod in modules):
        raise ValueError("read_modules reads modules of one shape and rank together")
    stored = {mod.dtype for mod in modules}
    raw_dtype = stored.pop() if len(stored) == 1 else torch.float32
    b = torch.empty(len(modules), first.out_features, first.rank, dtype=raw_dtype)
    a = torch.empty(len(modules), first.rank, first.in_features, dtype=raw_dtype)
    _fill(info, modules, b, a)

    # Fold the scales in at float32 (or float64) precision, then cast once.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = a.to(work), b.to(work)
    scales = [mod.scale for mod in modules]
    if any(scale != 1.0 for scale in scales):
        b.mul_(torch.tensor(scales, dtype=work)[:, None, None])
    if check_finite:
        _check_finite(a, b, info, modules, "")
    a, b = a.to(dtype), b.to(dtype)
    if check_finite and work != dtype:
        _check_finite(a, b, info, modules, f" after casting to {_dtype_name(dtype)}")
    return LowRank(B=b.to(device), A=a.to(device))


def read_magnitudes(info: AdapterInfo, names: Sequence[str], *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """The `lora_magnitude_vector`s of DoRA modules of one shape, stacked `[G, m]` (NaN/Inf refused)."""
    modules = [info.modules[name] for name in names]
    if any(module.m_key is None for module in modules):
        raise ValueError("read_magnitudes reads the modules of a DoRA adapter")
    out = torch.empty(len(modules), modules[0].out_features, dtype=torch.float64)
    try:
        if info._tensors is not None:
            for i, module in enumerate(modules):
                out[i].copy_(info._tensors[module.m_key])
        else:
            if info.stamp is not None and _stamp(info.weights_file) != info.stamp:
                raise AdapterError("the file changed since the adapter was opened; run again", info.weights_file)
            with safe_open(str(info.weights_file), framework="pt", device="cpu") as handle:
                for i, module in enumerate(modules):
                    out[i].copy_(handle.get_tensor(module.m_key))
    except AdapterError:
        raise
    except Exception as exc:
        raise AdapterError(f"cannot read the magnitudes of module {modules[0].name!r}: {exc}",
                           info.weights_file) from None
    if not all_finite(out):
        index = first_non_finite(out) or 0
        raise AdapterError(f"module {modules[index].name!r}: its DoRA magnitude vector has NaN or Inf values",
                           info.weights_file)
    return out.to(dtype=dtype, device=device)


def _fill(info: AdapterInfo, modules: Sequence[ModuleInfo], b: torch.Tensor, a: torch.Tensor) -> None:
    """Copy each module's stored factors into `b[i]` and `a[i]` (converting mixed dtypes)."""
    if info._tensors is not None:
        for i, module in enumerate(modules):
            a[i].copy_(info._tensors[module.a_key])
            b[i].copy_(info._tensors[module.b_key])
        return
    if any(module.dtype != b.dtype for module in modules) or sys.byteorder != "little":
        # rare: a batch of mixed stored dtypes (read and converted one by one), a big-endian host
        try:
            with safe_open(str(info.weights_file), framework="pt", device="cpu") as handle:
                for i, module in enumerate(modules):
                    a[i].copy_(handle.get_tensor(module.a_key))
                    b[i].copy_(handle.get_tensor(module.b_key))
        except Exception as exc:
            raise AdapterError(f"cannot read module {modules[0].name!r}: {exc}", info.weights_file) from None
        return
    try:
        with open(info.weights_file, "rb", buffering=0) as handle:
            if info.stamp is not None and stamp_of(os.fstat(handle.fileno())) != info.stamp:
                raise AdapterError("the file changed since the adapter was opened; run again",
                                   info.weights_file)
            for i, module in enumerate(modules):
                _read_into(handle, a[i], module.a_offset, module, info)
                _read_into(handle, b[i], module.b_offset, module, info)
    except OSError as exc:
        raise AdapterError(f"cannot read module {modules[0].name!r}: {exc}", info.weights_file) from None


def _read_into(handle, target: torch.Tensor, offset: int | None, module: ModuleInfo, info: AdapterInfo) -> None:
    """Read `target.nbytes` bytes at `offset` straight into the contiguous tensor `target`."""
    view = memoryview(target.view(torch.uint8).numpy()).cast("B")
    handle.seek(offset)
    done = 0
    while done < len(view):
        count = handle.readinto(view[done:])
        if not count:
            raise AdapterError(f"module {module.name!r}: the file ends early (truncated since it was opened?)",
                               info.weights_file)
        done += count


def _check_finite(a: torch.Tensor, b: torch.Tensor, info: AdapterInfo, modules: Sequence[ModuleInfo],
                  when: str) -> None:
    for part, stack in (("A", a), ("B", b)):
        if not all_finite(stack):
            index = first_non_finite(stack) or 0
            raise AdapterError(f"module {modules[index].name!r}: factor {part} has NaN or Inf values{when}",
                               info.weights_file)


def read_full(info: AdapterInfo, name: str) -> torch.Tensor:
    """One full-weight tensor of a folder, as stored (its dtype, bit for bit); refuses a file that
    changed since `open_adapter`."""
    tensor = info.full[name]
    if info._tensors is not None:
        return info._tensors[tensor.key].detach().clone()
    try:
        if info.stamp is not None and stamp_of(os.stat(info.weights_file)) != info.stamp:
            raise AdapterError("the file changed since the adapter was opened; run again", info.weights_file)
        with safe_open(str(info.weights_file), framework="pt", device="cpu") as handle:
            return handle.get_tensor(tensor.key)
    except AdapterError:
        raise
    except Exception as exc:
        raise AdapterError(f"cannot read {name}: {exc}", info.weights_file) from None


# --------------------------------------------------------------------------- compatibility


def check_compatible(
    infos: Sequence[AdapterInfo], *, ignore_base_model: bool = False
) -> dict[str, tuple[int, int]]:
    """Check that adapters can be combined; return the union of modules and their `(m, n)`.

    Same-named modules must have the same shape and kind, and the configs'
    `base_model_name_or_path` must agree where both are set (unless `ignore_base_model`).
    Modules are returned in natural order (`layers.2` before `layers.10`).
    """
    seen: dict[str, tuple[ModuleInfo, AdapterInfo]] = {}
    base: tuple[str, AdapterInfo] | None = None
    for info in infos:
        if info.base_model and not ignore_base_model:
            if base is not None and _norm_model(base[0]) != _norm_model(info.base_model):
                raise AdapterError(
                    f"base models differ: {base[1].path} is for {base[0]!r} but {info.path} is for {info.base_model!r}",
                    info.path,
                )
            base = base or (info.base_model, info)
        for name, module in info.modules.items():
            if name not in seen:
                seen[name] = (module, info)
                continue
            first, owner = seen[name]
            if first.shape != module.shape or first.kind != module.kind:
                raise AdapterError(
                    f"module {name!r} is {_describe(first)} in {owner.path} but {_describe(module)} in {info.path}",
                    info.path,
                )
    return {name: seen[name][0].shape for name in sorted(seen, key=natural_key)}


def _norm_model(name: str) -> str:
    return name.strip().rstrip("/")


def _describe(module: ModuleInfo) -> str:
    kind = "" if module.kind == "linear" else f"{module.kind} "
    return f"{kind}{module.out_features}x{module.in_features}"

