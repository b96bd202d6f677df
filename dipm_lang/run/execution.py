"""Step `execute`: run the optimized program over every batch of modules, on the factors.

On the CPU, batches run side by side on worker threads with single-threaded kernels, so outputs are
byte-identical for any thread count (backend/parallel.py); a GPU parallelises inside its kernels,
so there batches run one after another.
"""

from __future__ import annotations

from typing import Any, Callable

from dipm_lang.backend.executor import ExecutionResult, Executor
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.backend.parallel import run_batches
from dipm_lang.ir.node import Node
from dipm_lang.ops import OPERATORS
from dipm_lang.run.options import RunOptions
from dipm_lang.run.planning import Plan
from dipm_lang.run.progress import Progress
from dipm_lang.run.scheduling import schedule
from dipm_lang.run.weights import source_key


def execute(the_plan: Plan, options: RunOptions, *, progress: Progress | None = None,
            on_part: Callable[[ExecutionResult], None] | None = None) -> ExecutionResult:
    """Run the program over all modules; returns per-save (and per-result) module values.

    `on_part` sees each batch's result, in batch order, as soon as it is ready (`run_program`
    writes and drops the saves' modules there, so the merged result then holds none).
    """
    infos = the_plan.inputs

    def read(node: Node, names: list[str]) -> LowRank:
        # A group's modules are all present in an input or all absent (Plan.group_key).
        info = infos[source_key(node)]
        if names[0] not in info.modules:  # absent from this adapter: a zero update (SPEC §2)
            m, n = the_plan.modules[names[0]]
            return LowRank.zeros(m, n, (len(names),), dtype=the_plan.dtype, device=the_plan.device)
        return info.read(names, dtype=the_plan.dtype, device=the_plan.device)

    def loader(node: Node, names: list[str]) -> Any:
        return read(node, names)[0].dense() if options.dense else read(node, names)

    def base(names: list[str]) -> Any:
        """W0 of a batch in the LoRA layout (SPEC §7.8): [G, m, n], or [m, n] float64 when dense."""
        kinds = {name: the_plan.kind(name) for name in names}
        weights = the_plan.base.read_weights(names, kinds=kinds, dtype=the_plan.dtype, device=the_plan.device)
        return weights[0] if options.dense else weights

    def magnitudes(node: Node, names: list[str]) -> Any:
        """A DoRA adapter's magnitude vectors for the batch (None: not DoRA, or a module it lacks)."""
        info = infos[source_key(node)]
        if node.op != "load" or not getattr(info, "dora", False) or names[0] not in info.modules:
            return None
        m = info.read_magnitudes(names, dtype=the_plan.dtype, device=the_plan.device)
        return m[0] if options.dense else m

    executor = Executor(the_plan.program, OPERATORS, loader=loader, eps=options.eps, dense=options.dense,
                        layers=the_plan.layers,
                        on_group=progress.update if progress else None,
                        adapter=lambda node: infos[source_key(node)], factors=read,
                        base=base if the_plan.base is not None else None, magnitudes=magnitudes,
                        in_form=lambda node: id(node) in the_plan.forms)
    groups = schedule(the_plan, dense=options.dense)
    if progress:
        progress.start([len(group) for group in groups])
    result = run_batches(executor, groups, threads=options.threads if the_plan.device.type == "cpu" else 1,
                         on_batch=progress.update if progress else None, on_part=on_part)
    if progress:
        progress.finish()
    return result
