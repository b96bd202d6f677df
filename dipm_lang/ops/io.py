"""Reading and writing (SPEC §3 "I/O", §4, §7.6, §7.8): `load`, `save`, `base`, `bake`, `extract`.

All take paths, which the lowering resolves against the folder of the file they are written in
and confines to `--sandbox`. `load()` without a path is an input given from outside; the lowering
sets `name` when the load is bound to a name (`H = load(...)`), which makes it a named input.

With base weights (SPEC §7.8): `base("DIR")` is W0, so `base("DIR") + x` is a full weight; a DoRA
adapter's `load` is its exact update in DoRA's form; saving a weight writes W − W0, and a value in
DoRA's form is written as a DoRA adapter; `bake(x, "OUT")` writes W0 + x as a model folder;
`extract(tuned, base, rank=…)` is a LoRA approximation of a fine-tune's W_tuned − W0.

`save`'s ranks: none (exact), `rank=N` (the best rank-N approximation), or `energy=e` (per module the
smallest rank keeping the fraction e of ΔW's squared Frobenius norm, SPEC §7.6); `max_rank=N` caps
either. `target="vllm"` writes what vLLM's LoRA loader serves (io/vllm.py); its `max_rank` is the
server's `--max-lora-rank`, so it must be a value vLLM allows (ir/targets.py).
"""

from __future__ import annotations

from dipm_lang.errors import ExecutionError
from dipm_lang.ir.operator import Operator
from dipm_lang.ir.blocks import FAMILY_TITLES
from dipm_lang.ir.schedules import is_schedule, varies
from dipm_lang.ir.signature import Choice, Flag, Int, Param, Path, Real, Text, Typing, Update
from dipm_lang.ir.targets import TARGETS, vllm_max_rank_problem
from dipm_lang.ir.types import DELTA, UNIT, WEIGHT
from dipm_lang.ops.backend import D, F, L, R

BAKE_DTYPES = ("base", "float32", "bfloat16", "float16", "float64")


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


def _load(ctx, node):
    """An adapter's update; for a DoRA adapter, m ⊙ normalize_rows(W0 + s·B·A) − W0 in DoRA's form."""
    value = ctx.load(node)
    magnitudes = ctx.magnitudes(node) if ctx.magnitudes is not None else None
    if magnitudes is None:
        return value
    if isinstance(value, L.LowRank):
        from dipm_lang.backend.dora import dora_update

        return dora_update(ctx.weights(), value, magnitudes, names=ctx.names)
    return D.dora_update(ctx.weights(), value, magnitudes, ctx.names)


def _update(ctx, node, x):
    """The update a saved (or baked) value stands for: a weight-level value W writes W − W0."""
    return F.to_update(x) if node.args[0].type.is_weight else x


def _save(ctx, node, x):
    x = _update(ctx, node, x)
    rank, energy, max_rank = node.attr("rank"), node.attr("energy"), node.attr("max_rank")
    if ctx.in_form(node.args[0]):  # target= on DoRA's form is refused when planning
        if energy is not None or (max_rank is not None and rank is None):
            return _save_dora(ctx, x, _energy_truncations(ctx, energy, max_rank))
        return _save_dora(ctx, x, None if rank is None else _capped(ctx, rank, max_rank or rank))
    if max_rank is None and energy is None:
        return L.truncate(x, _ranks(ctx, rank))
    if rank is not None:
        return L.truncate(x, _capped(ctx, rank, max_rank))
    return R.save_by_energy(x, None if energy is None else ctx.number(energy), _max_ranks(ctx, max_rank))


def _energy_truncations(ctx, energy, max_rank):
    """`energy=`/`max_rank=` on DoRA's form, per module: L's kept rank by SPEC §7.6's rule on L's own
    singular values (SPEC §7.8: the truncation acts on L and keeps the DoRA form)."""
    energies = [None] * len(ctx.names) if energy is None else ctx.numbers(energy)
    caps = [None] * len(ctx.names) if max_rank is None else [int(c) for c in ctx.numbers(max_rank)]

    def by_energy(e, cap):
        def truncate(L_module):
            pieces, _, errors = R.truncate_by_energy(L_module, e, cap)
            return pieces[0], errors
        return truncate

    return [by_energy(e, cap) for e, cap in zip(energies, caps)]


def _save_dora(ctx, x, truncation):
    """diag(c)·W0 + K as a DoRA adapter (L = K/(1+c), m = (1+c)⊙‖W0 + L‖); `rank=` or `energy=`
    truncates L. `truncation`: None (exact), a rank or one per module, or one truncating function
    per module (`_energy_truncations`). Returns (the outputs, squared error dropped, squared total)
    as `lowrank.truncate` does, and with energy= each module's relative error dropped."""
    from dipm_lang.backend.dora import matrix_norm, to_dora

    W0 = ctx.weights()
    x = F.as_form(x)
    unchanged = (x.c == 0).all(-1) & ((x.K.B == 0).all(-1).all(-1) | (x.K.A == 0).all(-1).all(-1))
    if truncation is None:
        factors = to_dora(x, W0, names=ctx.names)
        return F.DoraOutput(factors.lora, factors.magnitude, unchanged), 0.0, 0.0
    per_module = [truncation] * len(ctx.names) if isinstance(truncation, int) else truncation
    outputs, dropped, total, errors = [], 0.0, 0.0, []
    for i, how in enumerate(per_module):
        truncate = how if callable(how) else (lambda K, r=how: L.lowrank(K, r))
        factors = to_dora(x[i], W0[i], names=[ctx.names[i]], truncate=truncate)
        norm = float(matrix_norm(x[i].to(W0.dtype), W0[i]))
        dropped += (float(factors.error) * norm) ** 2
        total += norm ** 2
        errors.append(float(factors.error))
        outputs.append(F.DoraOutput(factors.lora, factors.magnitude, unchanged[i]))
    if callable(per_module[0]):
        return outputs, dropped, total, errors
    return outputs, dropped, total


