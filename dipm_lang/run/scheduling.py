"""Step `schedule`: the program's modules, in batches the executor runs as one.

Every value is a field over modules and no operator mixes modules, so the whole program runs for
one *batch* of modules at a time — modules of equal shape, equal ranks in every input, and equal
outcome of every operator that declares a `batch_key` (`select`/`replace`: whether the module
matches), stacked along a batch dim so each kernel is one batched call. Batches are cut to a fixed
size in bytes, the same for any thread count, so results never depend on how modules are batched.
"""

from __future__ import annotations

from dipm_lang.ir.node import walk
from dipm_lang.ops import OPERATORS
from dipm_lang.run.planning import Plan

MAX_BATCH_BYTES = 4 * 2**20
"""Largest stack of one input's factors that a batch holds (bytes). Small batches keep every
intermediate small enough for malloc to reuse freed memory instead of mapping fresh pages
(each first touch of a page is a fault): on 32 layers of 7B shapes, a transfer with 4 MiB
batches ran 0.07 s faster and peaked 130 MiB lower than with 16 MiB, and 0.15 s / 450 MiB
better than whole groups; 1 MiB batches cost more in per-call overhead than they save
(benchmarks/)."""

MAX_INPUTS_BATCH_BYTES = 16 * 2**20
"""Largest stack of ALL inputs' factors together that a batch holds (bytes). A merge of many
adapters (`multitask`, `iso`, `knots`, `tsv`, `svd` over a list) works on their concatenation, of
rank Σrᵢ (800 for 50 adapters of rank 16), and keeps float64 intermediates of that rank — QR factors,
bases, rank-Σr results — several times these bytes per module. Bounding only one input's share
(MAX_BATCH_BYTES) let a batch of eight 4096×4096 modules of 50 inputs hold 1.3 GB in `iso` (3.3 GB
peak with two threads); with this bound such a merge runs one module per batch, while programs of a
few inputs keep MAX_BATCH_BYTES' batches (2 adapters of rank 16 at 4096×4096: 1 MiB a module)."""

MAX_BASE_BATCH_BYTES = 64 * 2**20
"""Largest stack of base weights W0 ([G, m, n]) a batch reads when the program needs them (SPEC §7.8):
a 4096×4096 float32 module is 64 MiB, so such batches hold one module, and smaller ones several."""


def schedule(the_plan: Plan, *, dense: bool = False) -> list[list[str]]:
    """The batches of one run, in module order (the dense reference runs one module at a time)."""
    names = list(the_plan.modules)
    if dense:
        return [[name] for name in names]
    keyed = [(node, OPERATORS[node.op].batch_key) for node in walk(the_plan.program.all_roots())
             if OPERATORS[node.op].batch_key is not None]
    groups: dict[tuple, list[str]] = {}
    for name in names:
        key = the_plan.group_key(name) + tuple(batch_key(node, name) for node, batch_key in keyed)
        groups.setdefault(key, []).append(name)
    return split_batches(list(groups.values()), the_plan)


def split_batches(groups: list[list[str]], the_plan: Plan, max_bytes: int = MAX_BATCH_BYTES,
                  max_inputs_bytes: int | None = None) -> list[list[str]]:
    """Cut each group of same-shape modules into batches of at most `max_bytes` of factors per input
    and output, and at most `max_inputs_bytes` of all inputs' factors together: a program with many
    saves (a sweep's points) holds each batch's result for every save at once, and a merge of many
    inputs their concatenation, so their batches hold fewer modules.

    Modules never interact, so how they are batched does not change any result.
    """
    max_inputs_bytes = MAX_INPUTS_BATCH_BYTES if max_inputs_bytes is None else max_inputs_bytes
    out = []
    saves = max(1, len(the_plan.program.roots))
    for names in groups:
        m, n = the_plan.modules[names[0]]
        ranks = [info.modules[names[0]].rank for info in the_plan.inputs.values() if names[0] in info.modules]
        per_rank = (m + n) * the_plan.dtype.itemsize  # bytes of one rank-1 factor pair of one module
        size = max(1, max_bytes // max(1, saves * max(ranks, default=1) * per_rank))
        size = min(size, max(1, max_inputs_bytes // max(1, sum(ranks) * per_rank)))
        if the_plan.uses_weights:
            size = min(size, max(1, MAX_BASE_BATCH_BYTES // (m * n * the_plan.dtype.itemsize)))
        out += [names[i:i + size] for i in range(0, len(names), size)]
    return out
