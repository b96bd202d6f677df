"""An operator, declared once: signature, typing rule, kernels, rewrite rules and documentation.

Every operator of the language (and the few the compiler makes, such as the fused `lincomb`)
is one `Operator` value in a family module of `dipm_lang/ops/`, and `ops/__init__.py` lists the
families in one visible table. Each layer reads only the fields it needs:

- the lowering: `params`, the typing rule (`precheck`, the parameters' kinds, `check`, `returns`),
  `maps_over_lists`, `expand` (sugar such as `cat`), `doc`;
- the IR verifier: the same typing rule, on the node's operands and attributes;
- `simplify` and `fuse`: the `simplify` and `fuse` rule tables;
- the executor: `factored` (LowRank kernels) and `dense` (the float64 reference).

A kernel is `kernel(ctx, node, *operand_values)`; static parameters are `node.attr(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NoReturn, Sequence

from dipm_lang.ir.signature import Kind, Param, Typing
from dipm_lang.ir.types import Type

if TYPE_CHECKING:
    from dipm_lang.ir.node import Node
    from dipm_lang.ir.patterns import Rule

Kernel = Callable[..., Any]
TypeRule = Callable[[Typing], Type]


class IRTypeError(Exception):
    """An IR node whose operands or attributes break its operator's contract (a compiler bug)."""


@dataclass(frozen=True)
class Operator:
    name: str
    params: tuple[Param, ...]
    returns: Type | Kind | TypeRule
    doc: str
    factored: Kernel | None = None
    dense: Kernel | None = None          # None: the factored kernel serves both (plain numbers, magnitudes)
    simplify: tuple["Rule", ...] = ()    # algebraic rewrites on this operator's nodes
    fuse: tuple["Rule", ...] = ()        # rewrites of the fusion pass that produce this operator
    precheck: Callable[[Typing], None] | None = None  # before the parameters' kinds: friendlier messages
    check: Callable[[Typing], None] | None = None     # after them: rules that relate parameters
    maps_over_lists: bool = False        # dir([a, b]) is [dir(a), dir(b)]
    callable: bool = True                # False: made by the compiler (infix arithmetic, fusion), not by name
    expand: Callable[["Builder"], "Node"] | None = None  # sugar: lowered into other operators
    alias_of: str | None = None          # the same operator under another name (normalize = dir)
    returns_label: str | None = None     # the result as signatures show it, when `returns` is a function
    error_label: str | None = None       # prefix of its type errors; default "name" for callable operators
    batch_key: Callable[["Node", str], Any] | None = None  # (node, module) -> what a batch's modules share
    unevaluated: tuple[str, ...] = ()    # operands no kernel reads, only the plan (keep_full's source):
                                         # the executor never computes them for this operator

    @property
    def label(self) -> str:
        if self.error_label is not None:
            return self.error_label
        return self.name if self.callable else ""

    @property
    def operand_params(self) -> list[Param]:
        return [p for p in self.params if not p.static]

    @property
    def static_params(self) -> list[Param]:
        return [p for p in self.params if p.static]

    @property
    def call_params(self) -> list[Param]:
        """The parameters a call may give (positionally or by keyword)."""
        return [p for p in self.params if not p.internal]

    @property
    def signature(self) -> str:
        if self.returns_label is not None:
            result = self.returns_label
        elif isinstance(self.returns, (Type, Kind)):
            result = str(self.returns) if isinstance(self.returns, Type) else self.returns.label
        else:
            result = "?"
        return f"{self.name}({', '.join(p.text() for p in self.call_params)}) -> {result}"

    def infer(self, t: Typing) -> Type:
        """The one typing rule: checks every parameter, converts static values into `t.attrs`, and
        returns the result type (or fails through `t`)."""
        if self.precheck is not None:
            self.precheck(t)
        for param in self.params:
            if param.static:
                t.attrs[param.name] = param.kind.convert(t, param.name, t.values.get(param.name))
            else:
                param.kind.check(t, param.name)
        if self.check is not None:
            self.check(t)
        if isinstance(self.returns, Type):
            return self.returns
        if isinstance(self.returns, Kind):
            return self.returns.result(t)
        return self.returns(t)

    def bind_operands(self, args: Sequence["Node"]) -> dict[str, Any]:
        """Operand parameter name → node (a variadic parameter → the list of the remaining nodes)."""
        out: dict[str, Any] = {}
        params = self.operand_params
        for i, param in enumerate(params):
            if param.variadic:
                out[param.name] = list(args[i:])
                return out
            if i >= len(args):
                raise IRTypeError(f"{self.name} takes {len(params)} operands, got {len(args)}")
            out[param.name] = args[i]
        if len(args) != len(params):
            raise IRTypeError(f"{self.name} takes {len(params)} operands, got {len(args)}")
        return out

    def evaluated(self, args: Sequence["Node"]) -> list[bool]:
        """Per operand position, whether a kernel reads it (False for the `unevaluated` parameters)."""
        if not self.unevaluated:
            return [True] * len(args)
        names = [p.name for p in self.operand_params]
        return [i >= len(names) or names[i] not in self.unevaluated for i in range(len(args))]

    def type_of_node(self, args: Sequence["Node"], attrs: Mapping[str, Any]) -> tuple[Type, dict[str, Any]]:
        """The verifier's view: the type `op(args; attrs)` must have, and its attributes as the typing
        rule normalises them (equal to `attrs` for a well-formed node). Raises IRTypeError."""
        def fail(param: str | None, message: str, hint: str | None = None) -> NoReturn:
            raise IRTypeError(message + (f" ({param})" if param else ""))

        known = {p.name for p in self.static_params}
        unknown = set(attrs) - known
        if unknown:
            raise IRTypeError(f"{self.name}: unknown attribute(s) {sorted(unknown)}")
        t = Typing(self, self.bind_operands(args), attrs, fail, label=self.name)
        return self.infer(t), t.attrs


