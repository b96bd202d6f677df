"""Dead-code elimination: keep only what the saves (and named results) need.

With nodes held by their users, "the program" is what is reachable from its roots; this pass
also drops the side tables' entries (spans, inputs) of everything else.
"""

from __future__ import annotations

from dipm_lang.ir.node import Program, walk


def dce(program: Program) -> Program:
    roots = [*program.roots, *program.results.values()]
    live = {id(n) for n in walk(roots)}
    return Program(
        roots=list(program.roots),
        results=dict(program.results),
        spans={n: s for n, s in program.spans.items() if id(n) in live},
        sources=program.sources,
        inputs={k: v for k, v in program.inputs.items() if id(v) in live},
        script_text=program.script_text,
        notes=list(program.notes),
    )
