"""Algebraic simplification: every operator's `simplify` rules, run to a fixed point.

The rules live with their operators (`dipm_lang/ops/`), one line and one comment each; every rule
keeps the node's type (the driver enforces it) and is checked numerically by
tests/test_simplify_numeric.py against the unsimplified program.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from dipm_lang.ir.node import Program
from dipm_lang.ir.patterns import Rule
from dipm_lang.passes.rewrite import rewrite


def simplify(program: Program, rules: Sequence[Rule], *, trace: bool = False) -> Program:
    fired: Counter[str] = Counter()
    result = rewrite(program, rules, trace=trace, fired=fired)
    if fired:
        result.notes.append("simplify: " + ", ".join(f"{k}×{v}" for k, v in sorted(fired.items())))
    return result