class Builder:
    """What an `expand` function (operator sugar) sees: the call's operands and static values by
    name, and `emit` to make typed nodes of other operators."""

    def __init__(self, typing: Typing, emit: Callable[..., "Node"], const: Callable[[Any], "Node"]):
        self.typing = typing
        self.emit = emit    # emit(op_name, *operand_nodes, **static_values) -> Node
        self.const = const  # const(number or string) -> Node


@dataclass
class OperatorTable:
    """Every operator by name, in the order its families were listed."""

    operators: dict[str, Operator] = field(default_factory=dict)

    @classmethod
    def of(cls, *families: Iterable[Operator]) -> "OperatorTable":
        table = cls()
        for family in families:
            for op in family:
                if op.name in table.operators:
                    raise ValueError(f"operator {op.name!r} is declared twice")
                table.operators[op.name] = op
        for op in table.operators.values():
            for rule in op.simplify:
                if rule.ops != (op.name,):
                    raise ValueError(f"{op.name}'s simplify rule {rule.name!r} must match {op.name} nodes")
            if op.alias_of is not None and op.alias_of not in table.operators:
                raise ValueError(f"{op.name} is an alias of the undeclared {op.alias_of!r}")
        return table

    def __getitem__(self, name: str) -> Operator:
        return self.operators[name]

    def __contains__(self, name: object) -> bool:
        return name in self.operators

    def __iter__(self) -> Iterator[Operator]:
        return iter(self.operators.values())

    def get(self, name: str) -> Operator | None:
        return self.operators.get(name)

    def callables(self) -> dict[str, Operator]:
        """The operators a script may call by name."""
        return {name: op for name, op in self.operators.items() if op.callable}

    def kernel(self, name: str, dense: bool) -> Kernel | None:
        op = self.operators[name]
        return (op.dense or op.factored) if dense else op.factored

    def simplify_rules(self) -> list["Rule"]:
        return [rule for op in self for rule in op.simplify]

    def fuse_rules(self) -> list["Rule"]:
        return [rule for op in self for rule in op.fuse]
