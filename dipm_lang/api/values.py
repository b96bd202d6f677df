"""Values of expressions (`AdapterValue`), how inputs are given (paths, values, PEFT models), and
handing a value to PEFT (`add_to_peft_model`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from dipm_lang.errors import DipmTypeError, UsageError
from dipm_lang.io.finite import any_nonzero
from dipm_lang.io.hub_ref import hub_input

if TYPE_CHECKING:  # heavy imports stay inside functions: `import dipm_lang` must be cheap
    import torch

    from dipm_lang.backend.lowrank import LowRank
    from dipm_lang.io.reader import AdapterInfo
    from dipm_lang.io.memory import MemoryAdapter
    from dipm_lang.run import OutputSummary

InputValue = Union[str, "os.PathLike[str]", "AdapterValue", Mapping[str, "LowRank"], float, Any]
"""A path, an `AdapterValue`, a mapping module → `LowRank`, a `PeftModel`, `(PeftModel, name)`, or
(for `evaluate`) a number."""

# ---- values -------------------------------------------------------------------------------


class AdapterValue(Mapping[str, Any]):
    """The value of an expression: one entry per module.

    Updates (`Delta`, `Dir[by]`) hold a `LowRank` per module (ΔW = B @ A, scale folded into
    `B`); magnitudes (`Mag[by]`) hold a tensor per module (`[m]`, `[n]` or a scalar), factors
    (`Factor[A]`, `Dir[in] of Factor[B]`, SPEC §7.3) the factor matrix per module. It is a
    read-only mapping module name → value; `print(value)` shows a summary (type, modules,
    ranks, Frobenius norms per layer), never a tensor dump.
    """

    def __init__(self, type: str, modules: Mapping[str, Any], *, template: AdapterInfo | None = None,
                 recipe: str = "", metadata: Mapping[str, str] | None = None,
                 out_dtype: torch.dtype | None = None, input_paths: list[Path] | None = None,
                 full: Any = ()):
        self.type = type
        self.modules: dict[str, Any] = dict(modules)
        self.recipe = recipe
        self._template = template
        self._metadata = dict(metadata or {})
        self._out_dtype = out_dtype
        self._input_paths = list(input_paths or [])
        # The full-weight modules and biases saving writes (io.full.FullOutput), or the refusal to raise then
        self._full = full

    def full_tensors(self) -> dict[str, tuple[Any, torch.Tensor]]:
        """The full-weight modules and biases (SPEC §7.4) the value carries: name → (what it is, the
        tensor, in the inputs' dtype). Raises the refusal when the recipe does not say which."""
        if isinstance(self._full, Exception):
            raise self._full
        return {out.name: (out.tensor, out.value(out.stored_dtype)) for out in self._full}

    @property
    def kind(self) -> str:
        """`Delta`, `Dir` or `Mag` (the type without its `by`)."""
        return self.type.split("[", 1)[0]

    @property
    def is_update(self) -> bool:
        """Whether each module holds an update (Delta or Dir), as opposed to magnitudes or a factor
        (or a direction of one: `Dir[out] of Factor[B]`, SPEC §7.3)."""
        return self.kind == "Delta" or (self.kind == "Dir" and " of Factor[" not in self.type)

    @property
    def ranks(self) -> dict[str, int]:
        """Module → inner rank of its factors (updates only)."""
        self._need_update("ranks")
        return {name: value.rank for name, value in self.modules.items()}

    def delta(self, name: str) -> torch.Tensor:
        """Module `name`'s update as a dense m×n matrix `B @ A` (the layout of the adapter files)."""
        self._need_update("delta")
        if name not in self.modules:
            from dipm_lang.errors import did_you_mean

            guess = did_you_mean(name, set(self.modules))
            raise KeyError(f"no module {name!r}" + (f"; did you mean {guess!r}?" if guess else ""))
        return self.modules[name].dense()

    def summary(self) -> str:
        """A few lines: type, modules, ranks, norms per layer (computed from the factors)."""
        from dipm_lang.report.summary import summarize

        return summarize(self.type, self.modules)

    def save(self, path: str | os.PathLike[str], rank: int | None = None, force: bool = False, *,
             dtype: str | torch.dtype | None = None, energy: float | None = None, max_rank: int | None = None,
             target: str | None = None, format: str | None = None) -> OutputSummary:
        """Write the value as a PEFT LoRA adapter folder (atomically), like `save(x, path, rank=…)`;
        a value computed from LoRAs of an image model is written in its first input's format, or in
        `format` ("kohya", "diffusers", "peft"; SPEC §7.10).

        `rank` truncates every module with the factored SVD; `energy` keeps per module the smallest
        rank holding that fraction of its energy (SPEC §7.6) and `max_rank` caps either (the summary
        reports the relative error dropped, per module with `energy`); `target="vllm"` writes what
        vLLM's LoRA loader serves, `max_rank` being the server's `--max-lora-rank`. `force`
        replaces an existing adapter folder; `dtype` defaults to the inputs' dtype. The folder loads
        with `peft.PeftModel.from_pretrained`.
        """
        import math

        from dipm_lang.backend import lowrank as L
        from dipm_lang.backend.ranks import save_by_energy
        from dipm_lang.io.lora_output import write_lora_output
        from dipm_lang.io.writer import write_adapter
        from dipm_lang.ir.targets import TARGETS, vllm_max_rank_problem
        from dipm_lang.run.outputs import OutputSummary, to_output

        self._need_update("save")
        if isinstance(self._full, Exception):
            raise self._full
        for name, value in (("rank", rank), ("max_rank", max_rank)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive whole number, got {value!r}")
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                   or not 0 < energy <= 1):
            raise UsageError(f"energy must be a fraction with 0 < energy ≤ 1, got {energy!r}")
        if rank is not None and energy is not None:
            raise UsageError("give rank= or energy=, not both (max_rank= caps the ranks energy= keeps)")
        if target is not None and target not in TARGETS:
            raise UsageError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if target == "vllm" and vllm_max_rank_problem(max_rank):
            raise UsageError(vllm_max_rank_problem(max_rank))
        if target == "vllm" and self._full:
            from dipm_lang.run.full_weights import check_target
            check_target(self._full, target)
        out_dtype = torch_dtype(dtype) if dtype is not None else (self._out_dtype or torch_dtype("float32"))
        cut = rank if max_rank is None or rank is None else min(rank, max_rank)
        by_energy = rank is None and (energy is not None or max_rank is not None)
        modules, errors, dropped, total = {}, {}, 0.0, 0.0
        for name, value in self.modules.items():
            if by_energy:
                (value,), dropped_sq, total_sq, (errors[name],) = save_by_energy(value, energy, max_rank)
            else:
                value, dropped_sq, total_sq = L.truncate(value, cut)
            dropped, total = dropped + dropped_sq, total + total_sq
            modules[name] = to_output(value)
        image = self._image_target(path, format, target)
        if image is not None:
            written = write_lora_output(image.destination, modules, format=image.format, family=image.family,
                                        template=image.template, file=image.file, dtype=out_dtype,
                                        metadata=self._metadata, recipe=self.recipe, force=force,
                                        inputs=self._input_paths, errors=errors)
        else:
            written = write_adapter(path, modules, template=self._template, dtype=out_dtype, metadata=self._metadata,
                                    recipe=self.recipe, force=force, inputs=self._input_paths, target=target,
                                    max_lora_rank=max_rank if target == "vllm" else None, errors=errors,
                                    full=self._full, full_dtype=torch_dtype(dtype) if dtype is not None else None)
        ranks = [v.rank for v in modules.values() if v.rank > 0]
        cuts = rank is not None or by_energy
        error = (math.sqrt(dropped / total) if total > 0 else 0.0) if cuts else None
        kept = {name: v.rank for name, v in modules.items() if v.rank > 0}
        written_ranks = [max(ranks)] * len(ranks) if target == "vllm" and ranks else ranks
        return OutputSummary(written, len(ranks), written_ranks, str(out_dtype).removeprefix("torch."), error,
                             kept=kept, errors={n: e for n, e in errors.items() if n in kept}, target=target)

    def _image_target(self, path: Any, format: str | None, target: str | None) -> Any:
        """How an image-model LoRA value is written (`run/image_models.choose_target`), None for a PEFT folder."""
        from dipm_lang.io.lora_files import family_of
        from dipm_lang.ops.io import OUTPUT_FORMATS
        from dipm_lang.run.image_models import choose_target

        if format is not None and format not in OUTPUT_FORMATS:
            raise UsageError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {format!r}")
        if target is not None and format not in (None, "peft"):
            raise UsageError(f"target={target!r} writes a PEFT adapter folder, not a {format} file")
        family = family_of(self._template)
        return choose_target(os.fspath(path), format, self._template if family else None, family, serving=target)

    def _need_update(self, what: str) -> None:
        if not self.is_update:
            raise DipmTypeError(f"{what} needs an update (Delta or Dir); this value is {self.type}")

    # Mapping protocol: module name -> value
    def __getitem__(self, name: str) -> Any:
        return self.modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def __repr__(self) -> str:
        return f"<AdapterValue {self.summary()}>"

    __str__ = summary


# ---- PEFT ---------------------------------------------------------------------------------


def add_to_peft_model(peft_model: Any, value: AdapterValue | Mapping[str, LowRank], adapter_name: str, *,
                      activate: bool = False) -> Any:
    """Add `value` to an in-memory `peft.PeftModel` as a new LoRA adapter named `adapter_name`.

    This is what `add_weighted_adapter` is used for, with any dipm expression as the recipe.
    Each module gets its own rank (`r` / `rank_pattern`) and scale 1 (`lora_alpha == r`), and
    the factors are copied in, so `get_delta_weight(adapter_name)` equals `value.delta(name)`.
    Modules whose update is exactly zero are left out; a value that is zero everywhere (a sweep's
    λ = 0, say) becomes an adapter of rank-1 zero factors on its modules, a no-op as PEFT's own
    freshly initialised adapters are. Raises `UsageError` if the model
    already has an adapter of that name (PEFT would silently keep the old one), if a module is
    missing from the model, or if a shape disagrees (the half-made adapter is removed again).
    With `activate`, the new adapter becomes the active one. Returns the `LoraConfig` used.
    """
    import peft
    import torch

    from dipm_lang.io.writer import build_config
    from dipm_lang.io.memory import active_adapter

    if not isinstance(peft_model, peft.PeftModel):
        raise UsageError(f"expected a peft.PeftModel, got {type(peft_model).__name__}")
    if not isinstance(adapter_name, str) or not adapter_name:
        raise UsageError(f"adapter_name must be a non-empty string, got {adapter_name!r}")
    if adapter_name in peft_model.peft_config:
        raise UsageError(f"the model already has an adapter named {adapter_name!r}; choose another name "
                         "or delete it first (peft_model.delete_adapter)")
    if isinstance(value, AdapterValue):
        if not value.is_update:
            raise DipmTypeError(f"only an update (Delta or Dir) can become an adapter; this value is {value.type}")
        if isinstance(value._full, Exception):
            raise value._full
        if value._full:
            from dipm_lang.run.full_weights import describe

            names = [out.name for out in value._full]
            raise UsageError(f"the value carries full-weight modules or biases ({describe(names)}),"
                             " which add_to_peft_model cannot add (PEFT shares biases between adapters); save() it "
                             "as a folder, or add drop_full(x)")
        modules = value.modules
    else:
        modules = dict(value)
    factors = {name: v for name, v in modules.items() if v.rank > 0 and any_nonzero(v.B) and any_nonzero(v.A)}
    if not factors:
        from dipm_lang.backend.lowrank import LowRank

        if not modules:
            raise UsageError("the value has no modules; there is nothing to add")
        factors = {name: LowRank(torch.zeros(v.m, 1, dtype=v.dtype), torch.zeros(1, v.n, dtype=v.dtype))
                   for name, v in modules.items()}
    base = peft_model.base_model.model
    kinds: dict[str, tuple[int, str]] = {}
    for name, v in factors.items():
        try:
            layer = base.get_submodule(name)
        except AttributeError:
            raise UsageError(f"the model has no module {name!r}") from None
        layer = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
        kinds[name] = (v.rank, "embedding" if isinstance(layer, torch.nn.Embedding) else "linear")
    settings = build_config(kinds, None)
    existing = peft_model.peft_config.get(active_adapter(peft_model))
    config = peft.LoraConfig(
        r=settings["r"], lora_alpha=settings["lora_alpha"], rank_pattern=settings["rank_pattern"],
        alpha_pattern=settings["alpha_pattern"], target_modules=settings["target_modules"], lora_dropout=0.0,
        bias="none", fan_in_fan_out=bool(getattr(existing, "fan_in_fan_out", False)),
        task_type=getattr(existing, "task_type", None),
        base_model_name_or_path=getattr(existing, "base_model_name_or_path", None),
    )
    try:
        peft_model.add_adapter(adapter_name, config)
    except (KeyError, ValueError, TypeError) as e:  # e.g. a name that is an nn.Module attribute ("half")
        raise UsageError(f"PEFT cannot add an adapter named {adapter_name!r}: {e}") from e
    try:
        with torch.no_grad():
            for name, v in factors.items():
                layer = base.get_submodule(name)
                if adapter_name in getattr(layer, "lora_A", {}):
                    a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
                elif adapter_name in getattr(layer, "lora_embedding_A", {}):
                    a, b = layer.lora_embedding_A[adapter_name], layer.lora_embedding_B[adapter_name]
                else:
                    raise UsageError(f"PEFT did not create the adapter on module {name!r}")
                if tuple(a.shape) != tuple(v.A.shape) or tuple(b.shape) != tuple(v.B.shape):
                    raise UsageError(f"module {name!r}: the value is {v.m}x{v.n} (rank {v.rank}) but the model's "
                                     f"LoRA factors are B {list(b.shape)}, A {list(a.shape)}")
                a.copy_(v.A.to(device=a.device, dtype=a.dtype))
                b.copy_(v.B.to(device=b.device, dtype=b.dtype))
    except BaseException:
        peft_model.delete_adapter(adapter_name)
        raise
    if activate:
        peft_model.set_adapter(adapter_name)
    return config


# ---- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def attach_sources(file: str, text: str) -> Iterator[None]:
    """Attach the source text to errors raised inside, for `render(e, e.sources)`."""
    from dipm_lang.errors import DipmError

    try:
        yield
    except DipmError as e:
        if getattr(e, "sources", None) is None:
            e.sources = {file: text}
        raise


def split_inputs(inputs: Mapping[str, InputValue]) -> tuple[dict[str, Any], dict[str, MemoryAdapter]]:
    """NAME → load path (or number) for every input, and the in-memory inputs keyed by their
    `<memory:…>` path."""
    paths: dict[str, Any] = {}
    memory: dict[str, MemoryAdapter] = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"input names must be identifiers, got {name!r}")
        if isinstance(value, str):  # a folder, or a Hub id (`"org/name"`, `"hf://org/name@rev"`: SPEC §7.5)
            hub = hub_input(value, base_dir=Path.cwd())
            paths[name] = str(hub) if hub is not None else str(Path(os.path.expanduser(value)).resolve())
            continue
        if isinstance(value, os.PathLike):
            paths[name] = str(Path(os.path.expanduser(os.fspath(value))).resolve())
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a Num: t, λ, a weight …
            paths[name] = value
            continue
        adapter = _memory_adapter(name, value)
        paths[name] = str(adapter.path)
        memory[str(adapter.path)] = adapter
    return paths, memory


