"""Random well-typed dipm programs, generated from the operator declarations (`dipm_lang.ops.OPERATORS`).

One generator serves every property test (print/parse round trip, pass contracts, numeric
equivalence of the backends, exception parity). It is driven by the declarations, so an operator
added later is generated without touching this file:

1. **Signatures by probing.** For every operator that a script can write (callable ones, the infix
   `+ - * /`, unary minus and `x.A`/`x.B`), each parameter kind offers a few candidate operand types
   (`Update` → Delta, `DirOf("b")` → Dir[out|in|matrix], `MagOrNumber` → Mag[…] or Num, …) and
   static values (`By` → each granularity, …). The operator's own typing rule (`Operator.infer`) runs
   on stand-in IR nodes of those types; every combination it accepts is a *signature*: result type
   ← operand types. So the typing rules decide what is well typed, never a copy of them here.
2. **Top-down drawing.** To draw an expression of type T, pick a leaf of type T (an input, a
   bound name, a literal) or an operator with a signature producing T, and draw its arguments by
   their parameters' kinds: operands recursively by their signature's types, static ones from the
   kind (`Int(minimum)`, `Real(low, high)`, `Choice(values)`, `Numbers(of)`, `Pattern`, `Layers`…),
   written positionally or by keyword, defaults sometimes left out. Half of the saves and
   bindings start with an operator drawn evenly among all of them (`focused`), so deep or rare
   operators are exercised as often as common ones.

What the generic walk cannot know gets a small explicit strategy (typing that depends on values,
not on types):
- `load`, `save`: inputs are bound names; saves are statements with distinct folders.
- `x.A` / `x.B` (`factor`): `x` must be an adapter (a load) — or `lora(…)` outside numeric mode —
  (SPEC §7.3), and the factor inherits its adapter's ranks.
- `lora(B, A)` and factor arithmetic (`x.B + y.B`): factors of equal rank, so both sides come from
  one *rank class* of inputs (adapters whose ranks agree in every module they share).
- `align(x, xs)`: x an input and xs distinct inputs holding it (the typing rule reads the values).
- `UpdateList(adapters=…)` (the factor merges `linear`, `ties`, `dare_*`, `magnitude_prune`):
  loads of one rank class; a delta merge (`svd`, `*_svd`) whose `check` refuses computed items
  for the drawn static values (rank omitted) gets loads too — found by probing its typing rule.
- Merges that elect signs (`ties`, `dare_ties`, `*_ties_svd`) in numeric mode get loads too: where
  computed operands cancel exactly, rounding noise would elect the signs (`elects_signs`).
- `iso` (`FLAT`) in numeric mode is never truncated: not drawn under an operator that keeps top
  singular vectors (a static `rank` or `k`), and a save whose value may hold it (directly, or through
  a binding or the def) gets no `rank=`/`energy=`/`max_rank=`.
- Statics that the typing rule needs after all (knots' `density` with method="ties") are given
  when leaving them out is refused (probed with stand-ins).
- `/`: the divisor is a nonzero literal (dividing by a zero number is a compile-time error); in
  numeric mode a magnitude divisor is `max(m, 0.5)`, so no unit divides by zero.
- `Weights` (`mix`, `mean`): positive literals, so a mean never divides by a zero sum.
- Schedules (`ramp`, `where`, `lbw`, `strengths`) stand wherever a number does; a schedule divisor is a ramp of
  nonzero points, and in numeric mode a ramp's `layers=` is left out or at least `INPUT_LAYERS`.
- The standard library's defs (`STDLIB`, checked against stdlib/*.dipm by a test) and one `def` of
  the script itself (`blend`): defs are not operators, their parameter types are listed here.
- Base weights (SPEC §7.8): every script binds `w0 = base("base")` (numeric programs run with a base
  model folder there), the leaf of `Weight` expressions; weight-level values are drawn wherever an
  operator's kind takes them (`Update(weights=True)`, directions of weights); `bake(x, "baked/N")`
  statements sit beside the saves; `extract("tuned", rank=…)` is an update leaf (a fine-tune folder
  beside the base). Numeric programs bake weight-level values rather than save them (a DoRA save
  fails where a row of the weight is 0·W0 + K, which only the numbers tell) and never draw
  `by="in"` on a weight (the planner refuses it).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from dipm_lang.frontend.ast import (Attr, BinOp, Binding, Call, Def, ExprStmt, Keyword, ListExpr, Name, Neg, Number,
                                    Param, Script, String)
from dipm_lang.ir import signature as S
from dipm_lang.ir.node import Node
from dipm_lang.ir.operator import Operator, OperatorTable
from dipm_lang.ir.types import (BY_VALUES, DELTA, NUM, SCHEDULE, WEIGHT, WEIGHT_SPACE, Type, dir_t, factor_t, list_t,
                                mag_t)
from dipm_lang.ops import OPERATORS
from dipm_lang.ir.blocks import PRESETS
from dipm_lang.ops.schedules import BlockWeights, NumberOrSchedule, Values
from dipm_lang.ops.selection import Layers, Pattern

# ---- what a script can write ----------------------------------------------------------------

INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
WRITTEN_NONCALLABLE = {*INFIX, "neg", "factor"}
"""Operators that are not called by name but have syntax: `a + b`, `-x`, `x.A`. The other
non-callable ones (`const`, `list`: literals; `lincomb`, `unit_scale`: made by fusion) are never
written as operators."""

EXPLICIT = ("load", "save", "factor", "lora", "align", "base", "bake", "extract")
"""Operators drawn by the explicit strategies below instead of the generic walk."""
UNPROBED = ("load", "save", "base", "bake", "extract")
"""Explicit operators whose signatures are not probed (they take paths, which only they draw)."""

IMAGE_MODEL_ONLY = ("lbw",)
"""Operators whose programs run only on LoRAs of image models (block weights need a model family): the
numeric tests' adapters are language-model ones, so numeric programs leave them out (tests/test_lora_files.py
runs them)."""


SPACES = (None, "A", "B")
"""Whose units a Dir or Mag holds: an update's, or a factor's (SPEC §7.3)."""
DIRS = tuple(dir_t(b, of) for of in SPACES for b in BY_VALUES)
MAGS = tuple(mag_t(b, of) for of in SPACES for b in BY_VALUES)
WEIGHT_DIRS: tuple[Type, ...] = tuple(dir_t(b, space=WEIGHT_SPACE) for b in BY_VALUES)
BASE_TYPES: tuple[Type, ...] = (DELTA, *DIRS, *MAGS, NUM, SCHEDULE, factor_t("A"), factor_t("B"), WEIGHT,
                                *WEIGHT_DIRS)
BASE_NAME = "w0"  # every script binds w0 = base("base")

FLAT = frozenset({"iso"})
"""Operators whose result has equal singular values (Iso-C's σ̄·U Vᵀ): truncating it keeps an arbitrary
subspace of them, which no two backends choose alike."""

INPUT_LAYERS = 8
"""At least the layer count of the numeric tests' adapters: a ramp's `layers=` there is never smaller."""

LITERALS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 0.001, 1.5, 10.0)
NONZERO = (0.5, 2.0, 4.0, 3.0, 0.25)
WEIGHTS = (0.5, 1.0, 2.0, 0.25)
SIGNED_WEIGHTS = (1.0, 0.5, 2.0, -0.5, -1.0)
PATTERNS = ("q_proj", "v_proj|o", "mlp", r"layers\.1\.", "self_attn")


def pick(draw, items) -> Any:
    """One of `items`, drawn by index (shrinks toward the first; never reprs the items)."""
    items = list(items)
    return items[draw(st.integers(0, len(items) - 1))]



def elects_signs(op: Operator) -> bool:
    """TIES' sign election (`majority_sign_method`) is discontinuous where the sources' entries cancel:
    computed operands can cancel exactly (`detox(G, H)` and `detox(G, H, t=2, by="in")` are negatives),
    and then rounding noise elects the signs, differently in every backend. Numeric programs give such
    merges loaded adapters, whose entries never cancel."""
    return any(p.name == "majority_sign_method" for p in op.params)


class GeneratorGap(Exception):
    """A parameter kind the generator has no strategy for: extend `_operand_options`/`_static`."""


# ---- signatures, by probing each operator's typing rule ------------------------------------------

@dataclass(frozen=True)
class Signature:
    """One way an operator is well typed: the result type from these operand types (by parameter
    name; a list parameter's type is `List[item]`) and these static values (the bound `by`s)."""

    op: Operator
    result: Type
    operands: tuple[tuple[str, Type], ...]
    statics: tuple[tuple[str, Any], ...]

    def operand(self, name: str) -> Type:
        return dict(self.operands)[name]

    def static(self, name: str) -> Any:
        return dict(self.statics)[name]


def _operand_options(kind: S.Kind) -> list[Type]:
    if isinstance(kind, S.Update):
        # a Dir stands wherever a Delta does (the drawing may give one); a weight where the kind takes one
        return [DELTA, WEIGHT] if kind.weights else [DELTA]
    if isinstance(kind, S.Decouplable):
        return [DELTA, factor_t("A"), factor_t("B"), WEIGHT]
    if isinstance(kind, S.Anything):
        return list(BASE_TYPES)
    if isinstance(kind, S.DirOf):
        return [*DIRS, *WEIGHT_DIRS]
    if isinstance(kind, S.MagOf):
        return list(MAGS)
    if isinstance(kind, S.MagOrNumber):
        return [*MAGS, NUM]
    if isinstance(kind, S.Number):
        return [NUM, SCHEDULE]  # a schedule (ramp, where) stands wherever a number does
    if isinstance(kind, S.FactorOf):
        return [factor_t(kind.which)]
    if isinstance(kind, S.ListOf):
        return [list_t(t) for t in _operand_options(kind.item)]
    if isinstance(kind, S.Weights):
        return [list_t(NUM)]
    if isinstance(kind, S.UpdateList):
        return [list_t(DELTA)]
    raise GeneratorGap(f"no operand strategy for the parameter kind {type(kind).__name__}")


def _static_options(kind: S.Kind) -> list[Any]:
    """Representative values for probing (the drawing draws others from `_static`)."""
    if isinstance(kind, S.By):
        return list(BY_VALUES)
    if isinstance(kind, S.Int):
        return [None] if kind.optional else [int(kind.minimum or 0)]
    if isinstance(kind, S.Real):
        return [kind.high if kind.high is not None else 1.0]
    if isinstance(kind, S.Choice):
        return list(kind.values)
    if isinstance(kind, S.Flag):
        return [False, True]
    if isinstance(kind, S.Text):  # Path too
        return [None] if kind.optional else ["x"]
    if isinstance(kind, (S.Numbers, Pattern, Layers)):
        return [None]
    if isinstance(kind, Values):
        return [(0.0, 1.0)]
    if isinstance(kind, NumberOrSchedule):
        return [1.0]
    if isinstance(kind, BlockWeights):
        return ["ALL"]
    raise GeneratorGap(f"no static strategy for the parameter kind {type(kind).__name__}")


def stand_in(type_: Type, *, adapter: bool = True, items: int = 1) -> Node:
    """An IR node of `type_` for a typing rule to look at (a load for a Delta, unless `adapter` is off)."""
    if type_.kind == "List":
        inner = [stand_in(type_.item, adapter=adapter) for _ in range(items)]
        return Node.make("list", inner, {}, type_, unique=True)
    if type_ == NUM:
        return Node.make("const", (), {"value": 1.0}, NUM, unique=True)
    op = "load" if type_ == DELTA and adapter else "base" if type_ == WEIGHT else "stand_in"
    return Node.make(op, (), {}, type_, unique=True)


class _Refused(Exception):
    pass


def _refuse(param, message, hint=None):
    raise _Refused(message)


def typing_accepts(op: Operator, operands: dict[str, Node], statics: dict[str, Any]) -> Type | None:
    """The result type the operator's own typing rule gives these operands, or None if it refuses."""
    try:
        return op.infer(S.Typing(op, operands, statics, _refuse))
    except _Refused:
        return None


def probe(op: Operator) -> list[Signature]:
    """Every combination of candidate operand types and static values that `op` accepts."""
    params = [p for p in op.params if not p.internal]
    options = [_static_options(p.kind) if p.static else _operand_options(p.kind) for p in params]
    found = []
    for combo in itertools.product(*options):
        operands = {p.name: stand_in(v) for p, v in zip(params, combo) if not p.static}
        if op.name == "align":  # a value rule: x must be one of the adapters xs
            operands["xs"] = Node.make("list", (operands["x"], stand_in(DELTA)), {}, list_t(DELTA), unique=True)
        statics = {p.name: v for p, v in zip(params, combo) if p.static}
        result = typing_accepts(op, operands, statics)
        if result is not None:
            found.append(Signature(op, result, tuple((p.name, v) for p, v in zip(params, combo) if not p.static),
                                   tuple(statics.items())))
    return found


def written_operators(table: OperatorTable) -> list[Operator]:
    """The operators a script can write (by name or by syntax)."""
    return [op for op in table if op.callable or op.name in WRITTEN_NONCALLABLE]


# ---- inputs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """The adapters a program loads, grouped into rank classes: adapters whose LoRA ranks agree in
    every module they share (factor merges, `lora` and factor sums need equal ranks)."""

    classes: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for c in self.classes for n in c)


SYNTAX_INPUTS = Inputs((("h", "g", "bad"),))  # nothing is read: every combination types


# ---- the standard library and the script's own def ---------------------------------------------

U, U_LIST, W, BY, ADAPTER = "update", "updates", "weights", "by", "adapter"
STDLIB: dict[str, tuple[tuple[str, str], ...]] = {
    "transfer": (("src", U), ("tgt", U), ("t", "num"), ("by", BY)),
    "detox": (("h", U), ("bad", U), ("t", "num"), ("by", BY)),
    "unlearn": (("bad", U), ("strength", "num"), ("by", BY)),
    "multitask": (("xs", U_LIST), ("weights", W), ("by", BY)),
    "task_arithmetic": (("h", U), ("other", U), ("lam", "num")),
    "negate": (("h", U), ("bad", U), ("lam", "num")),
    "transfer_b": (("src", ADAPTER), ("tgt", ADAPTER), ("t", "num"), ("by", BY)),
    "detox_b": (("h", ADAPTER), ("bad", ADAPTER), ("t", "num"), ("by", BY)),
    "transfer_aligned": (("src", ADAPTER), ("tgt", ADAPTER), ("t", "num"), ("by", BY)),
    "detox_aligned": (("h", ADAPTER), ("bad", ADAPTER), ("t", "num"), ("by", BY)),
}
"""The standard library's defs (all return a Delta) and their parameters' kinds; a test checks
the names against stdlib/*.dipm, so a new def there fails until it is listed here. `ADAPTER`: an
input (the B-side recipes read `x.A`/`x.B`), all of one call's from one rank class."""



# ---- drawing --------------------------------------------------------------------------------------

@dataclass
class Scope:
    """The names an expression may read: by type (inputs and bindings), and numbers (def params)."""

    names: dict[Type, list[str]] = field(default_factory=dict)
    updates: list[str] = field(default_factory=list)  # updates of unknown kind: a def's parameters

    def of(self, type_: Type) -> list[str]:
        return self.names.get(type_, [])

    def add(self, name: str, type_: Type | None) -> None:
        """Bind `name` to a value of `type_` (None: an update, Delta or Dir, whichever a def call gives)."""
        if type_ is None:
            self.updates.append(name)
        else:
            self.names.setdefault(type_, []).append(name)


def number_literal(value: float):
    """A literal; negative values as unary minus (the parser never makes a negative Number)."""
    return Neg(Number(-value)) if value < 0 else Number(value)


def _write_call(draw, func: str, params: list[tuple[str, Any, Any]]) -> Call:
    """`func(...)` with `params` = (name, AST or None to leave out, default-or-REQUIRED), in order:
    a positional prefix, then keywords; an argument equal to its default is sometimes left out."""
    given = [(name, expr) for name, expr, _ in params if expr is not None]
    # positional while no earlier parameter was left out
    limit = 0
    for name, expr, _ in params:
        if expr is None:
            break
        limit += 1
    positional = draw(st.integers(0, limit))
    args = tuple(expr for _, expr in given[:positional])
    kwargs = tuple(Keyword(name, expr) for name, expr in given[positional:])
    return Call(func, args, kwargs)


def _leaves_dora_form(sig: Signature) -> bool:
    """by="in" on a weight-level value: column units of diag(c)·W0 + K, which the planner refuses
    (SPEC §7.8); numeric programs, which must run, never draw it."""
    types = [sig.result, *(t for _, t in sig.operands)]
    types += [t.item for t in types if t.kind == "List" and t.item is not None]
    by_in = any(v == "in" for _, v in sig.statics) or any(t.by == "in" for t in types)
    return by_in and any(t.is_weight for t in types)


class Generator:
    """Typed expressions and whole scripts, from an operator table.

    `numeric`: programs that must run on real adapters without a run-time error (the numeric
    equivalence tests); otherwise anything well typed (front end and passes).
    """

    def __init__(self, operators: OperatorTable = OPERATORS, inputs: Inputs = SYNTAX_INPUTS, *,
                 numeric: bool = False, stdlib: bool = True):
        self.operators = operators
        self.inputs = inputs
        self.numeric = numeric
        self.stdlib = stdlib
        self.signatures: dict[Type, list[Signature]] = {}
        for op in written_operators(operators):
            if op.name in UNPROBED or (numeric and op.name in IMAGE_MODEL_ONLY):
                continue
            sigs = probe(op)
            if not sigs:
                raise GeneratorGap(f"{op.name}: no combination of candidate operand types is well typed")
            for sig in sigs:
                if not (numeric and _leaves_dora_form(sig)):
                    self.signatures.setdefault(sig.result, []).append(sig)
        self.cost = self._costs()
        self._adapters_needed: dict[tuple, bool] = {}
        self.excluded: frozenset[str] = frozenset()

    @contextmanager
    def without(self, names: frozenset[str]):
        """Draw nothing from the operators `names` (numeric mode only) inside the block."""
        before = self.excluded
        self.excluded = before | names if self.numeric else before
        try:
            yield
        finally:
            self.excluded = before

    def truncates(self, op: Operator) -> bool:
        return any(p.name in ("rank", "k") for p in op.static_params)

    # ---- costs: how deep a type's cheapest expression is -------------------------------------

    def _costs(self) -> dict[Type, int]:
        cost: dict[Type, int] = {DELTA: 0, NUM: 0, WEIGHT: 0}  # leaves: inputs, literals, the base
        for _ in range(10):
            for result, sigs in self.signatures.items():
                for sig in sigs:
                    needs = [cost.get(t.item if t.kind == "List" else t) for _, t in sig.operands]
                    if all(n is not None for n in needs):
                        c = 1 + max(needs, default=0)
                        if c < cost.get(result, 1 << 30):
                            cost[result] = c
        return cost

    def _cheap(self, sigs: list[Signature]) -> list[Signature]:
        def c(sig):
            return max((self.cost.get(t.item if t.kind == "List" else t, 99) for _, t in sig.operands), default=0)
        best = min(c(s) for s in sigs)
        return [s for s in sigs if c(s) == best]

    # ---- expressions ---------------------------------------------------------------------------

    def expr(self, draw, want: Type, depth: int, scope: Scope, *, exact: bool = False,
             rank_class: tuple[str, ...] | None = None) -> tuple[Any, Type]:
        """An expression of type `want` (a Delta `want` also takes a Dir unless `exact`), and its type
        (None for a name bound to an update of unknown kind)."""
        wants = [want]
        if want == DELTA and not exact:
            wants += [dir_t(b) for b in BY_VALUES]
        if want == WEIGHT and not exact:
            wants += [t for t in WEIGHT_DIRS if not (self.numeric and t.by == "in")]
        if want.kind == "Factor" and not exact:  # a direction of a factor stands for it (SPEC §7.3)
            wants += [dir_t(b, want.by) for b in BY_VALUES]
        leaves = [(name, t) for t in wants for name in scope.of(t)]
        if want == DELTA:
            leaves += [(name, DELTA) for name in self.inputs.names]
            if not exact:
                leaves += [(name, None) for name in scope.updates]  # a Delta or a Dir
            if draw(st.integers(0, 11)) == 0:
                return self.extract(draw), DELTA
        if want == WEIGHT:
            leaves += [(BASE_NAME, WEIGHT)]
        if want == NUM:
            leaves += [(v, NUM) for v in LITERALS]
        sigs = [s for t in wants for s in self.signatures.get(t, []) if s.op.name not in self.excluded]
        if rank_class is None and want.factor is not None:  # factors and their Dir/Mag: one rank class
            rank_class = pick(draw, self.inputs.classes)
        if leaves and (depth <= 0 or not sigs or draw(st.integers(0, 3)) == 0):
            leaf, type_ = pick(draw, leaves)
            return (number_literal(leaf) if isinstance(leaf, float) else Name(leaf)), type_
        if self.stdlib and want == DELTA and draw(st.integers(0, 5)) == 0:
            return self.stdlib_call(draw, depth, scope), DELTA
        if depth <= 0:
            sigs = self._cheap(sigs)
        elif len(wants) > 1:  # an update or a factor: it or a direction, evenly (there are more makers of the first)
            kind = pick(draw, sorted({s.result.kind for s in sigs}))
            sigs = [s for s in sigs if s.result.kind == kind]
        # one operator uniformly among those that can give the type, then one of its signatures
        name = pick(draw, sorted({s.op.name for s in sigs}))
        sig = pick(draw, [s for s in sigs if s.op.name == name])
        return self.call(draw, sig, depth - 1, scope, rank_class), sig.result

    def update(self, draw, depth: int, scope: Scope, *, exact: bool = False):
        return self.expr(draw, DELTA, depth, scope, exact=exact)[0]

    def number(self, draw, depth: int, scope: Scope):
        return self.expr(draw, NUM, min(depth, 1), scope)[0]

    def call(self, draw, sig: Signature, depth: int, scope: Scope, rank_class) -> Any:
        op = sig.op
        if op.name == "factor":
            return self.factor(draw, sig.static("which"), depth, scope, rank_class)
        if op.name == "lora":
            return self.lora(draw, depth, scope)
        if op.name == "align":
            return self.align(draw, sig)
        if op.name in INFIX:
            a = self.operand(draw, op, "a", sig.operand("a"), depth, scope, rank_class)
            if op.name == "div":
                b = self.divisor(draw, sig.operand("b"), depth, scope, rank_class)
            else:
                b = self.operand(draw, op, "b", sig.operand("b"), depth, scope, rank_class)
            return BinOp(INFIX[op.name], a, b)
        if op.name == "neg":
            return Neg(self.operand(draw, op, "x", sig.operand("x"), depth, scope, rank_class))
        return self.generic_call(draw, sig, depth, scope, rank_class)

    def generic_call(self, draw, sig: Signature, depth: int, scope: Scope, rank_class) -> Call:
        """A call drawn by its parameters' kinds: statics first (some operands depend on them),
        then operands in order, then the static lists sized by an operand (`Numbers(of=…)`)."""
        with self.without(FLAT if self.truncates(sig.op) else frozenset()):
            return self._generic_call(draw, sig, depth, scope, rank_class)

    def _generic_call(self, draw, sig: Signature, depth: int, scope: Scope, rank_class) -> Call:
        op = sig.op
        params = op.call_params
        statics = {p.name: self.static(draw, p, sig) for p in params if p.static and not isinstance(p.kind, S.Numbers)}
        if any(v is _OMIT for v in statics.values()) and not self.accepts(sig, statics):
            # a value the others make required (knots' density with method="ties"): given after all
            statics = {name: self.static(draw, p, sig, keep=True) if v is _OMIT else v
                       for (name, v), p in zip(statics.items(), [p for p in params if p.name in statics])}
        operands: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for p in params:
            if p.static:
                continue
            if isinstance(p.kind, S.UpdateList):
                items = self.update_list(draw, op, p.kind, statics, depth, scope)
                sizes[p.name] = len(items)
                operands[p.name] = ListExpr(tuple(items))
            elif isinstance(p.kind, S.ListOf):
                operands[p.name], sizes[p.name] = self.item_list(draw, sig.operand(p.name).item, depth, scope,
                                                                 rank_class)
            elif isinstance(p.kind, S.Weights):
                operands[p.name] = self.weights(draw, sizes[p.kind.of], p)
            else:
                operands[p.name] = self.operand(draw, op, p.name, sig.operand(p.name), depth, scope, rank_class)
        for p in params:
            if isinstance(p.kind, S.Numbers):
                statics[p.name] = self.numbers(draw, sizes[p.kind.of], p)
        written = []
        for p in params:
            if p.static:
                value = statics[p.name]
                expr = None if value is _OMIT else literal(value)
            else:
                expr = operands[p.name]
            written.append((p.name, expr, p.default))
        return _write_call(draw, op.name, written)

    def operand(self, draw, op: Operator, name: str, type_: Type, depth: int, scope: Scope, rank_class) -> Any:
        if type_ == DELTA:
            return self.update(draw, depth, scope)
        if type_ == WEIGHT:
            return self.expr(draw, WEIGHT, depth, scope)[0]
        if type_ == NUM:
            return self.number(draw, depth, scope)
        return self.expr(draw, type_, depth, scope, rank_class=rank_class)[0]

    def divisor(self, draw, type_: Type, depth: int, scope: Scope, rank_class=None) -> Any:
        if type_ == NUM:
            return Number(pick(draw, NONZERO))
        if type_ == SCHEDULE:  # zero in no module
            points = ListExpr(tuple(Number(pick(draw, NONZERO)) for _ in range(draw(st.integers(1, 3)))))
            return Call("ramp", (points,), ())
        magnitude = self.expr(draw, type_, depth, scope, rank_class=rank_class)[0]
        if self.numeric:  # no unit divides by zero (a module an adapter lacks has zero magnitudes)
            return Call("max", (magnitude, Number(0.5)), ())
        return magnitude

    def item_list(self, draw, item: Type, depth: int, scope: Scope, rank_class=None) -> tuple[ListExpr | Call, int]:
        """A list of `item`s: written out, or an operator that maps over lists (`dir([a, b])`); items
        of a factor's units from one rank class."""
        count = draw(st.integers(1, 3))
        if rank_class is None and item.factor is not None:
            rank_class = pick(draw, self.inputs.classes)
        mappers = [s for s in self.signatures.get(item, []) if s.op.maps_over_lists and s.op.name not in self.excluded]
        if mappers and draw(st.integers(0, 3)) == 0:
            sig = pick(draw, mappers)
            first = sig.op.call_params[0]
            inner = ListExpr(tuple(self.expr(draw, sig.operand(first.name), depth - 1, scope, exact=True,
                                             rank_class=rank_class)[0] for _ in range(count)))
            rest = [(p.name, self.static(draw, p, sig), p.default) for p in sig.op.call_params[1:]]
            return _write_call(draw, sig.op.name, [(first.name, inner, S.REQUIRED)] + [
                (n, None if v is _OMIT else literal(v), d) for n, v, d in rest]), count
        return ListExpr(tuple(self.expr(draw, item, depth, scope, exact=True, rank_class=rank_class)[0]
                              for _ in range(count))), count

    def update_list(self, draw, op: Operator, kind: S.UpdateList, statics: dict, depth: int, scope: Scope) -> list:
        count = draw(st.integers(1, 3))
        if kind.adapters or self.needs_adapters(op, statics) or (self.numeric and elects_signs(op)):
            names = pick(draw, self.inputs.classes)
            return [Name(pick(draw, names)) for _ in range(count)]
        return [self.update(draw, depth, scope, exact=True) for _ in range(count)]

    def needs_adapters(self, op: Operator, statics: dict) -> bool:
        """Whether the typing rule refuses computed list items with these static values (a delta
        merge's default rank is the sources' LoRA rank)."""
        key = (op.name, tuple(sorted((k, str(v)) for k, v in statics.items())))
        if key not in self._adapters_needed:
            given = {k: v for k, v in statics.items() if v is not _OMIT}
            operands = {p.name: stand_in(_operand_options(p.kind)[0], adapter=False) for p in op.operand_params}
            self._adapters_needed[key] = typing_accepts(op, operands, given) is None
        return self._adapters_needed[key]

    def weights(self, draw, count: int, param: S.Param) -> Any:
        choice = draw(st.integers(0, 2))
        if choice == 0:
            return None  # left out: equal weights
        if choice == 1:
            return ListExpr(())
        return ListExpr(tuple(Number(pick(draw, WEIGHTS)) for _ in range(count)))

    def numbers(self, draw, count: int, param: S.Param) -> Any:
        if draw(st.booleans()):
            return _OMIT
        return [pick(draw, SIGNED_WEIGHTS) for _ in range(count)]

    def accepts(self, sig: Signature, statics: dict) -> bool:
        """Whether the typing rule accepts these static values (`_OMIT`: left out) with stand-ins of
        the signature's operand types."""
        operands = {name: stand_in(t) for name, t in sig.operands}
        given = {k: v for k, v in statics.items() if v is not _OMIT}
        return typing_accepts(sig.op, operands, given) is not None

    def static(self, draw, param: S.Param, sig: Signature, keep: bool = False) -> Any:
        """A static value for `param`, or `_OMIT` to leave it out (only where it has a default and
        not `keep`)."""
        kind = param.kind
        optional = param.default is not S.REQUIRED and not keep
        if isinstance(kind, S.By):
            value = sig.static(param.name)  # bound by the signature
            return _OMIT if optional and value == param.default and draw(st.booleans()) else value
        if optional and draw(st.integers(0, 2)) == 0:
            return _OMIT
        if sig.op.name == "ramp" and param.name == "layers" and self.numeric:
            return draw(st.integers(INPUT_LAYERS, INPUT_LAYERS + 3))  # a layer ≥ L is a run-time error
        if isinstance(kind, S.Int):
            low = int(kind.minimum or 0)
            return draw(st.integers(low, low + 5))
        if isinstance(kind, S.Real):
            low = 0.0 if kind.low is None else kind.low
            high = 1.0 if kind.high is None else kind.high
            values = [high, (low + high) / 2, low + (high - low) * 0.3]
            if not kind.open_low:
                values.append(low)
            return pick(draw, values)
        if isinstance(kind, S.Choice):
            return pick(draw, kind.values)
        if isinstance(kind, S.Flag):
            return pick(draw, (False, True))
        if isinstance(kind, Pattern):
            return pick(draw, PATTERNS)
        if isinstance(kind, Layers):
            low = draw(st.integers(0, 2))
            return [low, low + draw(st.integers(0, 2))]
        if isinstance(kind, Values):  # a ramp's points
            return [pick(draw, LITERALS) for _ in range(draw(st.integers(1, 4)))]
        if isinstance(kind, NumberOrSchedule):  # where's branches
            return pick(draw, LITERALS)
        if isinstance(kind, BlockWeights):  # a preset, or a vector of one of LBW's lengths
            if draw(st.booleans()):
                return pick(draw, sorted(PRESETS))
            return [pick(draw, LITERALS) for _ in range(pick(draw, (12, 17, 20, 26, 61)))]
        raise GeneratorGap(f"no static strategy for {param.name}: {type(kind).__name__}")

    # ---- the explicit strategies ------------------------------------------------------------------

    def factor(self, draw, which: str, depth: int, scope: Scope, rank_class) -> Attr:
        """`x.A` / `x.B` of an adapter of the rank class (or, outside numeric mode, of a `lora`)."""
        if not self.numeric and depth > 0 and draw(st.integers(0, 4)) == 0:
            return Attr(self.lora(draw, depth - 1, scope, rank_class), which)
        return Attr(Name(pick(draw, rank_class)), which)

    def lora(self, draw, depth: int, scope: Scope, rank_class=None) -> Call:
        """`lora(B, A)` with both factors from one rank class."""
        rank_class = rank_class or pick(draw, self.inputs.classes)
        b = self.expr(draw, factor_t("B"), min(depth, 2), scope, rank_class=rank_class)[0]
        a = self.expr(draw, factor_t("A"), min(depth, 2), scope, rank_class=rank_class)[0]
        return _write_call(draw, "lora", [("B", b, S.REQUIRED), ("A", a, S.REQUIRED)])

    def extract(self, draw) -> Call:
        """`extract("tuned", rank=N)` (or energy=…): a LoRA of the fine-tune beside the base folder."""
        by_rank = draw(st.booleans())
        rank = Number(float(draw(st.integers(1, 3)))) if by_rank else None
        energy = None if by_rank else Number(pick(draw, (0.5, 0.9, 0.99)))
        exact = literal(True) if draw(st.integers(0, 3)) == 0 else None
        params = [("tuned", String("tuned")), ("base", None), ("rank", rank), ("energy", energy),
                  ("max_rank", None), ("exact", exact)]
        return _write_call(draw, "extract", [(name, expr, S.REQUIRED) for name, expr in params])

    def align(self, draw, sig: Signature) -> Call:
        """`align(x, xs)`: x an input, xs distinct inputs (any ranks) holding it, in a drawn order."""
        names = self.inputs.names
        chosen = [pick(draw, names)]
        for _ in range(draw(st.integers(0, len(names) - 1))):
            rest = [n for n in names if n not in chosen]
            chosen.append(pick(draw, rest))
        x = chosen[0]
        xs = ListExpr(tuple(Name(n) for n in draw(st.permutations(chosen))))
        side = self.static(draw, sig.op.call_params[2], sig)
        return _write_call(draw, "align", [("x", Name(x), S.REQUIRED), ("xs", xs, S.REQUIRED),
                                           ("side", None if side is _OMIT else String(side), "A")])

    def stdlib_call(self, draw, depth: int, scope: Scope) -> Call:
        name = draw(st.sampled_from(sorted(STDLIB)))  # evenly (bounded integers lean to their ends)
        by = pick(draw, BY_VALUES)
        rank_class = pick(draw, self.inputs.classes)
        params = []
        for pname, kind in STDLIB[name]:
            if kind == ADAPTER:
                expr = Name(pick(draw, rank_class))
            elif kind == U:
                expr = self.update(draw, depth - 1, scope)
            elif kind == U_LIST:
                expr = ListExpr(tuple(self.update(draw, depth - 1, scope, exact=True)
                                      for _ in range(draw(st.integers(1, 3)))))
                count = len(expr.items)
            elif kind == W:
                expr = self.weights(draw, count, None)
            elif kind == BY:
                expr = None if by == "out" and draw(st.booleans()) else String(by)
            else:
                expr = self.number(draw, depth - 1, scope) if draw(st.booleans()) else None
            params.append((pname, expr, None if expr is None else S.REQUIRED))
        return _write_call(draw, name, params)

    # ---- scripts ------------------------------------------------------------------------------------

    def script(self, draw, *, depth: int = 3, max_bindings: int = 3, max_saves: int = 3) -> Script:
        """A def, the inputs, bindings of random types and saves to distinct folders, interleaved."""
        # the def's body reads its parameters and the inputs (bound before any call of it); its calls
        # have the body's type, or the argument's when the body is a bare parameter
        body, body_type = self.expr(draw, DELTA, depth - 1, Scope({NUM: ["k"]}, updates=["x", "y"]))
        flat = {"blend"} if self.numeric and called(body) & FLAT else set()  # names whose value may be flat
        self.blend_type = None if isinstance(body, Name) and body.id in ("x", "y") else body_type
        statements: list = [Def("blend", (Param("x", None), Param("y", None), Param("k", Number(0.5))), body)]
        statements += [Binding(name, Call("load", (String(f"adapters/{name}"),), ())) for name in self.inputs.names]
        statements.append(Binding(BASE_NAME, Call("base", (String("base"),), ())))
        scope = Scope()
        bindings = saves = 0
        while True:
            last = saves + 1 >= max_saves or draw(st.integers(0, 3)) == 0
            if not last and bindings < max_bindings and draw(st.booleans()):
                want = pick(draw, [DELTA, DELTA, NUM, WEIGHT, *(dir_t(b) for b in BY_VALUES),
                                   *(mag_t(b) for b in BY_VALUES)])
                value, type_ = self.value(draw, want, depth, scope)
                name = f"v{bindings}"
                if self.numeric and self.is_flat(value, flat):
                    flat.add(name)
                statements.append(Binding(name, value))
                scope.add(name, type_)
                bindings += 1
                continue
            value, type_ = self.value(draw, pick(draw, [DELTA, DELTA, DELTA, WEIGHT]), depth, scope)
            weight = type_ is not None and type_.is_weight
            # numeric programs bake weight-level values: saving one as a DoRA adapter fails where a row
            # of W is 0·W0 + K (`0 * w0`, `w0 - w0`), which only the value's numbers tell
            if draw(st.integers(0, 5)) == 0 or (self.numeric and weight):  # W0 + x as a model folder
                dtype = () if draw(st.booleans()) else (Keyword("dtype", String(pick(draw, ("base", "float32")))),)
                statements.append(ExprStmt(Call("bake", (value, String(f"baked/{saves}")), dtype)))
            else:
                rank = energy = max_rank = None
                if not (self.numeric and self.is_flat(value, flat)):
                    rank = draw(st.none() | st.integers(1, 16))
                    # rank by energy (SPEC §7.6): energy= instead of rank=, and max_rank= capping either (a
                    # value in DoRA's form, a weight, truncates by rank= only: SPEC §7.8)
                    energy = None if rank is not None or weight else \
                        draw(st.none() | st.sampled_from([0.5, 0.9, 0.99, 1.0]))
                    max_rank = None if weight else draw(st.none() | st.integers(1, 12))
                kwargs = tuple(Keyword(key, Number(float(number))) for key, number in
                               (("rank", rank), ("energy", energy), ("max_rank", max_rank)) if number is not None)
                statements.append(ExprStmt(Call("save", (value, String(f"out/{saves}")), kwargs)))
            saves += 1
            if last:
                return Script(tuple(statements))

    @staticmethod
    def is_flat(value: Any, flat: set[str]) -> bool:
        """Whether `value` may hold a `FLAT` result: it calls one, or reads a name (or the def) that does."""
        return bool(called(value) & (FLAT | flat) or read_names(value) & flat)

    def focused(self, draw, depth: int, scope: Scope) -> tuple[Any, Type]:
        """An update whose outermost operator is drawn uniformly among all the written ones that
        make an update, magnitudes or a factor's units (a magnitude is recombined with a direction, a
        factor rebuilt into an update by `lora`): so each one is exercised about equally often,
        however deep the random trees put it."""
        sigs = {}
        for result, found in self.signatures.items():
            if result.kind in ("Delta", "Dir", "Mag", "Factor"):
                for sig in (s for s in found if s.op.name not in self.excluded):
                    sigs.setdefault(sig.op.name, []).append(sig)
        sig = pick(draw, sigs[draw(st.sampled_from(sorted(sigs)))])  # evenly, as stdlib_call
        spaces = {t.item.factor if t.kind == "List" and t.item else t.factor for _, t in sig.operands}
        rank_class = pick(draw, self.inputs.classes) if sig.result.factor or spaces - {None} else None
        value, type_ = self.call(draw, sig, depth - 1, scope, rank_class), sig.result
        if type_.kind == "Mag":
            direction = self.expr(draw, dir_t(type_.by, type_.of), depth - 1, scope, rank_class=rank_class)[0]
            value, type_ = Call("recombine", (direction, value), ()), (DELTA if type_.of is None else factor_t(type_.of))
        if type_.is_factor:
            other = self.expr(draw, factor_t("A" if type_.factor == "B" else "B"), min(depth - 1, 2), scope,
                              rank_class=rank_class)[0]
            value, type_ = Call("lora", (value, other) if type_.factor == "B" else (other, value), ()), DELTA
        return value, type_

    def value(self, draw, want: Type, depth: int, scope: Scope) -> tuple[Any, Type | None]:
        """An expression for a binding or a save, and its type (None: an update of either kind);
        sometimes a call of the script's own def, or of an operator chosen evenly (`focused`)."""
        if want == DELTA and draw(st.booleans()):
            return self.focused(draw, depth, scope)
        if want == DELTA and draw(st.integers(0, 7)) == 0:
            args = [self.update(draw, depth - 1, scope), self.update(draw, depth - 1, scope)]
            k = self.number(draw, depth, scope) if draw(st.booleans()) else None
            return _write_call(draw, "blend", [("x", args[0], S.REQUIRED), ("y", args[1], S.REQUIRED),
                                               ("k", k, 0.5)]), self.blend_type
        return self.expr(draw, want, depth, scope)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


_OMIT: Any = _Omit()


def literal(value: Any):
    if isinstance(value, str):
        return String(value)
    if isinstance(value, (list, tuple)):
        return ListExpr(tuple(literal(v) for v in value))
    if value is None:
        raise AssertionError("none is written by leaving the argument out")
    if isinstance(value, bool):
        return Name("true" if value else "false")
    return number_literal(float(value))


# ---- strategies -------------------------------------------------------------------------------------

def scripts(generator: Generator, **kwargs) -> st.SearchStrategy[Script]:
    @st.composite
    def build(draw):
        return generator.script(draw, **kwargs)
    return build()


def expressions(generator: Generator, want: Type, depth: int = 3) -> st.SearchStrategy:
    @st.composite
    def build(draw):
        return generator.expr(draw, want, depth, Scope())[0]
    return build()


def read_names(node: Any, out: set[str] | None = None) -> set[str]:
    """Every name an expression reads."""
    out = set() if out is None else out
    if isinstance(node, Name):
        out.add(node.id)
    for value in vars(node).values() if hasattr(node, "__dataclass_fields__") else ():
        for item in value if isinstance(value, tuple) else (value,):
            if hasattr(item, "__dataclass_fields__"):
                read_names(item, out)
    return out


def called(node: Any, out: set[str] | None = None) -> set[str]:
    """Every operator a script or expression writes: called names, infix operators, `.A`/`.B`."""
    out = set() if out is None else out
    if isinstance(node, Call):
        out.add(node.func)
    elif isinstance(node, BinOp):
        out.add({v: k for k, v in INFIX.items()}[node.op])
    elif isinstance(node, Neg) and not isinstance(node.operand, Number):
        out.add("neg")
    elif isinstance(node, Attr):
        out.add("factor")
    for value in vars(node).values() if hasattr(node, "__dataclass_fields__") else ():
        for item in value if isinstance(value, tuple) else (value,):
            if hasattr(item, "__dataclass_fields__"):
                called(item, out)
    return out
