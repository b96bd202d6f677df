"""Step `write`: outputs staged before work, filled batch by batch, renamed into place together.

Also what every output records (`provenance`) and what a run reports (`RunSummary`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dipm_lang.backend.forms import DoraOutput
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.io.finite import any_nonzero
from dipm_lang.io.lora_output import LoraFileStage
from dipm_lang.io.sources import AdapterSource, file_inputs
from dipm_lang.io.writer import AdapterStage, StagedOutput
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.node import Node, Program
from dipm_lang.run import image_models
from dipm_lang.run.options import RunOptions
from dipm_lang.run.full_weights import describe
from dipm_lang.run.planning import Plan, load_nodes
from dipm_lang.run.weights import source_key
from dipm_lang.safety.privacy import private_text
from dipm_lang.version import __version__

@dataclass
class OutputSummary:
    path: Path
    modules: int                       # modules written (zero ones are left out, unless all are zero)
    ranks: list[int]                   # as written
    dtype: str
    relative_error: float | None
    zero_modules: list[str] = field(default_factory=list)  # modules whose update is exactly zero
    warnings: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)      # module -> the rank it keeps (before padding)
    errors: dict[str, float] = field(default_factory=dict)  # module -> relative error dropped (energy=)
    target: str | None = None                               # "vllm": one rank for all, zero-padded
    full: list[str] = field(default_factory=list)  # full-weight modules and biases written (SPEC §7.4)

    @classmethod
    def of(cls, staged: StagedOutput, stage: AdapterStage | LoraFileStage, dtype: torch.dtype,
           relative_error: float | None, errors: Mapping[str, float] | None = None) -> "OutputSummary":
        ranks = [rank for rank, _ in stage.ranks.values()]
        kept = {name: stage.kept.get(name, rank) for name, (rank, _) in stage.ranks.items()}
        return cls(staged.destination, len(ranks), ranks, str(dtype).removeprefix("torch."), relative_error,
                   list(staged.zero_modules), list(staged.warnings), kept,
                   {name: error for name, error in (errors or {}).items() if name in kept}, stage.target,
                   list(staged.full))

    @classmethod
    def of_bake(cls, staged: StagedOutput, the_plan: Plan) -> "OutputSummary":
        """A baked model folder (SPEC §7.8): its changed modules; no ranks."""
        return cls(staged.destination, len(staged.modules), [], "model folder", None)

    def line(self) -> str:
        if self.dtype == "model folder":
            return f"{self.path}  (a model folder; {_count(self.modules, 'module')} changed)"
        kept = list(self.kept.values()) or self.ranks
        lo, hi = (min(kept), max(kept)) if kept else (0, 0)
        rank = f"rank {hi}" if lo == hi else f"ranks {lo}–{hi}"
        if self.target == "vllm" and self.ranks:
            rank = f"rank {max(self.ranks)} for vLLM" + (f" (modules keep {lo}–{hi}, zero-padded)" if lo != hi else "")
        err = f", dropped {self.relative_error:.2e} relative error" if self.relative_error is not None else ""
        zero = ""
        if self.zero_modules and not self.warnings:  # all zero: the warning says it
            shown = ", ".join(self.zero_modules[:3]) + (", …" if len(self.zero_modules) > 3 else "")
            zero = f"; zero in {len(self.zero_modules)} module{'s' if len(self.zero_modules) != 1 else ''} ({shown})"
        full = f"; full weights: {describe(self.full)}" if self.full else ""
        return f"{self.path}  ({_count(self.modules, 'module')}, {rank}, {self.dtype}{err}{zero}{full})"

    def module_lines(self) -> list[str]:
        """With energy=: each module's kept rank and the relative error it dropped."""
        if not self.errors:
            return []
        width = max(len(name) for name in self.kept)
        return [f"{name:<{width}}  rank {self.kept[name]:>3}  dropped {self.errors[name]:.2e}"
                for name in sorted(self.kept, key=natural_key) if name in self.errors]