def _memory_adapter(name: str, value: Any) -> MemoryAdapter:
    from dipm_lang.io import memory as M

    if isinstance(value, AdapterValue):
        if not value.is_update:
            raise UsageError(f"input '{name}': a {value.type} cannot be an input; inputs are updates")
        template = value._template
        kinds = {m: info.kind for m, info in template.modules.items()} if template else {}
        return M.from_modules(name, value.modules, config=template.config if template else {}, kinds=kinds,
                              full=value.full_tensors())
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        return M.from_peft(value[0], value[1], label=name)
    if isinstance(value, Mapping):
        return M.from_modules(name, value)
    if _is_peft_model(value):
        return M.from_peft(value, label=name)
    raise UsageError(f"input '{name}': expected a path, an AdapterValue, a mapping module → LowRank, a "
                     f"PeftModel or (PeftModel, adapter_name); got {type(value).__name__}")


def _is_peft_model(value: Any) -> bool:
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is optional
        return False
    return isinstance(value, peft.PeftModel)


def detached(value: Any) -> Any:
    """A normal (non-inference) tensor, so results can feed autograd or be copied into models."""
    from dipm_lang.backend.lowrank import LowRank

    if isinstance(value, LowRank):
        return LowRank(value.B.clone(), value.A.clone())
    return value.clone() if hasattr(value, "clone") else value


def torch_dtype(dtype: Any) -> torch.dtype:
    from dipm_lang.run.planning import DTYPES

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UsageError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise UsageError(f"dtype {dtype}: use one of {', '.join(DTYPES)}")
    return dtype


def dtype_name(dtype: Any) -> str:
    return str(torch_dtype(dtype)).removeprefix("torch.")


def run_options(device: str, dtype: Any, out_dtype: Any, **kwargs: Any):
    from dipm_lang.backend.lowrank import EPS
    from dipm_lang.run import RunOptions

    if kwargs.get("eps") is None:
        kwargs["eps"] = EPS
    return RunOptions(device=device, dtype=dtype_name(dtype),
                      out_dtype=dtype_name(out_dtype) if out_dtype is not None else None, **kwargs)
