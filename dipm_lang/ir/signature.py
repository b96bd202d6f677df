"""How an operator is declared: its parameters, the kind of value each takes, and its one typing rule.

An `Operator` (ir/operator.py) lists `Param`s. Each parameter has a *kind*:

- operand kinds (`Update`, `DirOf("b")`, `MagOf("b")`, `Number`, `ListOf(…)` …) check the type of
  an operand node — a value computed per module;
- static kinds (`By("b")`, `Int(minimum=1)`, `Choice(…)`, `Path()`, `Pattern()` …) check and
  normalise a compile-time constant, which becomes an attribute of the IR node.

Letters such as `"b"` in `DirOf("b")` are type variables over the granularity `by` (sd-mecha's
"merge spaces"): every parameter that names `"b"` must agree, and the result type may use it.

The same `Typing` object runs a declaration's checks in two places — the lowering, where a failure
is a positioned `DipmTypeError` with a hint for the user, and the IR verifier, where it means a
compiler bug (`IRTypeError`). So there is one typing rule per operator, not two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, Sequence

from dipm_lang.errors import did_you_mean
from dipm_lang.ir.numbers import NotConstant, const_eval, format_number, format_string
from dipm_lang.ir.schedules import bounds, is_schedule, varies
from dipm_lang.ir.types import BY_VALUES, DELTA, WEIGHT, WEIGHT_SPACE, Type, dir_t, factor_t, mag_t

if TYPE_CHECKING:
    from dipm_lang.ir.node import Node
    from dipm_lang.ir.operator import Operator


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a parameter that must be given."""

Fail = Callable[[str | None, str, str | None], NoReturn]
"""`fail(param, message, hint)`: raise the error of the context (user error or compiler bug)."""