@dataclass
class RunSummary:
    outputs: list[OutputSummary] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    device: str = "cpu"
    modules: int = 0
    groups: int = 0
    schedules: list = field(default_factory=list)  # (schedule, module -> the number it gave)
    notes: list[str] = field(default_factory=list)  # e.g. the errors of extracted LoRAs

    def text(self) -> str:
        models = sum(output.dtype == "model folder" for output in self.outputs)
        written = " and ".join(filter(None, [_count(len(self.outputs) - models, "adapter") if models < len(self.outputs)
                                             or not models else "", _count(models, "model folder") if models else ""]))
        lines = [f"wrote {written} in "
                 f"{self.seconds:.2f} s on {self.device} ({_count(self.modules, 'module')} in "
                 f"{_count(self.groups, 'batch', 'batches')}, "
                 f"peak memory {self.peak_memory_mb:.0f} MB)"]
        for output in self.outputs:
            lines.append(f"  {output.line()}")
            lines += [f"    {line}" for line in output.module_lines()]
            lines += [f"  warning: {output.path}: {warning}" for warning in output.warnings]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def output_template(infos: list[AdapterSource]) -> AdapterSource | None:
    """The writer's template: the first input's config, with every input's module kinds and shapes
    (so an embedding module that only a later input has is still written as an embedding)."""
    if not infos:
        return None
    modules = {}
    for info in reversed(infos):
        modules.update(info.modules)
    return dataclasses.replace(infos[0], modules=modules)


def truncates(save: Node) -> bool:
    """Whether a save cuts ranks (rank=, energy= or max_rank=): its report gives the error dropped."""
    return any(save.attr(key) is not None for key in ("rank", "energy", "max_rank"))


def serving(save: Node) -> dict[str, Any]:
    """The writer's serving target for a save: `target="vllm"` and the server's max_lora_rank (its
    `max_rank=`, one number by then — ops/io.py checks it)."""
    target = save.attr("target")
    if target != "vllm":
        return {}
    max_rank = save.attr("max_rank")
    return {"target": target, "max_lora_rank": int(max_rank) if isinstance(max_rank, (int, float)) else None}


def output_stage(program: Program, save: Node, the_plan: Plan, template: AdapterSource | None,
                 options: RunOptions) -> AdapterStage | LoraFileStage:
    """The stage that writes `save`: a PEFT adapter folder, or a LoRA file of an image model in the format
    `run/image_models.py` chooses (SPEC §7.10). Created before any work, so a bad output fails first."""
    inputs = file_inputs(the_plan.inputs.values()) + base_inputs(the_plan)
    target = image_models.output_target(program, save, the_plan.inputs, the_plan.family)
    if target is None:
        return AdapterStage(save.attr("path"), template=template, dtype=the_plan.out_dtype, expected=the_plan.modules,
                            metadata_bound=provenance(program, the_plan, digest=lambda info: "0" * 64, save=save),
                            force=options.force, inputs=inputs,
                            dora=id(save.args[0]) in the_plan.forms, **serving(save),
                            full=the_plan.full.get(id(save), ()),  # full-weight modules and biases (SPEC §7.4)
                            full_dtype=the_plan.out_dtype if options.out_dtype else None)
    return LoraFileStage(target.destination, format=target.format, family=target.family, template=target.template,
                         dtype=the_plan.out_dtype, compute_dtype=the_plan.dtype, force=options.force, inputs=inputs,
                         file=target.file, span=program.spans.get(save))


def to_output(value: Any) -> Any:
    if isinstance(value, DoraOutput):  # a DoRA adapter's module (SPEC §7.8)
        return DoraOutput(LowRank(value.lora.B.detach().cpu().contiguous(), value.lora.A.detach().cpu().contiguous()),
                          value.magnitude.detach().cpu(), value.unchanged.cpu())
    if isinstance(value, LowRank):
        if not any_nonzero(value.B) or not any_nonzero(value.A):  # exactly zero: leave the module out
            return LowRank.zeros(value.m, value.n, dtype=value.dtype)
        return LowRank(value.B.detach().cpu().contiguous(), value.A.detach().cpu().contiguous())
    # dense reference values: exact factors W = I·W (only used by tests)
    W = value.detach().cpu()
    return LowRank(W.clone(), torch.eye(W.shape[1], dtype=W.dtype)) if W.shape[0] > W.shape[1] \
        else LowRank(torch.eye(W.shape[0], dtype=W.dtype), W.clone())


