"""Step `plan` of the pipeline: open and validate every input and output before any tensor is read.

Every input's config and safetensors header is opened, shapes and base models are checked across
inputs, factor merges are checked for equal ranks, and every output path is checked — so a bad
second input fails the run before the first output, and nothing is half-done. With base weights
(SPEC §7.8) the base is opened and checked too, and which values are in DoRA's form is decided
(`run/weights.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dipm_lang.errors import AdapterError, ExecutionError, Span, UsageError, did_you_mean
from dipm_lang.io.hub_ref import is_hub_path
from dipm_lang.io.layout import ADAPTER_FILES
from dipm_lang.io.reader import check_compatible
from dipm_lang.io.sources import AdapterSource, file_inputs, is_memory_key, open_source
from dipm_lang.io.lora_output import check_output
from dipm_lang.io.writer import OUTPUT_DTYPES, prepare_output, recover_stale
from dipm_lang.ir.modules import layer_index, natural_key
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.schedules import LayerError, is_schedule, value_at
from dipm_lang.ops.baselines import METHODS
from dipm_lang.run import image_models
from dipm_lang.run.factor_ranks import check_factor_ranks
from dipm_lang.run.full_weights import full_modules, plan_full_weights
from dipm_lang.run.options import DTYPE_NAMES, RunOptions
from dipm_lang.run import weights

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class Plan:
    """Everything checked before work: inputs opened, module union, outputs writable."""

    program: Program
    inputs: dict[str, AdapterSource]          # load path (weights.source_key) -> its source
    modules: dict[str, tuple[int, int]]       # module -> (m, n), natural order
    device: torch.device
    dtype: torch.dtype
    out_dtype: torch.dtype
    # Per save (id of its node): the full-weight modules and biases it writes (SPEC §7.4, run/full_weights.py)
    full: dict[int, list] = field(default_factory=dict)
    full_modules: tuple[str, ...] = ()  # the modules the inputs' full-weight tensors belong to
    base: Any = None                          # the base model (io.base_model.BaseModel), SPEC §7.8
    forms: frozenset[int] = frozenset()       # ids of the nodes whose value is in DoRA's form

    @property
    def uses_weights(self) -> bool:
        """Whether the run reads W0 (values in DoRA's form; bake adds W0 itself when it writes)."""
        return bool(self.forms)

    def kind(self, name: str) -> str:
        """A module's LoRA kind ("linear" or "embedding"), from the first input that has it."""
        return next((info.modules[name].kind for info in self.inputs.values() if name in info.modules), "linear")
    family: str | None = None                 # the inputs' image-model family (SPEC §7.10), None for PEFT ones

    @property
    def layers(self) -> int:
        """L of SPEC §7.2: one plus the highest layer index over the program's modules — LoRA and
        full-weight ones — (1 if none has one)."""
        return layer_count([*self.modules, *self.full_modules])

    def group_key(self, name: str) -> tuple:
        """Modules with equal keys can run as one batch: same shape, same rank in every input."""
        return self.modules[name] + tuple(info.modules[name].rank if name in info.modules else 0
                                          for info in self.inputs.values())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    return device


def torch_dtype(name: str, flag: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"{flag} {name}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def schedules_of(program: Program) -> list[tuple[Node, Any]]:
    """Every schedule the program uses: (the node holding it, the schedule), in program order."""
    found = []
    for node in walk(program.all_roots()):
        for _, value in node.attrs:
            for item in (value if isinstance(value, tuple) else (value,)):
                if is_schedule(item):
                    found.append((node, item))
    return found


def schedule_values(the_plan: "Plan") -> list[tuple[Any, dict[str, float]]]:
    """Each distinct schedule of the planned program — as written, where the lowering recorded them —
    and its number for every module (what the run uses; `dipm run` shows them per layer)."""
    seen: dict[Any, dict[str, float]] = {}
    written = the_plan.program.schedules or [schedule for _, schedule in schedules_of(the_plan.program)]
    for schedule in written:
        if schedule not in seen:
            seen[schedule] = {name: value_at(schedule, name, the_plan.layers) for name in the_plan.modules}
    return list(seen.items())


def layer_count(modules) -> int:
    """One plus the highest layer index of these module names (1 if none has one)."""
    indices = [index for index in map(layer_index, modules) if index is not None]
    return 1 + max(indices, default=0)


def check_schedules(program: Program, modules: Mapping[str, tuple[int, int]]) -> None:
    """Before any tensor is read: every schedule has a value for every module (a ramp with
    `layers=L` must not meet a module of layer index ≥ L; SPEC §7.2)."""
    layers = layer_count(modules)
    for node, schedule in schedules_of(program):
        for name in modules:
            try:
                value_at(schedule, name, layers)
            except LayerError as error:
                raise ExecutionError(str(error), program.spans.get(node)) from None
            except ZeroDivisionError:
                raise ExecutionError(f"division by zero in the schedule for module {name!r}",
                                     program.spans.get(node)) from None


def at_load(error: AdapterError, span: Span | None) -> AdapterError:
    """An input's error, pointed at the `load` (or input name) that asked for it, with the caret; for a
    folder that is not there, the near names in its parent folder (a typo such as `helpfull`)."""
    if span is None:
        return error
    hint = error.hint
    if error.path and "not found" in error.message and not is_hub_path(error.path):
        hint = near_names(Path(error.path)) or hint  # a typo's near name first
    moved = AdapterError(f"{error.path}: {error.message}" if error.path else error.message, hint=hint)
    moved.span = span
    return moved


def near_names(missing: Path) -> str | None:
    """'did you mean …?' among the folders next to a missing one, or what is there."""
    try:
        folders = sorted(entry.name for entry in missing.parent.iterdir() if entry.is_dir())
    except OSError:
        return None
    guess = did_you_mean(missing.name, folders)
    if guess:
        return f"did you mean '{guess}'? ({missing.parent} holds it)"
    if folders:
        return f"{missing.parent} holds: {', '.join(folders[:6])}{' …' if len(folders) > 6 else ''}"
    return None


def load_nodes(program: Program) -> list[Node]:
    """The nodes that read an input: `load`s, and `extract`s (SPEC §7.8)."""
    return weights.source_nodes(program)


def plan(program: Program, options: RunOptions, *, check_outputs: bool = True,
         memory: Mapping[str, AdapterSource] | None = None,
         opener: Callable[[str], AdapterSource] | None = None, recover: bool = False) -> Plan:
    """Open and validate every input and output; read no tensor data.

    `memory` holds in-memory inputs by their `<memory:NAME>` load paths (the Python API);
    `opener` opens a load path (default `io.sources.open_source`; the REPL passes one that caches);
    `recover` first cleans up what killed runs left next to each output (`writer.recover_stale`).
    """
    infos: dict[str, AdapterSource] = {}
    open_ = opener or (lambda path, family=None: open_source(path, memory, family=family, progress=options.progress))
    families: dict[str, str | None] = {}
    base_folder = weights.base_path(program, options)
    base_node = next(iter(weights.needs_base(program)), None)
    base = _open_base(base_folder, options, program.spans.get(base_node)) if base_folder else None
    for node in load_nodes(program):
        if node.op == "extract":
            infos.setdefault(weights.source_key(node), _open_extract(node, base, options, program))
            continue
        path = node.attr("path")
        if path is None:
            name = node.attr("name") or "input"
            raise UsageError(f"input '{name}' has no path: give it with --set {name}=PATH",
                             program.spans.get(node))
        if path not in infos:
            if options.sandbox is not None and is_hub_path(path):  # the lowering checked it too
                options.sandbox.check_hub(path, "load", program.spans.get(node))
            elif options.sandbox is not None and not is_memory_key(path):  # the files a folder holds may be links
                options.sandbox.check_files(path, ADAPTER_FILES, "load", program.spans.get(node))
            try:
                family = node.attr("family")
                infos[path] = open_(path) if family is None else open_(path, family=family)
            except AdapterError as error:
                raise at_load(error, program.spans.get(node)) from None
        if families.setdefault(path, node.attr("family")) != node.attr("family"):
            raise UsageError(f"{path} is loaded with two different family= values", program.spans.get(node))
    modules = check_compatible(list(infos.values()), ignore_base_model=options.ignore_base_model)
    family = image_models.check_inputs(program, infos, schedules_of(program), at_load)
    check_factor_merge_ranks(program, infos)  # factor merges (linear, ties, …) need equal ranks: fail before work
    check_factor_ranks(program, infos)  # so do factors that meet (lora(H.B, T.A), shift(dir(H.B), dir(T.B), t))
    check_schedules(program, modules)
    dora = [(node, infos[node.attr("path")]) for node in load_nodes(program)
            if node.op == "load" and getattr(infos[node.attr("path")], "dora", False)]
    forms = weights.form_nodes(program, {id(node) for node, _ in dora})
    weights.check_forms(program, forms)
    if base is None:
        missing = weights.require_base(program, dora)
        if missing is not None:
            raise at_load(missing[0], program.spans.get(missing[1]))
    else:
        modules = weights.touched_modules(program, infos, modules)
        try:
            weights.check_modules(base, modules, infos)
        except AdapterError as error:
            raise at_load(error, program.spans.get(base_node)) from None
    extra = full_modules(infos)
    full = plan_full_weights(program, infos, layer_count([*modules, *extra]), list(modules))
    for node in program.roots:  # whole tensors a bake writes in place of the base's: there, of their shape
        if node.op == "bake" and base is not None and full.get(id(node)):
            from dipm_lang.io.bake import check_replacements

            try:
                check_replacements(base, full[id(node)])
            except AdapterError as error:
                raise at_load(error, program.spans.get(node)) from None
    if check_outputs:
        for save in program.roots:
            if options.sandbox is not None:
                options.sandbox.check(save.attr("path"), save.op, program.spans.get(save))
            if recover:
                recover_stale(save.attr("path"))
            inputs = file_inputs(infos.values()) + ([base.path] if base is not None else [])
            if save.op == "bake":
                from dipm_lang.io.bake_output import prepare_model_output

                prepare_model_output(save.attr("path"), inputs=inputs, force=options.force)
                continue
            target = image_models.output_target(program, save, infos, family)
            if target is None:
                prepare_output(save.attr("path"), inputs=inputs, force=options.force)
            else:
                check_output(target.destination, file=target.file, inputs=inputs, force=options.force)
    compute = torch_dtype(options.dtype, "--dtype")
    if options.dense:
        compute = torch.float64
    if options.out_dtype:
        out = torch_dtype(options.out_dtype, "--out-dtype")
    else:
        stored = {info.dtype for info in infos.values()}
        # the inputs' dtype, where an adapter can be written in it (float8 inputs are written in float32)
        out = stored.pop() if len(stored) == 1 and stored <= set(OUTPUT_DTYPES) else torch.float32
    return Plan(program, infos, modules, resolve_device(options.device), compute, out, full, tuple(extra),
                base=base, forms=forms, family=family)



def _open_base(path: str, options: RunOptions, span: Span | None) -> Any:
    """A model folder (SPEC §7.8), its errors pointed at the call that named it."""
    try:
        return weights.open_base(path, options, span)
    except AdapterError as error:
        raise at_load(error, span) from None


def _open_extract(node: Node, base: Any, options: RunOptions, program: Program) -> AdapterSource:
    """The source an `extract(...)` reads: its fine-tune against its own base folder or the program's."""
    from dipm_lang.io.extract_source import ExtractSettings, open_extract

    span = program.spans.get(node)
    tuned = _open_base(node.attr("tuned"), options, span)
    against = _open_base(node.attr("base"), options, span) if node.attr("base") else base
    if against is None:
        weights.require_base(program, [])
    settings = ExtractSettings(rank=node.attr("rank"), energy=node.attr("energy"), max_rank=node.attr("max_rank"),
                               exact=bool(node.attr("exact")), seed=node.attr("seed"),
                               target_modules=node.attr("target_modules"))
    try:
        return open_extract(tuned, against, settings)
    except AdapterError as error:
        raise at_load(error, span) from None


def check_factor_merge_ranks(program: Program, infos: Mapping[str, AdapterSource]) -> None:
    """Before any tensor is read: every factor merge's sources have equal ranks in every module."""
    from dipm_lang.backend.baselines import rank_error

    for node in walk(program.all_roots()):
        method = METHODS.get(node.op)
        if method is None or method.space != "factors":
            continue
        items = node.args[0].args
        sources = [infos.get(item.attr("path")) if item.op == "load" else None for item in items]
        if any(info is None for info in sources):
            continue  # reported by the kernel
        for name in sorted({n for info in sources for n in info.modules}, key=natural_key):
            ranks = {i: info.modules[name].rank for i, info in enumerate(sources) if name in info.modules}
            message = rank_error(node.op, ranks)
            if message:
                raise ExecutionError(f"{message} (module {name})", program.spans.get(node))
