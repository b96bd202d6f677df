"""What each value carries of its inputs' full-weight modules and biases (SPEC §7.4): an analysis.

An adapter's `modules_to_save` tensors and trained biases are whole tensors, not updates, and the
base model is not known, so they cannot go through the update algebra. Instead, for a value and a
module name, `Carry.of(node, module)` follows the program *as written* (after simplification, before
or after fusion — the answer is the same at every optimisation level) and answers: the value carries
`Σ cᵢ·inputᵢ` of its inputs' full-weight tensors (`Carried.terms`), except for the parts it cannot
follow (`Carried.blocked`: an operator that does not combine them, and the inputs it reads).

The rules, one per operator (everything not listed blocks):
- `load`: the input itself, coefficient 1;
- `+ − k* /`, unary minus, the fused `lincomb`, `cat` (arithmetic after lowering), `linear` (its
  weights) and so `task_arithmetic` and `negate`: linear in their update operands;
- `select` keeps the operand's for matching modules and carries nothing elsewhere; `replace` takes
  `y`'s for matching modules and `x`'s elsewhere;
- `recombine(d, m)` (and the fused `unit_scale`, whose sign is its direction's): the *magnitudes'*
  owner's, unchanged. A magnitude `mag(x)` is owned by what `x` carries; scaling a magnitude by a
  number (`strength * mag(bad)`) keeps its owner; `mean(ms, w)` owns `Σ wᵢ/Σw ·` theirs; other
  arithmetic on magnitudes keeps an owner only when both sides have the same one. So `transfer(src,
  …)`, `detox(h, …)` and `unlearn(bad, …)` keep their first argument's, and `multitask(xs, w)` combines
  them with `w/Σw` — recognised from the structure the standard library inlines, not from names, so a
  recipe written out by hand means the same;
- `keep_full(x, src)` carries `src`'s, `drop_full(x)` none — the explicit choices;
- directions (`dir`, `shift`, …), factors, merges that prune or truncate (`ties`, `dare_*`, `svd`,
  `lowrank` …) and any operator added later block: their result is not `Σ cᵢ·inputᵢ`.

A number is read per module (a schedule's value there); a number the analysis cannot evaluate
blocks. What the run does with the answer — refuse, combine, check shapes — is `run/full_weights.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dipm_lang.ir.modules import module_matches
from dipm_lang.ir.node import Node, walk
from dipm_lang.ir.numbers import NotConstant, const_eval
from dipm_lang.ir.schedules import LayerError, value_at

LINEAR = ("add", "sub", "neg", "mul", "div")


@dataclass(frozen=True)
class Blocked:
    """A part of a value the analysis cannot follow: the operator, and the inputs (loads) it reads.
    `key` identifies it structurally, so equal parts written twice are one part (and cancel)."""

    node: Node
    loads: frozenset[Node]
    key: int


@dataclass(frozen=True)
class Carried:
    """`Σ coefficient·input` over `terms` (load node → coefficient), plus blocked parts, also with
    coefficients (they cancel as terms do); nothing with coefficient 0 is kept."""

    terms: tuple[tuple[Node, float], ...] = ()
    blocked: tuple[tuple[Blocked, float], ...] = ()

    def scaled(self, k: float) -> "Carried":
        if k == 0.0:  # a zero scaling carries nothing (as fusion drops a term with coefficient 0)
            return NOTHING
        return Carried(tuple((load, c * k) for load, c in self.terms), tuple((b, c * k) for b, c in self.blocked))

    @staticmethod
    def sum(parts: list["Carried"]) -> "Carried":
        """Terms of one input (by path: two loads of one folder are one input) and equal blocked parts add up."""
        coeffs: dict[object, list] = {}
        blocked: dict[int, list] = {}
        for part in parts:
            for load, c in part.terms:
                coeffs.setdefault(load.attr("path"), [load, 0.0])[1] += c
            for b, c in part.blocked:
                blocked.setdefault(b.key, [b, 0.0])[1] += c
        return Carried(tuple((load, c) for load, c in coeffs.values() if c != 0.0),
                       tuple((b, c) for b, c in blocked.values() if c != 0.0))

    def key(self) -> tuple:
        """For comparing two owners of magnitudes."""
        merged = Carried.sum([self])
        return (tuple(sorted((str(load.attr("path")), c) for load, c in merged.terms)),
                tuple(sorted((b.key, c) for b, c in merged.blocked)))


NOTHING = Carried()


@dataclass
class Carry:
    """The analysis over one program; answers are cached per (node, module)."""

    layers: int = 1  # L for ramps without `layers=` (SPEC §7.2)
    _memo: dict[tuple[int, str], Carried] = field(default_factory=dict)
    _blocked: dict[int, Blocked] = field(default_factory=dict)
    _canon: dict[int, int] = field(default_factory=dict)      # node id -> structural id
    _table: dict[tuple, int] = field(default_factory=dict)    # (op, attrs, type, operand ids) -> structural id

    def of(self, node: Node, module: str) -> Carried:
        """What `node`'s value carries for `module` (a module of a full-weight tensor)."""
        for n in walk([node]):  # operands first: no deep recursion on long chains
            key = (id(n), module)
            if key not in self._memo:
                self._memo[key] = self._rule(n, module)
        return self._memo[(id(node), module)]

    # ---- the rules --------------------------------------------------------------------------

    def _rule(self, node: Node, module: str) -> Carried:
        op, args = node.op, node.args
        get = lambda n: self._memo[(id(n), module)]  # noqa: E731 - operands are done (walk order)
        if op == "load":
            return Carried(((node, 1.0),))
        if node.type.kind == "Mag":
            return self._magnitude(node, module, get)
        if not node.type.is_update:
            return NOTHING  # numbers, strings, lists: carry nothing of their own
        if op in LINEAR:
            return self._linear(node, module, get)
        if op in ("lincomb", "linear"):  # Σ kᵢ·xᵢ: the fused form, and PEFT's linear by its weights
            items, weights = (args, node.attr("coeffs")) if op == "lincomb" else (args[0].args, node.attr("weights"))
            ks = [self._number_value(weight, module) for weight in weights]
            if any(k is None for k in ks):
                return self._block(node)
            return Carried.sum([get(item).scaled(k) for item, k in zip(items, ks)])  # type: ignore[arg-type]
        if op == "select":
            return get(args[0]) if self._matches(node, module) else NOTHING
        if op == "replace":
            return get(args[1]) if self._matches(node, module) else get(args[0])
        if op == "recombine":
            return get(args[1])
        if op == "unit_scale" and len(args) == 2:
            # coeff · m ⊙ (±dir(x) or d): fusion folds only positive scalings into coeff, so its sign
            # is the direction's (a reverse), which carries nothing; the scaling is |coeff|
            k = self._number_value(node.attr("coeff"), module)
            return self._block(node) if k is None else get(args[1]).scaled(abs(k))
        if op == "keep_full":
            return get(args[1])
        if op == "drop_full":
            return NOTHING
        return self._block(node)

    def _linear(self, node: Node, module: str, get) -> Carried:
        op, args = node.op, node.args
        if op == "add":
            return Carried.sum([get(args[0]), get(args[1])])
        if op == "sub":
            return Carried.sum([get(args[0]), get(args[1]).scaled(-1.0)])
        if op == "neg":
            return get(args[0]).scaled(-1.0)
        if op == "mul":
            number, value = args if args[0].type.is_number else args[::-1]
            k = self._number(number, module)
            return self._block(node) if k is None else get(value).scaled(k)
        k = self._number(args[1], module)  # div: x / k
        return self._block(node) if k is None or k == 0.0 else get(args[0]).scaled(1.0 / k)

    def _magnitude(self, node: Node, module: str, get) -> Carried:
        """The owner of magnitudes: unchanged by numbers, averaged by `mean`."""
        op, args = node.op, node.args
        if op == "mag":
            return get(args[0])
        if op == "mean":
            mags, weights = args[0].args, (args[1].args if len(args) > 1 else ())
            values = [self._number(w, module) for w in weights] if weights else [1.0] * len(mags)
            if any(v is None for v in values) or sum(values) == 0.0:  # type: ignore[arg-type]
                return self._block(node)
            total = sum(values)  # type: ignore[arg-type]
            return Carried.sum([get(m).scaled(v / total) for m, v in zip(mags, values)])  # type: ignore[operator]
        owners = [get(arg) for arg in args if arg.type.kind == "Mag"]
        if op in ("add", "sub", "mul", "div", "neg", "max", "min", "abs") and owners:
            if all(owner.key() == owners[0].key() for owner in owners):
                return owners[0]
        return self._block(node)

    # ---- helpers ----------------------------------------------------------------------------

    def _block(self, node: Node) -> Carried:
        if id(node) not in self._blocked:
            loads = frozenset(n for n in walk([node]) if n.op == "load")
            self._blocked[id(node)] = Blocked(node, loads, self._structural(node))
        return Carried((), ((self._blocked[id(node)], 1.0),))

    def _structural(self, node: Node) -> int:
        """An id equal for equal computations, whether or not CSE has merged them (as at -O0)."""
        for n in walk([node]):
            if id(n) not in self._canon:
                key = (n.op, repr(n.attrs), n.type, tuple(self._canon[id(a)] for a in n.args))
                self._canon[id(n)] = self._table.setdefault(key, len(self._table))
        return self._canon[id(node)]

    def _number(self, node: Node, module: str) -> float | None:
        try:
            value = const_eval(node)
        except NotConstant:
            return None
        return self._number_value(value, module)

    def _number_value(self, value, module: str) -> float | None:
        try:
            return value_at(value, module, self.layers)
        except (LayerError, ZeroDivisionError, TypeError, ValueError):
            return None

    @staticmethod
    def _matches(node: Node, module: str) -> bool:
        return module_matches(module, node.attr("pattern"), node.attr("layers"))
