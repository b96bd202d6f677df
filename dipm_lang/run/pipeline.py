"""The back half of the pipeline for a compiled program: plan → execute → write, all outputs or none.

Adapter outputs stream into staged folders batch by batch. A `bake` (SPEC §7.8) keeps its
per-module updates as computed (factors: about the size of the adapters) and writes W0 + ΔW shard by
shard once the run is done, into a staged folder committed together with the others.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping

import torch

from dipm_lang.io.digest import FileDigest, start_all
from dipm_lang.io.sources import AdapterSource
from dipm_lang.io.lora_output import LoraFileStage
from dipm_lang.io.writer import AdapterStage, StagedOutput, commit_staged, discard_staged, remove_own_staging
from dipm_lang.ir.node import Program
from dipm_lang.backend.executor import ExecutionResult
from dipm_lang.run.execution import execute
from dipm_lang.run.options import RunOptions
from dipm_lang.run.planning import plan, schedule_values
from dipm_lang.run.progress import Progress
from dipm_lang.run.outputs import (OutputSummary, RunSummary, base_inputs, extraction_notes, output_stage,
                                   output_template, peak_memory_mb, provenance, recipe_text, to_output, truncates,
                                   write_bake)


def run_program(program: Program, options: RunOptions, *, quiet: bool = False,
                memory: Mapping[str, AdapterSource] | None = None) -> RunSummary:
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
    stages: dict[int, AdapterStage | LoraFileStage] = {}
    baked: dict[int, dict] = {id(root): {} for root in program.roots if root.op == "bake"}
    staged: list[StagedOutput] = []
    try:
        # Every output is staged before any work, and filled batch by batch as the batches finish.
        for save in program.roots:
            if save.op == "bake":
                continue
            stages[id(save)] = output_stage(program, save, the_plan, template, options)

        def write_part(part: ExecutionResult) -> None:
            for save in part.saves:
                if id(save.node) in baked:  # kept for the bake, written shard by shard at the end
                    baked[id(save.node)].update(save.modules)
                    save.modules.clear()
                    continue
                # save(load(x)): the factors are the input's own and are written as they are
                verbatim = save.node.args[0].op == "load" and id(save.node.args[0]) not in the_plan.forms
                stages[id(save.node)].add({name: to_output(value) for name, value in save.modules.items()},
                                          verbatim=verbatim)
                save.modules.clear()  # written: the run holds no output

        result = execute(the_plan, options, progress=progress, on_part=write_part)
        summary = RunSummary(device=str(the_plan.device), modules=len(the_plan.modules),
                             groups=progress.total_steps, schedules=schedule_values(the_plan))
        for save in result.saves:
            if id(save.node) in baked:
                staged.append(write_bake(save.node, baked.pop(id(save.node)), the_plan, options))
                summary.outputs.append(OutputSummary.of_bake(staged[-1], the_plan))
                continue
            stage = stages[id(save.node)]
            staged.append(stage.finish(metadata=provenance(program, the_plan, save=save.node),
                                       recipe=recipe_text(program), errors=save.errors))
            summary.outputs.append(OutputSummary.of(staged[-1], stage, the_plan.out_dtype,
                                                    save.relative_error if truncates(save.node) else None,
                                                    errors=save.errors))
        summary.notes += extraction_notes(the_plan)
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
