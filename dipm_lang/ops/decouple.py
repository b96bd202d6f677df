"""The decoupler and the recombiner (SPEC §3): `dir`, `normalize`, `mag`, `recombine`.

They take updates and, with base weights, full weights (SPEC §7.8): `dir(W0 + x)` is DoRA's
direction (per output row by default), its `recombine` a weight again. Values in DoRA's form
diag(c)·W0 + K (DoRA adapters, weights) go through `backend/forms.py`, which never builds m×n
beyond W0 itself.
"""

from __future__ import annotations

from dipm_lang.ir.operator import Operator
from dipm_lang.ir.patterns import P, Rule, Var
from dipm_lang.ir.signature import By, DirOf, MagOf, Param, Typing, Update
from dipm_lang.ir.types import DELTA, WEIGHT, WEIGHT_SPACE, Type, dir_t
from dipm_lang.ops.backend import D, F

X, BY = Var("x"), Var("by")
UNITS = Param("by", By("by"), "out")


def _swapped(t: Typing) -> None:
    if t.type("d").kind == "Mag" and t.type("m").kind == "Dir":
        t.fail(None, "the arguments look swapped: it takes (direction, magnitude)",
               hint="write recombine(d, m), e.g. recombine(dir(x), mag(x))")


def _dir(ctx, node, x):
    by = node.attr("by")
    return F.dir(x, by, ctx.eps, ctx.unit_norms(x, by, node.args[0]))


def _dir_type(t: Typing) -> Type:
    """Dir[by], of a weight when x is one."""
    return dir_t(t.value("by"), WEIGHT_SPACE if t.type("x").is_weight else None)


def _recombine_type(t: Typing) -> Type:
    """A Delta, or a Weight when the direction is a weight's."""
    return WEIGHT if t.type("d").is_weight else DELTA


DIR = Operator(
    "dir", (Param("x", Update(weights=True)), UNITS), _dir_type,
    "Direction: each unit (row, column or whole matrix) divided by its norm; zero units stay zero.",
    factored=_dir, dense=lambda ctx, node, x: D.dir(x, node.attr("by"), ctx.eps),
    simplify=(
        # dir(d, by) -> d  when d is already a Dir[by]; covers dir(dir(x)) -> dir(x)
        Rule("dir-of-dir", P("dir", X, where=lambda n: n.args[0].type == n.type), lambda x: x),
    ),
    maps_over_lists=True, returns_label="Dir[by]")

OPERATORS = [
    DIR,
    Operator("normalize", DIR.params, _dir_type, "Same as dir: turns any Delta into a Dir.",
             alias_of="dir", maps_over_lists=True, returns_label="Dir[by]"),
    Operator("mag", (Param("x", Update(weights=True)), UNITS), MagOf("by"), "Magnitude: the norm of each unit of x.",
             factored=lambda ctx, node, x: ctx.unit_norms(x, node.attr("by"), node.args[0]),
             dense=lambda ctx, node, x: D.mag(x, node.attr("by")), maps_over_lists=True),
    Operator("recombine", (Param("d", DirOf("by")), Param("m", MagOf("by"))), _recombine_type,
             "Scale each unit of the direction d by the magnitude m (a weight's direction gives a weight).",
             factored=lambda ctx, node, d, m: F.recombine(d, m, node.args[0].type.by),
             dense=lambda ctx, node, d, m: D.recombine(d, m, node.args[0].type.by),
             simplify=(
                 # recombine(dir(x, by), mag(x, by)) -> x
                 Rule("recombine-dir-mag", P("recombine", P("dir", X, by=BY), P("mag", X, by=BY)), lambda x: x),
             ),
             precheck=_swapped, returns_label="Delta | Weight"),
]
