"""Running a compiled Program against adapter folders: validate → execute → write.

1. *Plan*: open every input's config and safetensors header, check shapes and base models
   across inputs, check every output path — all before any tensor is read or written, so a
   bad second input fails the run before the first output.
2. *Execute*: the executor streams module groups through the DAG (progress on stderr).
3. *Write*: every output is staged in a temporary sibling folder, then all are renamed into
   place together; a failure anywhere leaves no output at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from dipm_lang.backend.executor import ExecutionResult, Executor
from dipm_lang.backend.parallel import run_batches
from dipm_lang.backend.lowrank import EPS, LowRank
from dipm_lang.run.options import DTYPE_NAMES
from dipm_lang.errors import ExecutionError, UsageError
from dipm_lang.io.digest import FileDigest, start_all
from dipm_lang.io.layout import ADAPTER_FILES
from dipm_lang.io.reader import AdapterInfo, check_compatible, open_adapter, read_modules
from dipm_lang.io.writer import (AdapterStage, StagedOutput, commit_staged, discard_staged, prepare_output,
                                 recover_stale, remove_own_staging)
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ops import OPERATORS
from dipm_lang.ops.baselines import METHODS
from dipm_lang.io.memory import MemoryAdapter
from dipm_lang.run.progress import Progress
from dipm_lang.safety.sandbox import Sandbox

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class RunOptions:
    device: str = "auto"          # auto | cpu | cuda[:N]
    dtype: str = "float32"        # compute dtype
    out_dtype: str | None = None  # default: the inputs' dtype
    eps: float = EPS
    force: bool = False
    dense: bool = False           # the float64 dense reference (tests)
    progress: bool | None = None  # None: when stderr is a terminal
    ignore_base_model: bool = False
    sandbox: Sandbox | None = None  # --sandbox: every file opened or written stays inside it
    threads: int | None = None      # CPU worker threads (None: torch's count); never changes results


@dataclass
class OutputSummary:
    path: Path
    modules: int
    ranks: list[int]
    dtype: str
    relative_error: float | None

    def line(self) -> str:
        lo, hi = (min(self.ranks), max(self.ranks)) if self.ranks else (0, 0)
        rank = f"rank {hi}" if lo == hi else f"ranks {lo}–{hi}"
        err = f", dropped {self.relative_error:.2e} relative error" if self.relative_error is not None else ""
        return f"{self.path}  ({self.modules} modules, {rank}, {self.dtype}{err})"


@dataclass
class RunSummary:
    outputs: list[OutputSummary] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    device: str = "cpu"
    modules: int = 0
    groups: int = 0

    def text(self) -> str:
        lines = [f"wrote {len(self.outputs)} adapter{'s' if len(self.outputs) != 1 else ''} in "
                 f"{self.seconds:.2f} s on {self.device} ({self.modules} modules in {self.groups} batches, "
                 f"peak memory {self.peak_memory_mb:.0f} MB)"]
        lines += [f"  {o.line()}" for o in self.outputs]
        return "\n".join(lines)


@dataclass
class Plan:
    """Everything checked before work: inputs opened, module union, outputs writable."""

    program: Program
    inputs: dict[str, AdapterInfo]            # resolved path -> info
    modules: dict[str, tuple[int, int]]       # module -> (m, n), natural order
    device: torch.device
    dtype: torch.dtype
    out_dtype: torch.dtype

    def group_key(self, name: str) -> tuple:
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


def _dtype(name: str, flag: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"{flag} {name}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_nodes(program: Program) -> list[Node]:
    return [n for n in walk(program.all_roots()) if n.op == "load"]


def plan(program: Program, options: RunOptions, *, check_outputs: bool = True,
         memory: Mapping[str, MemoryAdapter] | None = None,
         opener: Callable[[str], AdapterInfo] = open_adapter, recover: bool = False) -> Plan:
    """Open and validate every input and output; read no tensor data.

    `memory` maps load paths of the form `<memory:NAME>` to in-memory inputs (the Python API);
    `opener` opens an adapter folder (the REPL passes one that caches opened adapters);
    `recover` first cleans up what killed runs left next to each output (`writer.recover_stale`).
    """
    infos: dict[str, AdapterInfo] = {}
    memory = memory or {}
    for node in load_nodes(program):
        path = node.attr("path")
        if path is None:
            name = node.attr("name") or "input"
            raise UsageError(f"input '{name}' has no path: give it with --set {name}=PATH",
                             program.spans.get(node))
        if path not in infos:
            if options.sandbox is not None and path not in memory:  # the files a folder holds may be links
                options.sandbox.check_files(path, ADAPTER_FILES, "load", program.spans.get(node))
            infos[path] = memory[path] if path in memory else opener(path)
    modules = check_compatible(list(infos.values()), ignore_base_model=options.ignore_base_model)
    check_factor_merge_ranks(program, infos)  # factor merges (linear, ties, …) need equal ranks: fail before work
    if check_outputs:
        for save in program.roots:
            if options.sandbox is not None:
                options.sandbox.check(save.attr("path"), "save", program.spans.get(save))
            if recover:
                recover_stale(save.attr("path"))
            prepare_output(save.attr("path"), inputs=file_inputs(infos.values()), force=options.force)
    compute = _dtype(options.dtype, "--dtype")
    if options.dense:
        compute = torch.float64
    if options.out_dtype:
        out = _dtype(options.out_dtype, "--out-dtype")
    else:
        stored = {info.dtype for info in infos.values()}
        out = stored.pop() if len(stored) == 1 else torch.float32
    return Plan(program, infos, modules, resolve_device(options.device), compute, out)


def execute(the_plan: Plan, options: RunOptions, *, progress: Progress | None = None,
            on_part: Callable[[ExecutionResult], None] | None = None) -> ExecutionResult:
    """Run the program over all modules; returns per-save (and per-result) module values.

    `on_part` sees each batch's result, in batch order, as soon as it is ready (`run_program`
    writes and drops the saves' modules there, so the merged result then holds none).
    """
    infos = the_plan.inputs

    def read(node: Node, names: list[str]) -> LowRank:
        # A group's modules are all present in an input or all absent (Plan.group_key).
        info = infos[node.attr("path")]
        if names[0] not in info.modules:  # absent from this adapter: a zero update (SPEC §2)
            m, n = the_plan.modules[names[0]]
            return LowRank.zeros(m, n, (len(names),), dtype=the_plan.dtype, device=the_plan.device)
        if isinstance(info, MemoryAdapter):
            parts = [info.read(name, dtype=the_plan.dtype, device=the_plan.device) for name in names]
            return LowRank(torch.stack([p.B for p in parts]), torch.stack([p.A for p in parts]))
        return read_modules(info, names, dtype=the_plan.dtype, device=the_plan.device)

    def loader(node: Node, names: list[str]) -> Any:
        return read(node, names)[0].dense() if options.dense else read(node, names)

    executor = Executor(the_plan.program, OPERATORS, loader=loader, eps=options.eps, dense=options.dense,
                        on_group=progress.update if progress else None,
                        adapter=lambda node: infos[node.attr("path")], factors=read)
    groups = split_batches(executor.group_modules(list(the_plan.modules), the_plan.group_key), the_plan)
    if progress:
        progress.start(len(groups), sum(len(g) for g in groups))
    # On the CPU: byte-identical for any thread count (backend/parallel.py). A GPU parallelises
    # inside its kernels, so there batches simply run one after another.
    result = run_batches(executor, groups, threads=options.threads if the_plan.device.type == "cpu" else 1,
                         on_batch=progress.update if progress else None, on_part=on_part)
    if progress:
        progress.finish()
    return result


MAX_BATCH_BYTES = 4 * 2**20
"""Largest stack of one input's factors that a batch holds (bytes). Small batches keep every
intermediate small enough for malloc to reuse freed memory instead of mapping fresh pages
(each first touch of a page is a fault): on 32 layers of 7B shapes, a transfer with 4 MiB
batches ran 0.07 s faster and peaked 130 MiB lower than with 16 MiB, and 0.15 s / 450 MiB
better than whole groups; 1 MiB batches cost more in per-call overhead than they save
(benchmarks/)."""


def split_batches(groups: list[list[str]], the_plan: Plan, max_bytes: int = MAX_BATCH_BYTES) -> list[list[str]]:
    """Cut each group of same-shape modules into batches of at most `max_bytes` of factors per input.

    Modules never interact, so how they are batched does not change any result.
    """
    out = []
    for names in groups:
        m, n = the_plan.modules[names[0]]
        rank = max([info.modules[names[0]].rank for info in the_plan.inputs.values() if names[0] in info.modules],
                   default=1)
        size = max(1, max_bytes // max(1, rank * (m + n) * the_plan.dtype.itemsize))
        out += [names[i:i + size] for i in range(0, len(names), size)]
    return out


def run_program(program: Program, options: RunOptions, *, quiet: bool = False,
                memory: Mapping[str, MemoryAdapter] | None = None) -> RunSummary:
    """Validate, execute and write every `save` of `program`; all outputs or none."""
    start = time.perf_counter()
    the_plan = plan(program, options, memory=memory, recover=True)
    # Provenance hashes, in the background while the program runs (the CLI started them already).
    start_all([info.digest for info in the_plan.inputs.values() if isinstance(info.digest, FileDigest)])
    if the_plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(the_plan.device)
    show = options.progress if options.progress is not None else (sys.stderr.isatty() and not quiet)
    progress = Progress("modules", enabled=show)
    template = output_template(list(the_plan.inputs.values()))
    stages: dict[int, AdapterStage] = {}
    staged: list[StagedOutput] = []
    try:
        # Every output is staged before any work, and filled batch by batch as the batches finish.
        for save in program.roots:
            stages[id(save)] = AdapterStage(
                save.attr("path"), template=template, dtype=the_plan.out_dtype, expected=the_plan.modules,
                metadata_bound=provenance(program, the_plan, digest=lambda info: "0" * 64), force=options.force,
                inputs=file_inputs(the_plan.inputs.values()))

        def write_part(part: ExecutionResult) -> None:
            for save in part.saves:
                stages[id(save.node)].add({name: _to_output(value) for name, value in save.modules.items()})
                save.modules.clear()  # written: the run holds no output

        result = execute(the_plan, options, progress=progress, on_part=write_part)
        metadata = provenance(program, the_plan)
        summary = RunSummary(device=str(the_plan.device), modules=len(the_plan.modules),
                             groups=progress.total_steps)
        for save in result.saves:
            stage = stages[id(save.node)]
            staged.append(stage.finish(metadata=metadata, recipe=program.script_text))
            ranks = [rank for rank, _ in stage.ranks.values()]
            summary.outputs.append(OutputSummary(
                Path(save.node.attr("path")), len(ranks), ranks, str(the_plan.out_dtype).removeprefix("torch."),
                save.relative_error if save.node.attr("rank") is not None else None))
        commit_staged(staged)
    except BaseException:
        discard_staged(staged)
        for stage in stages.values():
            stage.discard()
        for save in program.roots:  # one staged but not yet in `stages` when an interrupt came
            remove_own_staging(save.attr("path"))
        raise
    summary.seconds = time.perf_counter() - start
    summary.peak_memory_mb = peak_memory_mb(the_plan.device)
    return summary


def check_factor_merge_ranks(program: Program, infos: Mapping[str, AdapterInfo]) -> None:
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


def file_inputs(infos: Iterable[AdapterInfo]) -> list[Path]:
    """The input folders (outputs must never overwrite them); in-memory inputs have none."""
    return [info.path for info in infos if not isinstance(info, MemoryAdapter)]


def output_template(infos: list[AdapterInfo]) -> AdapterInfo | None:
    """The writer's template: the first input's config, with every input's module kinds and shapes
    (so an embedding module that only a later input has is still written as an embedding)."""
    if not infos:
        return None
    modules = {}
    for info in reversed(infos):
        modules.update(info.modules)
    return dataclasses.replace(infos[0], modules=modules)


def _to_output(value: Any) -> LowRank:
    if isinstance(value, LowRank):
        if not bool(value.B.any()) or not bool(value.A.any()):  # exactly zero: leave the module out
            return LowRank.zeros(value.m, value.n, dtype=value.dtype)
        return LowRank(value.B.detach().cpu().contiguous(), value.A.detach().cpu().contiguous())
    # dense reference values: exact factors W = I·W (only used by tests)
    W = value.detach().cpu()
    return LowRank(W.clone(), torch.eye(W.shape[1], dtype=W.dtype)) if W.shape[0] > W.shape[1] \
        else LowRank(torch.eye(W.shape[0], dtype=W.dtype), W.clone())


def provenance(program: Program, the_plan: Plan,
               digest: Callable[[AdapterInfo], str] = lambda info: info.sha256) -> dict[str, str]:
    """Safetensors metadata: the recipe's hash and each input's content hash (`digest`)."""
    from dipm_lang import __version__

    inputs = {}
    for node in load_nodes(program):
        info = the_plan.inputs[node.attr("path")]
        inputs[node.attr("name") or os.path.basename(str(info.path))] = {"path": str(info.path),
                                                                          "sha256": digest(info)}
    return {
        "dipm_lang_version": __version__,
        "dipm_script_sha256": hashlib.sha256(program.script_text.encode("utf-8")).hexdigest(),
        "dipm_inputs": json.dumps(inputs, sort_keys=True),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
