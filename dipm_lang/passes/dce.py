"""Dead-code elimination: keep only what the saves (and named results) need.

With nodes held by their users, "the program" is what is reachable from its roots; this pass
also drops the side tables' entries (spans, inputs) of everything else.
"""

from __future__ import annotations

from dipm_lang.ir.node import Program, walk


def dce(program: Program) -> Program:
    roots = [*program.roots, *program.results.values()]
    live = {id(n) for n in walk(roots)}
    return program.replace(spans={n: s for n, s in program.spans.items() if id(n) in live},
                           inputs={k: v for k, v in program.inputs.items() if id(v) in live},
                           bindings={})
