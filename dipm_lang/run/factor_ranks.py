"""Before any tensor is read: factors that meet in one operator have equal ranks (SPEC §7.3).

`lora(H.B, T.A)`, `H.B + T.B`, `shift(dir(H.B), dir(T.B), t)`, `recombine(dir(H.B, by="in"),
mag(T.B, by="in"))` combine values whose size along the LoRA rank differs when the adapters' ranks
differ. The headers say each adapter's rank per module, so such a program fails in `plan`, naming the
operator and the module, instead of half-way through the run. A module one adapter lacks is a zero
factor of its partner's shape there (no conflict). Values whose rank the headers do not tell (the
factors of `align`, whose shared rank comes from an SVD) are left to the kernels' own check.
"""

from __future__ import annotations

from typing import Mapping

from dipm_lang.errors import ExecutionError
from dipm_lang.io.sources import AdapterSource
from dipm_lang.ir.modules import natural_key
from dipm_lang.ir.node import Node, Program, walk


def _ranked(node: Node) -> list[Node]:
    """The operands of `node` that run over the LoRA rank (list items included)."""
    out = []
    for arg in node.args:
        if arg.type.kind == "List" and arg.op == "list":
            out += [item for item in arg.args if item.type.rank_axis is not None]
        elif arg.type.rank_axis is not None:
            out.append(arg)
    return out


def rank_source(node: Node, memo: dict[int, str | None]) -> str | None:
    """The load path whose rank a rank-sized value has in every module, or None when unknown."""
    key = id(node)
    if key not in memo:
        memo[key] = None  # (a DAG: no cycles, but shared subterms are looked at once)
        if node.op == "factor":
            source = node.args[0]
            if source.op == "load":
                memo[key] = source.attr("path")
            elif source.op == "lora":
                memo[key] = next((s for s in map(lambda n: rank_source(n, memo), source.args) if s), None)
        else:
            memo[key] = next((s for s in (rank_source(n, memo) for n in _ranked(node)) if s), None)
    return memo[key]


def check_factor_ranks(program: Program, infos: Mapping[str, AdapterSource]) -> None:
    """Every operator whose rank-sized operands come from adapters of different ranks fails here."""
    memo: dict[int, str | None] = {}
    for node in walk(program.all_roots()):
        operands = _ranked(node)
        if node.op == "factor" or len(operands) < 2:
            continue
        paths = list(dict.fromkeys(p for p in (rank_source(n, memo) for n in operands) if p in infos))
        if len(paths) < 2:
            continue
        sources = [infos[p] for p in paths]
        for name in sorted({n for info in sources for n in info.modules}, key=natural_key):
            ranks = [(p, info.modules[name].rank) for p, info in zip(paths, sources) if name in info.modules]
            if len({rank for _, rank in ranks}) > 1:
                (first, r1), (second, r2) = ranks[0], next(item for item in ranks if item[1] != ranks[0][1])
                label = {"add": "+", "sub": "-"}.get(node.op, node.op)
                raise ExecutionError(f"{label}: factors of different ranks meet here: {first} has rank {r1}, "
                                     f"{second} has rank {r2} (module {name})", program.spans.get(node))
