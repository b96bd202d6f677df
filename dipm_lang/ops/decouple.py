"""The decoupler and the recombiner (SPEC §3): `dir`, `normalize`, `mag`, `recombine` — of updates,
and of factors (SPEC §7.3: units of `x.B` / `x.A`, kernels adapted by `factorwise`).

They take full weights too (SPEC §7.8): `dir(W0 + x)` is DoRA's direction (per output row by
default), its `recombine` a weight again. Values in DoRA's form diag(c)·W0 + K (DoRA adapters,
weights) go through `backend/forms.py`, which never builds m×n beyond W0 itself.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.patterns import P, Rule, Var
from dipm_lang.ir.signature import By, Decouplable, DirOf, MagOf, Param, Typing, UpdateOf
from dipm_lang.ops.backend import D, F
from dipm_lang.ops.factorwise import factorwise

X, BY = Var("x"), Var("by")
UNITS = Param("by", By("by"), "out")


def _swapped(t: Typing) -> None:
    if t.type("d").kind == "Mag" and t.type("m").kind == "Dir":
        t.fail(None, "the arguments look swapped: it takes (direction, magnitude)",
               hint="write recombine(d, m), e.g. recombine(dir(x), mag(x))")


def _dir(ctx, node, x):
    by = node.attr("by")
    return F.dir(x, by, ctx.eps, ctx.unit_norms(x, by, node.args[0]))


DIR = Operator(
    "dir", (Param("x", Decouplable("by")), UNITS), DirOf("by"),
    "Direction: each unit (row, column or whole matrix) divided by its norm; zero units stay zero. "
    "Of an update, or of a factor x.A / x.B (its rows, columns or the whole factor).",
    factored=factorwise(_dir), dense=factorwise(lambda ctx, node, x: D.dir(x, node.attr("by"), ctx.eps), wrap=False),
    simplify=(
        # dir(d, by) -> d  when d is already a Dir[by]; covers dir(dir(x)) -> dir(x)
        Rule("dir-of-dir", P("dir", X, where=lambda n: n.args[0].type == n.type), lambda x: x),
    ),
    maps_over_lists=True)

OPERATORS = [
    DIR,
    Operator("normalize", DIR.params, DirOf("by"), "Same as dir: turns any Delta into a Dir.",
             alias_of="dir", maps_over_lists=True),
    Operator("mag", (Param("x", Decouplable("by")), UNITS), MagOf("by"),
             "Magnitude: the norm of each unit of x (an update, or a factor x.A / x.B).",
             factored=factorwise(lambda ctx, node, x: ctx.unit_norms(x, node.attr("by"), node.args[0])),
             dense=factorwise(lambda ctx, node, x: D.mag(x, node.attr("by")), wrap=False), maps_over_lists=True),
    Operator("recombine", (Param("d", DirOf("by")), Param("m", MagOf("by"))), UpdateOf("by"),
             "Scale each unit of the direction d by the magnitude m: a Delta, a factor for a factor's "
             "direction and magnitude, a weight for a weight's direction.",
             factored=factorwise(lambda ctx, node, d, m: F.recombine(d, m, node.args[0].type.by)),
             dense=factorwise(lambda ctx, node, d, m: D.recombine(d, m, node.args[0].type.by), wrap=False),
             simplify=(
                 # recombine(dir(x, by), mag(x, by)) -> x
                 Rule("recombine-dir-mag", P("recombine", P("dir", X, by=BY), P("mag", X, by=BY)), lambda x: x),
             ),
             precheck=_swapped),
]
