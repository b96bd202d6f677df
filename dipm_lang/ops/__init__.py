"""Every operator of dipm_lang, declared once, grouped by family and registered in one list.

To add an operator: declare it (`ir/operator.py`'s `Operator`: parameters and their kinds, result
type, factored and dense kernels, rewrite rules, one-line doc) in the family module where it
belongs, and add nothing else — the lowering, the verifier, the passes, the executor, `:doc` in
the REPL and the tests' operator coverage all read it from `OPERATORS`.
"""

from __future__ import annotations

from dipm_lang.ir.operator import OperatorTable
from dipm_lang.ops import (baselines, core, decouple, deltas, directions, full, fused, io, magnitudes, schedules,
                           selection, svd_merges)

OPERATORS = OperatorTable.of(
    core.OPERATORS,        # constants, lists, + - * / and negation
    schedules.OPERATORS,   # ramp, where: numbers that vary by layer and module
    io.OPERATORS,          # load, save
    decouple.OPERATORS,    # dir, normalize, mag, recombine
    directions.OPERATORS,  # reverse, shift, lerp, mix, orth
    magnitudes.OPERATORS,  # mean, max, min, abs
    deltas.OPERATORS,      # lowrank, x.A / x.B, lora
    selection.OPERATORS,   # select, replace
    baselines.OPERATORS,   # linear, ties, dare_*, magnitude_prune, svd and the *_svd merges, cat
    svd_merges.OPERATORS,  # iso, knots, tsv (SPEC §7.9), align (one shared basis of factors)
    full.OPERATORS,        # keep_full, drop_full: what an output keeps of full-weight modules and biases
    fused.OPERATORS,       # lincomb, unit_scale (made by fusion)
)
