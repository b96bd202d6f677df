"""Fusion: rewrite chains the backend folds into factors in one kernel, by the `fuse` rules that the
fused operators declare (`dipm_lang/ops/fused.py`: `lincomb`, `unit_scale`).

Only nodes with a single user are absorbed, so nothing is computed twice and every fused group is
convex (PyTensor's rule); `FuseContext` gives the rules the use counts and records what each fused
node absorbed, for `dipm explain`.
"""

from __future__ import annotations

from typing import Sequence

from dipm_lang.ir.graph import use_counts
from dipm_lang.ir.node import Node, Program, walk
from dipm_lang.ir.patterns import Rule
from dipm_lang.passes.rewrite import rewrite


class FuseContext:
    """Use counts (by node id) of the program being fused, kept current as nodes are replaced."""

    def __init__(self, program: Program):
        self.uses = use_counts(program)
        self.notes: dict[int, str] = {}  # fused node -> what it absorbed (reported if it survives)

    def single_use(self, node: Node) -> bool:
        return self.uses.get(id(node), 0) == 1

    def note(self, node: Node, text: str) -> Node:
        self.notes[id(node)] = text
        return node

    def note_of(self, node: Node, default: str) -> str:
        return self.notes.get(id(node), default)

    def rebuilt(self, old: Node, new: Node) -> None:
        self.uses.setdefault(id(new), self.uses.get(id(old), 0))  # the fused node inherits its users


def fuse(program: Program, rules: Sequence[Rule], *, trace: bool = False) -> Program:
    ctx = FuseContext(program)
    result = rewrite(program, rules, ctx=ctx, fixed_point=False, trace=trace)
    result.notes.extend("fuse: " + ctx.notes[id(n)] for n in walk(result.all_roots()) if id(n) in ctx.notes)
    return result