@dataclass(frozen=True)
class Param:
    """One parameter of an operator."""

    name: str
    kind: "Kind"
    default: Any = REQUIRED
    internal: bool = False  # filled by the compiler (e.g. the name of a bound input), never by a call

    @property
    def static(self) -> bool:
        """A compile-time constant: its value becomes an IR attribute instead of an operand."""
        return self.kind.static

    @property
    def variadic(self) -> bool:
        """Takes every remaining operand (the IR's `list`, the fused `lincomb`)."""
        return isinstance(self.kind, Rest)

    def text(self) -> str:
        """`name: Kind = default`, for signatures."""
        text = f"{self.name}: {self.kind.label}"
        if self.default is REQUIRED:
            return text
        return f"{text} = {_default_text(self.default)}"


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format_number(float(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_default_text(v) for v in value) + "]"
    return str(value)


class Typing:
    """What one application of an operator looks like to its typing rule.

    `operands` maps each operand parameter to its node (a variadic one to a list of nodes),
    `values` each static parameter to its constant. Kinds read them by parameter name, bind type
    variables (`by`) and report problems through `fail`, which knows where the parameter was
    written (lowering) or which node it is (verifier). Converted static values collect in `attrs`.
    """

    def __init__(self, op: "Operator", operands: Mapping[str, Any], values: Mapping[str, Any], fail: Fail,
                 label: str | None = None, warn: Callable[[str | None, str], None] | None = None):
        self.op = op
        self.operands = dict(operands)
        self.values = dict(values)
        self.attrs: dict[str, Any] = {}
        self._fail = fail
        self._warn = warn
        self.label = op.label if label is None else label
        self._vars: dict[str, tuple[str, str, Type | None]] = {}  # var -> (by, param that bound it, its type)
        self._spaces: dict[str, tuple[str | None, str, Type]] = {}  # var -> (factor or None, param, its type)
        self._weights: dict[str, tuple[bool, str, Type]] = {}  # var -> (of a weight?, param, its type)

    # ---- reading --------------------------------------------------------------------

    def node(self, name: str) -> "Node":
        return self.operands[name]

    def type(self, name: str) -> Type:
        return self.operands[name].type

    def value(self, name: str) -> Any:
        """A static parameter's value (converted, once its kind has run)."""
        return self.attrs.get(name, self.values.get(name))

    def items(self, name: str) -> list["Node"]:
        """The items of a list operand (a `list` node), or of a variadic parameter."""
        node = self.operands[name]
        if isinstance(node, list):
            return node
        return list(node.args) if node.op == "list" else []

    # ---- failing and type variables -------------------------------------------------

    def fail(self, param: str | None, message: str, hint: str | None = None) -> NoReturn:
        prefix = f"{self.label}: " if self.label else ""
        self._fail(param, prefix + message, hint)

    def warn(self, param: str | None, message: str) -> None:
        """Something allowed but probably not meant (the lowering shows it; the verifier ignores it)."""
        if self._warn is not None:
            prefix = f"{self.label}: " if self.label else ""
            self._warn(param, prefix + message)

    def bind(self, var: str, by: str, param: str, type_: Type | None = None) -> None:
        """Unify the type variable `var` with `by` (as found in `param`)."""
        bound = self._vars.get(var)
        if bound is None:
            self._vars[var] = (by, param, type_)
            return
        if bound[0] != by:
            first = bound[2] if bound[2] is not None else f"by=\"{bound[0]}\""
            shown = type_ if type_ is not None else f"by=\"{by}\""
            self.fail(param, f"'{bound[1]}' is {first} but '{param}' is {shown}; both must have the same `by`",
                      hint=f"compute both with the same by=\"{bound[0]}\"")

    def by(self, var: str) -> str:
        return self._vars[var][0]

    def bind_space(self, var: str, of: str | None, param: str, type_: Type) -> None:
        """Unify whose units `var` holds: an update's (None) or a factor's ("A", "B"; SPEC §7.3)."""
        bound = self._spaces.get(var)
        if bound is None:
            self._spaces[var] = (of, param, type_)
            return
        if bound[0] != of:
            self.fail(param, f"'{bound[1]}' is {bound[2]} but '{param}' is {type_}: directions and magnitudes "
                             "combine only with those of the same kind of value (an update, x.A or x.B)",
                      hint="decouple both from updates, or both from the same factor (dir(x.B), mag(x.B))")

    def space(self, var: str) -> str | None:
        """The factor whose units `var` holds (None: an update's, or nothing bound it)."""
        bound = self._spaces.get(var)
        return None if bound is None else bound[0]

    def bind_weight(self, var: str, type_: Type, param: str) -> None:
        """Directions named by one type variable are all of updates or all of weights (SPEC §7.8)."""
        bound = self._weights.get(var)
        if bound is None:
            self._weights[var] = (type_.is_weight, param, type_)
            return
        if bound[0] != type_.is_weight:
            self.fail(param, f"'{bound[1]}' is {bound[2]} but '{param}' is {type_}: directions of a weight and of "
                             "an update do not combine",
                      hint="decouple both weights (dir(base + x)) or both updates (dir(x))")

    def weight_space(self, var: str) -> str | None:
        """WEIGHT_SPACE when `var` holds directions of weights (None: of updates, or none bound)."""
        bound = self._weights.get(var)
        return WEIGHT_SPACE if bound is not None and bound[0] else None


# ---- kinds --------------------------------------------------------------------------------

class Kind:
    """What a parameter accepts. Operand kinds `check`; static kinds `convert`."""

    static = False
    label = "?"

    def check(self, t: Typing, param: str) -> None:  # operand kinds
        raise NotImplementedError

    def convert(self, t: Typing, param: str, value: Any) -> Any:  # static kinds: value -> attribute
        raise NotImplementedError

    def result(self, t: Typing) -> Type:  # kinds that double as result types
        raise TypeError(f"{type(self).__name__} is not a result type")


class Update(Kind):
    """A Delta — or a Dir, which is an update too (SPEC §2). `weights`: also a weight-level value
    (`Weight`, `Dir[by, weight]`, SPEC §7.8), for the operators that take full weights."""

    def __init__(self, weights: bool = False):
        self.weights = weights
        self.label = "Delta | Weight" if weights else "Delta"

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if ty.is_weight and not self.weights:
            t.fail(param, f"'{param}' must be an update, got {ty} (a full weight W0 + x)",
                   "this operator works on updates: use the update x itself, or dir/mag, shift … on the weight")
        if not (ty.is_update or (self.weights and ty.is_weight)):
            hint = ("recombine(d, m) turns a direction and a magnitude back into a Delta" if ty.kind == "Mag"
                    else "lora(B, A) builds a Delta from factors" if ty.is_factor else None)
            t.fail(param, f"'{param}' must be a Delta (an adapter update), got {ty}", hint)


class Decouplable(Kind):
    """What `dir`, `normalize` and `mag` split: an update (Delta or Dir) or a factor (SPEC §7.3:
    x.A, x.B, or a direction of one); binds whose units the result holds to the variable `var`."""

    label = "Delta | Weight | Factor"

    def __init__(self, var: str):
        self.var = var

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if not (ty.is_update or ty.is_factor or ty.is_weight):
            hint = "recombine(d, m) turns a direction and a magnitude back into a Delta" if ty.kind == "Mag" else None
            t.fail(param, f"'{param}' must be a Delta, a weight (base + x) or a factor (x.A, x.B), got {ty}", hint)
        t.bind_space(self.var, ty.factor, param, ty)
        t.bind_weight(self.var, ty, param)  # dir(W0 + x) is a weight's direction (SPEC §7.8)


class UpdateOf(Kind):
    """The result of `recombine`: a Delta, the factor whose direction and magnitude it joins, or a
    weight for a weight's direction (SPEC §7.8)."""

    label = "Delta | Weight | Factor"

    def __init__(self, var: str):
        self.var = var

    def result(self, t: Typing) -> Type:
        space = t.space(self.var)
        if space is not None:
            return factor_t(space)
        return WEIGHT if t.weight_space(self.var) else DELTA


class DirOf(Kind):
    """A direction `Dir[b]`; `b` is a type variable shared with the other parameters naming it."""

    def __init__(self, var: str):
        self.var = var
        self.label = f"Dir[{var}]"

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if ty.kind != "Dir":
            hint = (f"use dir(x) or normalize(x) to get a direction from a {ty}" if ty.is_update or ty.is_factor
                    else None)
            t.fail(param, f"'{param}' must be a direction Dir[by], got {ty}", hint)
        t.bind(self.var, ty.by, param, ty)  # type: ignore[arg-type]
        t.bind_space(self.var, ty.of, param, ty)
        t.bind_weight(self.var, ty, param)

    def result(self, t: Typing) -> Type:
        return dir_t(t.by(self.var), t.space(self.var), space=t.weight_space(self.var))


class MagOf(Kind):
    """Magnitudes `Mag[b]`."""

    def __init__(self, var: str):
        self.var = var
        self.label = f"Mag[{var}]"

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if ty.kind != "Mag":
            hint = "use mag(x) to get the magnitudes of an update" if ty.is_update or ty.is_factor else None
            t.fail(param, f"'{param}' must be a magnitude Mag[by], got {ty}", hint)
        t.bind(self.var, ty.by, param, ty)  # type: ignore[arg-type]
        t.bind_space(self.var, ty.of, param, ty)

    def result(self, t: Typing) -> Type:
        return mag_t(t.by(self.var), t.space(self.var))


class MagOrNumber(Kind):
    """Magnitudes `Mag[b]` or a number (elementwise `max`, `min`, `abs`)."""

    def __init__(self, var: str):
        self.var = var
        self.label = f"Mag[{var}] | Num"

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if ty.kind not in ("Mag", "Num"):
            t.fail(param, f"'{param}' must be a Mag or a number, got {ty}")
        if ty.kind == "Mag":
            t.bind(self.var, ty.by, param, ty)  # type: ignore[arg-type]
            t.bind_space(self.var, ty.of, param, ty)


class Number(Kind):
    """A number computed per module (a constant, a number input, or arithmetic on them).

    `usual` is the range a user almost always means (e.g. `shift`'s t in [0, 1]); a constant far
    outside `warn_outside` is allowed — the SPEC gives it a meaning — but gets a warning saying `note`.
    """

    label = "Num"

    def __init__(self, warn_outside: tuple[float, float] | None = None, note: str = ""):
        self.warn_outside = warn_outside
        self.note = note

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if not ty.is_number:
            t.fail(param, f"'{param}' must be a number, got {ty}")
        if self.warn_outside is None:
            return
        try:
            value = const_eval(t.node(param))
        except NotConstant:
            return
        low, high = self.warn_outside
        span = bounds(value)  # a schedule: the range of its pieces
        if span is not None and not (low <= span[0] and span[1] <= high):
            value = span[0] if span[0] < low else span[1]
            t.warn(param, f"{param}={format_number(value)} is far outside [{format_number(low)}, "
                          f"{format_number(high)}]{self.note}")


class FactorOf(Kind):
    """One LoRA factor, `x.A` or `x.B`."""

    def __init__(self, which: str):
        self.which = which
        self.label = f"Factor[{which}]"

    def check(self, t: Typing, param: str) -> None:
        ty = t.type(param)
        if not (ty.is_factor and ty.factor == self.which):  # a direction of the factor stands for it
            t.fail(param, f"'{param}' must be a Factor[{self.which}] (x.{self.which}), got {ty}")


class Anything(Kind):
    """Any value (IR-internal operators whose typing rule looks at the operands itself)."""

    label = "Any"

    def check(self, t: Typing, param: str) -> None:
        return None


class Rest(Kind):
    """Every remaining operand, each of `item` kind (variadic; IR-internal operators)."""

    def __init__(self, item: Kind):
        self.item = item
        self.label = f"{item.label}…"

    def check(self, t: Typing, param: str) -> None:
        for node in t.operands[param]:
            if isinstance(self.item, Update) and not node.type.is_update:
                t.fail(param, f"expected Delta or Dir operands, got {node.type}")


class ListOf(Kind):
    """A list `[a, b, …]` written in the call, of one kind of item (at least one item)."""

    def __init__(self, item: DirOf | MagOf, noun: str):
        self.item = item
        self.noun = noun  # "directions", "magnitudes": for the message when their `by`s differ
        self.label = f"List[{item.label}]"

    def check(self, t: Typing, param: str) -> None:
        node = t.node(param)
        kind = self.item.label.split("[")[0]
        if node.type.kind != "List" or node.op != "list":
            t.fail(param, f"'{param}' must be a list [..] of {kind}, got {node.type}")
        if not node.args:
            t.fail(param, f"'{param}' must not be empty")
        first = node.args[0].type
        for item in node.args:
            if item.type.kind != kind:
                t.fail(param, f"'{param}' must hold only {kind} values, found a {item.type}")
            if item.type.by != first.by or item.type.of != first.of:
                what = "`by`" if item.type.by != first.by else "kinds of value (updates, x.A, x.B)"
                t.fail(param, f"{self.noun} of different {what} in one {t.op.name}: {first} and {item.type}")
            if item.type.space != first.space:
                t.fail(param, f"{self.noun} of a weight and of an update in one {t.op.name}: {first} and {item.type}",
                       hint="decouple all weights (dir(base + x)) or all updates (dir(x))")
        t.bind(self.item.var, first.by, param, first)  # type: ignore[arg-type]
        t.bind_space(self.item.var, first.of, param, first)
        if isinstance(self.item, DirOf):
            t.bind_weight(self.item.var, first, param)


class Weights(Kind):
    """A list of numbers, one per item of the list parameter `of`; `[]` means equal weights."""

    label = "List[Num]"

    def __init__(self, of: str):
        self.of = of

    def check(self, t: Typing, param: str) -> None:
        node = t.node(param)
        if node.type.kind != "List" or node.op != "list":
            t.fail(param, f"'{param}' must be a list [..] of Num, got {node.type}")
        for item in node.args:
            if not item.type.is_number:
                t.fail(param, f"'{param}' must hold only Num values, found a {item.type}")
        count, given = len(t.items(self.of)), len(node.args)
        if given and given != count:
            t.fail(param, f"{count} values but {given} weights")


class UpdateList(Kind):
    """A list `[x, y, …]` of updates (the merge baselines' `xs`); `adapters` requires `load`s;
    `weights` also takes weight-level items (`cat`, SPEC §7.8)."""

    label = "List[Delta]"

    def __init__(self, adapters: str | None = None, weights: bool = False):
        self.adapters = adapters  # why the items must be adapters read from folders, or None
        self.weights = weights

    def check(self, t: Typing, param: str) -> None:
        node = t.node(param)
        if node.type.kind != "List" or node.op != "list":
            t.fail(param, f"'{param}' must be a list [..] of adapters or updates, got {node.type}",
                   hint=f"{t.op.name}([x, y], [1, 1], …)")
        if not node.args:
            t.fail(param, f"'{param}' must not be empty")
        for i, item in enumerate(node.args, 1):
            if not (item.type.is_update or (self.weights and item.type.is_weight)):
                t.fail(param, f"item {i} of '{param}' must be a Delta, got {item.type}")
        if self.adapters:
            require_adapters(t, param, self.adapters)


def require_adapters(t: Typing, param: str, why: str, hint: str | None = None) -> None:
    """Every item of the list `param` must be an adapter read from a folder (a `load`)."""
    for i, item in enumerate(t.items(param), 1):
        if item.op != "load":
            t.fail(param, f"item {i} of '{param}' is a computed {item.type}, not an adapter: {why}",
                   hint=hint or "give load(...) results (or names bound to them)")


# ---- static kinds -------------------------------------------------------------------------

class Static(Kind):
    static = True


class By(Static):
    """The granularity `by` ("out", "in" or "matrix"), bound to the type variable `var`."""

    ALIASES = {"row": "out", "rows": "out", "col": "in", "cols": "in", "column": "in", "columns": "in",
               "all": "matrix"}

    def __init__(self, var: str):
        self.var = var
        self.label = '"out"|"in"|"matrix"'

    def convert(self, t: Typing, param: str, value: Any) -> str:
        if value not in BY_VALUES:
            guess = did_you_mean(str(value), BY_VALUES, self.ALIASES)
            t.fail(param, f"by must be one of \"out\", \"in\", \"matrix\", not {value!r}",
                   hint=f"did you mean by=\"{guess}\"?" if guess else None)
        t.bind(self.var, value, param)
        return value


class Int(Static):
    """A whole number, at least `minimum`; `optional` admits none (`rank=` left out); `schedules`
    admits a schedule (SPEC §7.2: a per-module rank), whose pieces are checked."""

    label = "Int"

    def __init__(self, minimum: int | None = None, optional: bool = False, schedules: bool = False):
        self.minimum = minimum
        self.optional = optional
        self.schedules = schedules

    def convert(self, t: Typing, param: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if is_schedule(value):
            _schedule_allowed(t, param, value, self.schedules)
            for piece in (bounds(value) or ()):
                self._check(t, param, piece)
            return value
        return self._check(t, param, value)

    def _check(self, t: Typing, param: str, value: Any) -> int:
        number = _number(t, param, value)
        if number != int(number):
            t.fail(param, f"'{param}' must be a whole number, got {number:g}")
        if self.minimum is not None and number < self.minimum:
            t.fail(param, f"'{param}' must be at least {self.minimum:g}, got {number:g}")
        return int(number)


class Real(Static):
    """A number in an interval (`density` in [0, 1]; DARE's (0, 1]); `schedules` admits a schedule
    whose pieces lie in the interval; `optional` admits none (a parameter some settings need: `density`
    of `knots`' linear merge, `energy=` left out)."""

    label = "Num"

    def __init__(self, low: float | None = None, high: float | None = None, *, open_low: bool = False,
                 why: str = "", schedules: bool = False, optional: bool = False):
        self.low, self.high, self.open_low, self.why = low, high, open_low, why
        self.schedules = schedules
        self.optional = optional  # none admitted (a parameter left out)

    def convert(self, t: Typing, param: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if is_schedule(value):
            _schedule_allowed(t, param, value, self.schedules)
            for piece in (bounds(value) or ()):
                self._check(t, param, piece)
            return value
        return self._check(t, param, value)

    def _check(self, t: Typing, param: str, value: Any) -> float:
        number = float(_number(t, param, value))
        too_low = self.low is not None and (number <= self.low if self.open_low else number < self.low)
        too_high = self.high is not None and number > self.high
        if too_low or too_high:
            bounds_text = f"{'(' if self.open_low else '['}{format_number(self.low or 0.0)}, {format_number(self.high)}]"
            t.fail(param, f"{param} must be in {bounds_text}{self.why}, got {number:g}")
        return number


def _schedule_allowed(t: Typing, param: str, value: Any, allowed: bool) -> None:
    if not allowed and varies(value):  # a parameter (one number, given later) is fine
        t.fail(param, f"'{param}' must be one number for every module, got a schedule ({_listed(value)})")


class Choice(Static):
    """One of a few strings (`majority_sign_method`); `optional` admits none (`target=`, `format=` left out)."""

    def __init__(self, values: Sequence[str], aliases: Mapping[str, str] | None = None, optional: bool = False):
        self.values = tuple(values)
        self.aliases = dict(aliases or {})
        self.optional = optional
        self.label = "|".join(f'"{v}"' for v in values)

    def convert(self, t: Typing, param: str, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        text = _string(t, param, value)
        if text not in self.values:
            guess = did_you_mean(text, self.values, self.aliases)
            listed = " or ".join(f'"{v}"' for v in self.values)
            t.fail(param, f"{param} must be {listed}, not {text!r}",
                   hint=f"did you mean \"{guess}\"?" if guess else None)
        return text


class Flag(Static):
    """A yes/no switch (`exact=true`): `true`/`false` — the language's names for 1 and 0 — become a
    bool attribute; any other value is an error."""

    label = "Bool"

    def convert(self, t: Typing, param: str, value: Any) -> bool:
        if isinstance(value, (bool, int, float)) and value in (0, 1):
            return bool(value)
        t.fail(param, f"'{param}' must be true or false, got {_listed(value)}")


class Text(Static):
    """A string (`optional`: or none)."""

    label = "Str"

    def __init__(self, optional: bool = False):
        self.optional = optional

    def convert(self, t: Typing, param: str, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        return _string(t, param, value)


class Path(Text):
    """A file or folder path. The lowering resolves it against the folder of the file it is written
    in (SPEC §3) and confines it to `--sandbox` before the kind sees it. `hub`: an adapter input,
    which may also be a Hugging Face Hub id (SPEC §7.5), kept as its canonical `hf://…` spelling."""

    label = "Path"

    def __init__(self, optional: bool = False, *, hub: bool = False):
        super().__init__(optional)
        self.hub = hub


class Numbers(Static):
    """A constant list of numbers, one per item of the list parameter `of` (`[]`/none: all 1)."""

    label = "List[Num]"

    def __init__(self, of: str):
        self.of = of

    def convert(self, t: Typing, param: str, value: Any) -> tuple[float, ...]:
        count = len(t.items(self.of))
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
            return (1.0,) * count
        if not isinstance(value, (list, tuple)) or not all(
                (isinstance(v, (int, float)) and not isinstance(v, bool)) or is_schedule(v) for v in value):
            t.fail(param, f"'{param}' must be a list of numbers, got {_listed(value)}")
        if len(value) != count:
            t.fail(param, f"{count} items but {len(value)} weights")
        return tuple(v if is_schedule(v) else float(v) for v in value)


class Attribute(Static):
    """An attribute that only the compiler sets, checked by `test` (IR-internal operators)."""

    def __init__(self, test: Callable[[Any], bool], what: str):
        self.test = test
        self.label = what

    def convert(self, t: Typing, param: str, value: Any) -> Any:
        if not self.test(value):
            t.fail(param, f"bad {param}={value!r}: expected {self.label}")
        return value


def _listed(value: Any) -> str:
    """A constant as the user wrote it (lists come back from const_eval as Python lists)."""
    if is_schedule(value):
        from dipm_lang.ir.numbers import format_value

        return format_value(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def _number(t: Typing, param: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        t.fail(param, f"'{param}' must be a number, got {_listed(value)}")
    return value


def _string(t: Typing, param: str, value: Any) -> str:
    if not isinstance(value, str):
        t.fail(param, f"'{param}' must be a string, got {_listed(value)}")
    return value
