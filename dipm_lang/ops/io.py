"""Reading and writing adapters (SPEC §3 "I/O", §4): `load` and `save`.

Both take paths, which the lowering resolves against the folder of the file they are written in
and confines to `--sandbox`. `load()` without a path is an input given from outside; the lowering
sets `name` when the load is bound to a name (`H = load(...)`), which makes it a named input.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.blocks import FAMILY_TITLES
from dipm_lang.ir.signature import Choice, Int, Param, Path, Text, Update
from dipm_lang.ir.types import DELTA, UNIT
from dipm_lang.ops.backend import D, L

OUTPUT_FORMATS = ("kohya", "diffusers", "peft")
"""save's format=: kohya's single file, diffusers' LoRA file (a folder unless the path ends in .safetensors),
a PEFT adapter folder (SPEC §7.10)."""


def _ranks(ctx, rank, one: bool = False):
    """save's rank for this batch: none, one for all, or one per module (a schedule, SPEC §7.2)."""
    if rank is None:
        return None
    ranks = [int(r) for r in ctx.numbers(rank)]
    return ranks[0] if one or len(set(ranks)) == 1 else ranks


OPERATORS = [
    Operator("load", (Param("path", Path(optional=True), None),
                      Param("family", Choice(tuple(FAMILY_TITLES), optional=True), None),
                      Param("name", Text(optional=True), None, internal=True)), DELTA,
             "Read a PEFT LoRA adapter folder, or a LoRA file of an image model (kohya, diffusers, LyCORIS "
             "LoHa/LoKr .safetensors); family= (\"sd1\", \"sd2\", \"sdxl\", \"flux\") settles a file whose "
             "model family is ambiguous. load() without a path is an input given from outside (--set NAME=PATH).",
             factored=lambda ctx, node: ctx.load(node)),
    Operator("save", (Param("x", Update()), Param("path", Path()),
                      Param("rank", Int(minimum=1, optional=True, schedules=True), None),
                      Param("format", Choice(OUTPUT_FORMATS, optional=True), None)),
             UNIT, "Write x as a PEFT adapter folder, or for image-model LoRAs in the first input's format (a "
                   "path ending in .safetensors is one file); format= chooses \"kohya\", \"diffusers\" or "
                   "\"peft\"; rank=N keeps the best rank-N approximation.",
             # the value written, and the squared error dropped / total (for the run's report)
             factored=lambda ctx, node, x: L.truncate(x, _ranks(ctx, node.attr("rank"))),
             dense=lambda ctx, node, x: D.truncate(x, _ranks(ctx, node.attr("rank"), one=True))),
]