def _save_dense(ctx, node, x):
    if node.args[0].type.is_weight:
        x = x - ctx.weights()
    rank, energy, max_rank = node.attr("rank"), node.attr("energy"), node.attr("max_rank")
    if ctx.in_form(node.args[0]) and (rank, energy, max_rank) != (None, None, None):
        raise ExecutionError("the dense reference does not truncate values in DoRA's form (rank= truncates L, "
                             "whose split from c·W0 is the factored backend's)")
    if max_rank is None and energy is None:
        return D.truncate(x, _ranks(ctx, rank, one=True))
    if rank is not None:
        return D.truncate(x, _capped(ctx, rank, max_rank, one=True))
    return D.truncate_energy(x, None if energy is None else ctx.numbers(energy)[0],
                             int(ctx.numbers(max_rank)[0]) if max_rank is not None else None)


def _bake(ctx, node, x):
    """What bake writes for this batch: the update (added to W0 shard by shard when written)."""
    return _update(ctx, node, x), 0.0, 0.0


def _bake_dense(ctx, node, x):
    return (x - ctx.weights() if node.args[0].type.is_weight else x), 0.0, 0.0


def _extract_check(t: Typing) -> None:
    rank, energy, cap = (t.value(name) for name in ("rank", "energy", "max_rank"))
    if (rank is None) == (energy is None):
        t.fail("rank" if rank is None else "energy", "give rank=N or energy=E (one of them)",
               hint="rank keeps N singular directions per module; energy the fewest that hold that share of "
                    "Σσ² (SPEC §7.6)")
    if cap is not None and energy is None:
        t.fail("max_rank", "max_rank caps energy=; with rank=N the rank is N")


OPERATORS = [
    Operator("load", (Param("path", Path(optional=True, hub=True), None),
                      Param("family", Choice(tuple(FAMILY_TITLES), optional=True), None),
                      Param("name", Text(optional=True), None, internal=True)), DELTA,
             "Read a PEFT LoRA adapter folder, an adapter on the Hugging Face Hub (hf://ORG/NAME[@REV][/SUB], "
             "or ORG/NAME when no such local folder exists), or a LoRA file of an image model (kohya, diffusers, "
             "LyCORIS LoHa/LoKr .safetensors; family= (\"sd1\", \"sd2\", \"sdxl\", \"flux\") settles a file whose "
             "model family is ambiguous); a DoRA adapter needs the base weights. load() without a path is an "
             "input given from outside (--set NAME=PATH).",
             factored=_load),
    Operator("save", (Param("x", Update(weights=True)), Param("path", Path()),
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
                   "either; target=\"vllm\" writes what vLLM serves. A weight writes W − W0; a value in DoRA's "
                   "form (DoRA adapters, weights) a DoRA adapter.",
             # the value written, and the squared error dropped / total (for the run's report);
             # with energy=, also each module's relative error
             factored=_save, dense=_save_dense, check=_check_save),
    Operator("base", (Param("path", Path(optional=True), None),), WEIGHT,
             "The base model's weights W0 (a folder as save_pretrained writes it): base(\"DIR\") + x is the full "
             "weight of each module. base() without a folder is the one given with --base DIR.",
             factored=lambda ctx, node: F.base_value(ctx.weights()), dense=lambda ctx, node: ctx.weights()),
    Operator("bake", (Param("x", Update(weights=True)), Param("path", Path()),
                      Param("dtype", Choice(BAKE_DTYPES), "base")),
             UNIT, "Write W0 + x (or the weight x) as a model folder with the base's layout, shard by shard "
                   "(dtype: the base's, unless given).",
             factored=_bake, dense=_bake_dense),
    Operator("extract", (Param("tuned", Path()), Param("base", Path(optional=True), None),
                         Param("rank", Int(minimum=1, optional=True), None),
                         Param("energy", Real(0.0, 1.0, open_low=True, optional=True), None),
                         Param("max_rank", Int(minimum=1, optional=True), None),
                         Param("exact", Flag(), False), Param("seed", Int(minimum=0), 0),
                         Param("target_modules", Text(), "all-linear")), DELTA,
             "A LoRA from a fine-tuned model folder: per module, the best rank-N (or energy=E) approximation of "
             "W_tuned − W0 by randomized SVD (exact=true: the full SVD), its error reported.",
             factored=lambda ctx, node: ctx.load(node), check=_extract_check),
]
