"""Reading and writing adapters (SPEC §3 "I/O", §4, §7.6): `load` and `save`.

Both take paths, which the lowering resolves against the folder of the file they are written in
and confines to `--sandbox`. `load()` without a path is an input given from outside; the lowering
sets `name` when the load is bound to a name (`H = load(...)`), which makes it a named input.

`save`'s ranks: none (exact), `rank=N` (the best rank-N approximation), or `energy=e` (per module the
smallest rank keeping the fraction e of ΔW's squared Frobenius norm, SPEC §7.6); `max_rank=N` caps
either. `target="vllm"` writes what vLLM's LoRA loader serves (io/vllm.py); its `max_rank` is the
server's `--max-lora-rank`, so it must be a value vLLM allows (ir/targets.py).
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.blocks import FAMILY_TITLES
from dipm_lang.ir.schedules import is_schedule, varies
from dipm_lang.ir.signature import Choice, Int, Param, Path, Real, Text, Typing, Update
from dipm_lang.ir.targets import TARGETS, vllm_max_rank_problem
from dipm_lang.ir.types import DELTA, UNIT
from dipm_lang.ops.backend import D, L, R


OUTPUT_FORMATS = ("kohya", "diffusers", "peft", "loha", "lokr")
"""save's format=: kohya's single file, diffusers' LoRA file (a folder unless the path ends in .safetensors),
a PEFT adapter folder, or LyCORIS LoHa / LoKr in kohya's layout (the low-rank result held exactly; SPEC §7.10)."""


def _ranks(ctx, rank, one: bool = False):
    """save's rank for this batch: none, one for all, or one per module (a schedule, SPEC §7.2)."""
    if rank is None:
        return None
    ranks = [int(r) for r in ctx.numbers(rank)]
    return ranks[0] if one or len(set(ranks)) == 1 else ranks


def _capped(ctx, rank, max_rank, one: bool = False):
    """`rank=N` with `max_rank=M`: min(N, M) per module."""
    ranks, caps = ctx.numbers(rank), ctx.numbers(max_rank)
    ranks = [int(min(r, c)) for r, c in zip(ranks, caps)]
    return ranks[0] if one or len(set(ranks)) == 1 else ranks


def _max_ranks(ctx, max_rank):
    """max_rank for this batch: none, one number, or one per module (int64 tensor)."""
    if max_rank is None:
        return None
    caps = [int(c) for c in ctx.numbers(max_rank)]
    if len(set(caps)) == 1:
        return caps[0]
    import torch

    return torch.tensor(caps, dtype=torch.int64)


def _save(ctx, node, x):
    rank, energy, max_rank = node.attr("rank"), node.attr("energy"), node.attr("max_rank")
    if max_rank is None and energy is None:
        return L.truncate(x, _ranks(ctx, rank))
    if rank is not None:
        return L.truncate(x, _capped(ctx, rank, max_rank))
    return R.save_by_energy(x, None if energy is None else ctx.number(energy), _max_ranks(ctx, max_rank))


def _save_dense(ctx, node, x):
    rank, energy, max_rank = node.attr("rank"), node.attr("energy"), node.attr("max_rank")
    if max_rank is None and energy is None:
        return D.truncate(x, _ranks(ctx, rank, one=True))
    if rank is not None:
        return D.truncate(x, _capped(ctx, rank, max_rank, one=True))
    return D.truncate_energy(x, None if energy is None else ctx.numbers(energy)[0],
                             int(ctx.numbers(max_rank)[0]) if max_rank is not None else None)


def _check_save(t: Typing) -> None:
    """Rules between save's parameters (SPEC §7.6), before any tensor is read."""
    if t.value("rank") is not None and t.value("energy") is not None:
        t.fail("energy", "give rank= or energy=, not both (rank keeps N directions in every module; "
                         "energy keeps as many as each module needs)",
               hint="max_rank=N caps the ranks energy= keeps")
    if t.value("target") is not None and t.value("format") not in (None, "peft"):
        t.fail("format", f"target={t.value('target')!r} writes a PEFT adapter folder, not a {t.value('format')} file")
    max_rank = t.value("max_rank")
    if t.value("target") == "vllm" and not (is_schedule(max_rank) and not varies(max_rank)):
        problem = vllm_max_rank_problem(max_rank)  # a number given later is checked once it is known
        if problem:
            t.fail("max_rank", problem, hint="vLLM serves adapters up to the --max-lora-rank it was started with")


OPERATORS = [
    Operator("load", (Param("path", Path(optional=True, hub=True), None),
                      Param("family", Choice(tuple(FAMILY_TITLES), optional=True), None),
                      Param("name", Text(optional=True), None, internal=True)), DELTA,
             "Read a PEFT LoRA adapter folder, an adapter on the Hugging Face Hub (hf://ORG/NAME[@REV][/SUB], "
             "or ORG/NAME when no such local folder exists), or a LoRA file of an image model (kohya, diffusers, "
             "LyCORIS LoHa/LoKr .safetensors; family= (\"sd1\", \"sd2\", \"sdxl\", \"flux\") settles a file whose "
             "model family is ambiguous). load() without a path is an input given from outside (--set NAME=PATH).",
             factored=lambda ctx, node: ctx.load(node)),
    Operator("save", (Param("x", Update()), Param("path", Path()),
                      Param("rank", Int(minimum=1, optional=True, schedules=True), None),
                      Param("energy", Real(0.0, 1.0, open_low=True, optional=True, schedules=True,
                                           why=" (the fraction of each module's squared norm to keep)"), None),
                      Param("max_rank", Int(minimum=1, optional=True, schedules=True), None),
                      Param("target", Choice(TARGETS, optional=True), None),
                      Param("format", Choice(OUTPUT_FORMATS, optional=True), None)),
             UNIT, "Write x as a PEFT adapter folder, or for image-model LoRAs in the first input's format (a "
                   "path ending in .safetensors is one file; format= chooses \"kohya\", \"diffusers\", "
                   "\"peft\", \"loha\" or \"lokr\"); rank=N keeps the best rank-N approximation, energy=e "
                   "per module the smallest rank keeping the fraction e of its energy, max_rank=N caps "
                   "either; target=\"vllm\" writes what vLLM serves.",
             # the value written, and the squared error dropped / total (for the run's report);
             # with energy=, also each module's relative error
             factored=_save, dense=_save_dense, check=_check_save),
]
