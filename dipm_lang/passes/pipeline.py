"""The compiler as one visible list of named steps (numexpr's `necompiler` idea).

    parse → lower/typecheck → cse → simplify → dce → fuse → (schedule, execute in backend)

`optimize` runs the passes in order, counts nodes after each, and (in tests, or with
`verify=True`) runs the verifier after every pass so a failure names the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dipm_lang.ir.node import Program
from dipm_lang.ir.verify import verify as verify_program
from dipm_lang.passes.cse import cse
from dipm_lang.passes.dce import dce
from dipm_lang.passes.fuse import fuse
from dipm_lang.passes.simplify import simplify

Pass = Callable[[Program], Program]

PASSES: list[tuple[str, Pass]] = [
    ("cse", cse),
    ("simplify", simplify),
    ("dce", dce),
    ("fuse", fuse),
]

# -O0 runs nothing; -O1 shares and prunes; -O2 (the default) also simplifies and fuses
LEVELS: dict[int, tuple[str, ...]] = {0: (), 1: ("cse", "dce"), 2: ("cse", "simplify", "dce", "fuse")}


@dataclass
class PassReport:
    nodes_before: int
    passes: list[dict] = field(default_factory=list)

    @property
    def nodes_after(self) -> int:
        return self.passes[-1]["nodes"] if self.passes else self.nodes_before

    def as_json(self) -> dict:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "passes": self.passes}


def optimize(program: Program, *, level: int = 2, verify: bool = False) -> tuple[Program, PassReport]:
    wanted = LEVELS[level]
    report = PassReport(nodes_before=len(program.nodes()))
    if verify:
        verify_program(program, after="lowering")
    for name, run in PASSES:
        if name not in wanted:
            continue
        program = run(program)
        if verify:
            verify_program(program, after=name)
        report.passes.append({"name": name, "nodes": len(program.nodes())})
    return program, report