def recipe_text(program: Program) -> str:
    """The recipe an output records: the script, with absolute paths shortened (safety/privacy.py)."""
    return private_text(program.script_text)


def provenance(program: Program, the_plan: Plan,
               digest: Callable[[AdapterSource], str] = lambda info: info.sha256, *,
               save: Node | None = None) -> dict[str, str]:
    """Safetensors metadata: the recipe's hash and each input by name, label (a folder's base name or
    a Hub id — never a local path) and content hash (`digest`), and for a Hub input the commit its
    revision resolved to; for a `save`, the numbers given from outside (`--set t=0.3`, a sweep's
    point) when there were any. The same recipe, inputs and numbers give the same metadata from any
    working folder (and from the Hub or, offline, from its cache)."""
    inputs = {}
    for node in load_nodes(program):
        info = the_plan.inputs[source_key(node)]
        entry = {"source": info.label, "sha256": digest(info)}
        commit = getattr(info, "commit", None)  # Hub inputs (io/hub_source.py)
        if commit is not None:
            entry["commit"] = commit
        inputs[node.attr("name") or info.label] = entry
    metadata = {
        "dipm_lang_version": __version__,
        "dipm_script_sha256": hashlib.sha256(recipe_text(program).encode("utf-8")).hexdigest(),
        "dipm_inputs": json.dumps(inputs, sort_keys=True),
    }
    if the_plan.base is not None:  # by name and a hash of its config and tensor layout (not of gigabytes of data)
        from dipm_lang.io.extract_source import layout_fingerprint

        metadata["dipm_base"] = json.dumps({"source": the_plan.base.path.name,
                                            "layout_sha256": layout_fingerprint(the_plan.base)}, sort_keys=True)
    numbers = program.given.get(save.attr("path")) if save is not None else None
    if numbers:
        metadata["dipm_numbers"] = json.dumps(numbers, sort_keys=True)
    return metadata


def base_inputs(the_plan: Plan) -> list[Path]:
    """The base model's folder, as an input no output may overwrite (SPEC §7.8)."""
    return [the_plan.base.path] if the_plan.base is not None else []


def extraction_notes(the_plan: Plan) -> list[str]:
    """One line per `extract(...)` input: how many modules and the relative errors it dropped."""
    notes = []
    for info in the_plan.inputs.values():
        errors = getattr(info, "errors", None)
        if errors:
            worst = max(errors, key=errors.__getitem__)
            notes.append(f"{info.label}: {_count(len(errors), 'module')} extracted, relative error "
                         f"{min(errors.values()):.2e}–{errors[worst]:.2e} (largest in {worst})")
    return notes


def write_bake(node: Node, modules: dict[str, Any], the_plan: Plan, options: Any) -> StagedOutput:
    """Stage `bake(x, "OUT")`: W0 + ΔW of the modules whose update is not exactly zero, and the whole
    tensors (SPEC §7.4) the value carries in place of the base's, as a model folder with the base's
    layout (`io/bake_output.py`)."""
    from dipm_lang.backend.dora import DoraForm
    from dipm_lang.io.bake_output import bake_dtype, stage_bake

    def changed(value: Any) -> bool:
        if isinstance(value, LowRank):
            return any_nonzero(value.B) and any_nonzero(value.A)
        if isinstance(value, DoraForm):
            return any_nonzero(value.c) or (any_nonzero(value.K.B) and any_nonzero(value.K.A))
        return any_nonzero(value)

    kinds = {name: the_plan.kind(name) for name, value in modules.items() if changed(value)}
    staged, _ = stage_bake(node.attr("path"), the_plan.base, lambda names: [modules.pop(n) for n in names],
                           modules=kinds, dtype=bake_dtype(node.attr("dtype")), force=options.force,
                           replacements=the_plan.full.get(id(node), ()),
                           inputs=[Path(p) for p in (info.path for info in the_plan.inputs.values()
                                                     if info.on_disk)])
    return staged


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
