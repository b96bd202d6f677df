"""The built-in operators: their parameters, their type rules, and the IR they emit.

Each builtin declares its parameters once (name, default, whether it must be a compile-time
constant) and a `build` function that checks operand types and emits one IR node. Everything
here runs before any tensor is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dipm_lang.errors import DipmTypeError, Span
from dipm_lang.frontend.suggest import did_you_mean
from dipm_lang.ir.node import Node, const
from dipm_lang.ir.types import (BY_VALUES, DELTA, NUM, STR, UNIT, Type, assignable, dir_t, factor_t, list_t,
                                mag_t)

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = REQUIRED
    static: bool = False  # must be a compile-time constant; its value becomes an IR attribute


@dataclass
class Arg:
    """One bound argument: its IR node (None when defaulted) and where it was written."""

    node: Node | None
    span: Span | None
    value: Any = None  # the constant value, for static parameters


@dataclass
class Call:
    """What a builtin's `build` sees: bound arguments and the call's own span."""

    name: str
    args: dict[str, Arg]
    span: Span | None
    make: Callable[..., Node]  # Node factory of the lowering (un-interned, records spans)

    def node(self, name: str) -> Node:
        return self.args[name].node  # type: ignore[return-value]

    def type(self, name: str) -> Type:
        return self.node(name).type

    def where(self, name: str) -> Span | None:
        return self.args[name].span or self.span

    def static(self, name: str) -> Any:
        return self.args[name].value


@dataclass(frozen=True)
class Builtin:
    name: str
    params: tuple[Param, ...]
    build: Callable[[Call], Node]
    signature: str
    doc: str


def _type_error(call: Call, param: str, message: str, hint: str | None = None) -> DipmTypeError:
    return DipmTypeError(f"{call.name}: {message}", call.where(param), hint=hint)


# ---- operand checks ---------------------------------------------------------------------

def expect_update(call: Call, param: str) -> Type:
    t = call.type(param)
    if not t.is_update:
        hint = "recombine(d, m) turns a direction and a magnitude back into a Delta" if t.kind == "Mag" else None
        raise _type_error(call, param, f"'{param}' must be a Delta (an adapter update), got {t}", hint)
    return t


def expect_dir(call: Call, param: str) -> Type:
    t = call.type(param)
    if t.kind != "Dir":
        hint = f"use dir(x) or normalize(x) to get a direction from a {t}" if t.is_update else None
        raise _type_error(call, param, f"'{param}' must be a direction Dir[by], got {t}", hint)
    return t


def expect_mag(call: Call, param: str) -> Type:
    t = call.type(param)
    if t.kind != "Mag":
        hint = "use mag(x) to get the magnitudes of an update" if t.is_update else None
        raise _type_error(call, param, f"'{param}' must be a magnitude Mag[by], got {t}", hint)
    return t


def expect_list_of(call: Call, param: str, kind: str) -> list[Type]:
    node = call.node(param)
    if node.type.kind != "List" or node.op != "list":
        raise _type_error(call, param, f"'{param}' must be a list [..] of {kind}, got {node.type}")
    if not node.args:
        raise _type_error(call, param, f"'{param}' must not be empty")
    types = [a.type for a in node.args]
    for t in types:
        ok = t.kind == kind or (kind == "Num" and t == NUM)
        if not ok:
            raise _type_error(call, param, f"'{param}' must hold only {kind} values, found a {t}")
    return types


def same_by(call: Call, first: str, second: str, t1: Type, t2: Type) -> str:
    if t1.by != t2.by:
        raise _type_error(call, second, f"'{first}' is {t1} but '{second}' is {t2}; both must have the same `by`",
                          hint=f"compute both with the same by=\"{t1.by}\"")
    return t1.by  # type: ignore[return-value]


def check_by(call: Call, param: str = "by") -> str:
    value = call.static(param)
    if value not in BY_VALUES:
        guess = did_you_mean(str(value), BY_VALUES, {"row": "out", "rows": "out", "col": "in", "cols": "in",
                                                     "column": "in", "columns": "in", "all": "matrix"})
        raise _type_error(call, param, f"by must be one of \"out\", \"in\", \"matrix\", not {value!r}",
                          hint=f"did you mean by=\"{guess}\"?" if guess else None)
    return value


def check_number(call: Call, param: str, *, integer: bool = False, minimum: float | None = None) -> float:
    value = call.static(param)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _type_error(call, param, f"'{param}' must be a number, got {value!r}")
    if integer and float(value) != int(value):
        raise _type_error(call, param, f"'{param}' must be a whole number, got {value:g}")
    if minimum is not None and value < minimum:
        raise _type_error(call, param, f"'{param}' must be at least {minimum:g}, got {value:g}")
    return int(value) if integer else float(value)


def check_string(call: Call, param: str) -> str:
    value = call.static(param)
    if not isinstance(value, str):
        raise _type_error(call, param, f"'{param}' must be a string, got {value!r}")
    return value


# ---- builders ---------------------------------------------------------------------------

def _load(call: Call) -> Node:
    path = call.static("path")
    if path is not None and not isinstance(path, str):
        raise _type_error(call, "path", f"'path' must be a string, got {path!r}")
    return call.make("load", (), {"path": path, "name": None}, DELTA)


def _save(call: Call) -> Node:
    expect_update(call, "x")
    path = check_string(call, "path")
    rank = call.static("rank")
    if rank is not None:
        rank = check_number(call, "rank", integer=True, minimum=1)
    return call.make("save", (call.node("x"),), {"path": path, "rank": rank}, UNIT)


def _dir(call: Call) -> Node:
    expect_update(call, "x")
    by = check_by(call)
    return call.make("dir", (call.node("x"),), {"by": by}, dir_t(by))


def _mag(call: Call) -> Node:
    expect_update(call, "x")
    by = check_by(call)
    return call.make("mag", (call.node("x"),), {"by": by}, mag_t(by))


def _reverse(call: Call) -> Node:
    t = expect_dir(call, "d")
    return call.make("reverse", (call.node("d"),), {}, t)


def _shift(call: Call) -> Node:
    td, te = expect_dir(call, "d"), expect_dir(call, "e")
    by = same_by(call, "d", "e", td, te)
    _expect_num(call, "t")
    return call.make("shift", (call.node("d"), call.node("e"), call.node("t")), {}, dir_t(by))


def _orth(call: Call) -> Node:
    td, te = expect_dir(call, "d"), expect_dir(call, "e")
    by = same_by(call, "d", "e", td, te)
    return call.make("orth", (call.node("d"), call.node("e")), {}, dir_t(by))


def _weights(call: Call, items: int) -> Node:
    given = call.node("weights")
    if given is None or (given.op == "list" and not given.args):  # omitted or [] means equal weights
        return call.make("list", [call.make("const", (), {"value": 1.0}, NUM) for _ in range(items)], {}, list_t(NUM))
    expect_list_of(call, "weights", "Num")
    n = len(call.node("weights").args)
    if n != items:
        raise _type_error(call, "weights", f"{items} values but {n} weights")
    return call.node("weights")


def _mix(call: Call) -> Node:
    types = expect_list_of(call, "dirs", "Dir")
    for t in types[1:]:
        if t.by != types[0].by:
            raise _type_error(call, "dirs", f"directions of different `by` in one mix: {types[0]} and {t}")
    weights = _weights(call, len(types))
    return call.make("mix", (call.node("dirs"), weights), {}, dir_t(types[0].by))  # type: ignore[arg-type]


def _mean(call: Call) -> Node:
    types = expect_list_of(call, "mags", "Mag")
    for t in types[1:]:
        if t.by != types[0].by:
            raise _type_error(call, "mags", f"magnitudes of different `by` in one mean: {types[0]} and {t}")
    weights = _weights(call, len(types))
    return call.make("mean", (call.node("mags"), weights), {}, mag_t(types[0].by))  # type: ignore[arg-type]


def _recombine(call: Call) -> Node:
    td, tm = call.type("d"), call.type("m")
    if td.kind == "Mag" and tm.kind == "Dir":
        raise DipmTypeError("recombine: the arguments look swapped: it takes (direction, magnitude)", call.span,
                            hint="write recombine(d, m), e.g. recombine(dir(x), mag(x))")
    expect_dir(call, "d")
    expect_mag(call, "m")
    by = same_by(call, "d", "m", td, tm)
    return call.make("recombine", (call.node("d"), call.node("m")), {"by": by}, DELTA)


def _normalize(call: Call) -> Node:
    return _dir(call)


def _lowrank(call: Call) -> Node:
    expect_update(call, "x")
    rank = check_number(call, "rank", integer=True, minimum=1)
    return call.make("lowrank", (call.node("x"),), {"rank": rank}, DELTA)


def _lora(call: Call) -> Node:
    tb, ta = call.type("B"), call.type("A")
    if tb == factor_t("A") and ta == factor_t("B"):
        raise DipmTypeError("lora: the arguments look swapped: it takes (B, A), like ΔW = B @ A", call.span)
    for name, which, t in (("B", "B", tb), ("A", "A", ta)):
        if t != factor_t(which):
            raise _type_error(call, name, f"'{name}' must be a Factor[{which}] (x.{which}), got {t}")
    return call.make("lora", (call.node("B"), call.node("A")), {}, DELTA)


def _select(call: Call) -> Node:
    expect_update(call, "x")
    pattern = _pattern(call)
    return call.make("select", (call.node("x"),), {"pattern": pattern, "layers": _layers(call)}, DELTA)


def _replace(call: Call) -> Node:
    expect_update(call, "x")
    expect_update(call, "y")
    pattern = _pattern(call)
    return call.make("replace", (call.node("x"), call.node("y")), {"pattern": pattern, "layers": _layers(call)},
                     DELTA)


def _pattern(call: Call) -> str:
    import re

    from dipm_lang.safety.regex import compile_pattern

    pattern = call.static("pattern")
    if pattern is None:
        return ".*"
    pattern = check_string(call, "pattern")
    try:
        compile_pattern(pattern)  # re.compile, refusing patterns that could take exponential time
    except re.error as e:
        raise _type_error(call, "pattern", f"invalid regular expression {pattern!r:.200}: {e}") from None
    return pattern


def _layers(call: Call) -> tuple[int, int] | None:
    value = call.static("layers")
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, float) and v == int(v) for v in value) or value[0] > value[1]):
        raise _type_error(call, "layers", f"'layers' must be [first, last] (inclusive layer numbers), got {value!r}")
    return (int(value[0]), int(value[1]))


def _elementwise_mag(op: str) -> Callable[[Call], Node]:
    def build(call: Call) -> Node:
        ta, tb = call.type("a"), call.type("b")
        for name, t in (("a", ta), ("b", tb)):
            if t.kind not in ("Mag", "Num"):
                raise _type_error(call, name, f"'{name}' must be a Mag or a number, got {t}")
        if ta.kind == tb.kind == "Mag":
            same_by(call, "a", "b", ta, tb)
        result = ta if ta.kind == "Mag" else tb
        return call.make(op, (call.node("a"), call.node("b")), {}, result)

    return build


def _abs(call: Call) -> Node:
    t = call.type("a")
    if t.kind not in ("Mag", "Num"):
        raise _type_error(call, "a", f"'a' must be a Mag or a number, got {t}")
    return call.make("abs", (call.node("a"),), {}, t)


def _expect_num(call: Call, param: str) -> None:
    if call.type(param) != NUM:
        raise _type_error(call, param, f"'{param}' must be a number, got {call.type(param)}")


BY = Param("by", "out", static=True)

BUILTINS: dict[str, Builtin] = {b.name: b for b in [
    Builtin("load", (Param("path", None, static=True),), _load, "load(path: Str) -> Delta",
            "Read a PEFT LoRA adapter folder. load() without a path is an input given from outside (--set NAME=PATH)."),
    Builtin("save", (Param("x"), Param("path", static=True), Param("rank", None, static=True)), _save,
            "save(x: Delta, path: Str, rank: Num = exact) -> Unit",
            "Write x as a PEFT adapter folder; rank=N keeps the best rank-N approximation."),
    Builtin("dir", (Param("x"), BY), _dir, "dir(x: Delta, by=\"out\") -> Dir[by]",
            "Direction: each unit (row, column or whole matrix) divided by its norm; zero units stay zero."),
    Builtin("normalize", (Param("x"), BY), _normalize, "normalize(x: Delta, by=\"out\") -> Dir[by]",
            "Same as dir: turns any Delta into a Dir."),
    Builtin("mag", (Param("x"), BY), _mag, "mag(x: Delta, by=\"out\") -> Mag[by]",
            "Magnitude: the norm of each unit of x."),
    Builtin("reverse", (Param("d"),), _reverse, "reverse(d: Dir) -> Dir", "The opposite direction, -d."),
    Builtin("shift", (Param("d"), Param("e"), Param("t")), _shift, "shift(d: Dir, e: Dir, t: Num) -> Dir",
            "Move d toward e along the great circle by the fraction t (per-unit slerp)."),
    Builtin("mix", (Param("dirs"), Param("weights", None)), _mix, "mix(dirs: List[Dir], weights: List[Num]) -> Dir",
            "normalize(sum of w_i * d_i)."),
    Builtin("orth", (Param("d"), Param("e")), _orth, "orth(d: Dir, e: Dir) -> Dir",
            "Remove from d its component along e, then normalize."),
    Builtin("recombine", (Param("d"), Param("m")), _recombine, "recombine(d: Dir[by], m: Mag[by]) -> Delta",
            "Scale each unit of the direction d by the magnitude m."),
    Builtin("mean", (Param("mags"), Param("weights", None)), _mean,
            "mean(mags: List[Mag], weights: List[Num]) -> Mag", "Weighted mean of magnitudes: sum(w_i m_i) / sum(w_i)."),
    Builtin("max", (Param("a"), Param("b")), _elementwise_mag("max"), "max(a: Mag, b: Mag) -> Mag",
            "Elementwise maximum."),
    Builtin("min", (Param("a"), Param("b")), _elementwise_mag("min"), "min(a: Mag, b: Mag) -> Mag",
            "Elementwise minimum."),
    Builtin("abs", (Param("a"),), _abs, "abs(a: Mag) -> Mag", "Elementwise absolute value."),
    Builtin("lowrank", (Param("x"), Param("rank", static=True)), _lowrank, "lowrank(x: Delta, rank: Num) -> Delta",
            "Best rank-r approximation (truncated SVD of the factors; Eckart-Young)."),
    Builtin("lora", (Param("B"), Param("A")), _lora, "lora(B: Factor[B], A: Factor[A]) -> Delta",
            "The update B @ A from two factors (see x.A and x.B)."),
    Builtin("select", (Param("x"), Param("pattern", None, static=True), Param("layers", None, static=True)),
            _select, "select(x: Delta, pattern: Str, layers=[first, last]) -> Delta",
            "Keep only the modules whose name matches the regex (re.search) and/or lies in the layer range; "
            "others become zero."),
    Builtin("replace", (Param("x"), Param("y"), Param("pattern", None, static=True),
                        Param("layers", None, static=True)),
            _replace, "replace(x: Delta, y: Delta, pattern: Str, layers=[first, last]) -> Delta",
            "x, with the matching modules taken from y instead."),
]}


def const_num(value: float) -> Node:
    return const(float(value), NUM)


def const_str(value: str) -> Node:
    return const(value, STR)


__all__ = ["BUILTINS", "Builtin", "Param", "Arg", "Call", "REQUIRED", "assignable"]

# The merge baselines (linear, ties, svd, …) live in their own module, which adds them to BUILTINS.
import dipm_lang.frontend.baselines  # noqa: E402,F401
