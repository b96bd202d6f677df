"""The abstract syntax tree: small frozen dataclasses, each with its source span.

Spans are excluded from equality so that a parse of printed text equals the original tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from dipm_lang.errors import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Number:
    value: float
    text: str = field(default="", compare=False)
    span: Span | None = _span()


@dataclass(frozen=True)
class String:
    value: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * /
    left: "Expr"
    right: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Attr:
    value: "Expr"
    name: str
    span: Span | None = _span()


Expr = Union[Number, String, Name, ListExpr, Call, BinOp, Neg, Attr]


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span | None = _span()


@dataclass(frozen=True)
class Binding:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Def:
    name: str
    params: tuple[Param, ...]
    body: Expr
    doc: str = field(default="", compare=False)
    span: Span | None = _span()


@dataclass(frozen=True)
class Import:
    path: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ExprStmt:
    expr: Expr
    span: Span | None = _span()


Statement = Union[Binding, Def, Import, ExprStmt]


@dataclass(frozen=True)
class Script:
    statements: tuple[Statement, ...]
    file: str = field(default="<input>", compare=False)


def save_call(expr: Expr, path: str, rank: int | None = None, span: Span | None = None) -> ExprStmt:
    """The statement `save(expr, "path", rank=N)`, built as a tree so the path needs no quoting
    (recipe configs, `dipm eval -o`)."""
    span = span or expr.span
    kwargs: tuple[Keyword, ...] = ()
    if rank is not None:
        kwargs = (Keyword("rank", Number(float(rank), str(rank), span=span), span=span),)
    call = Call("save", (expr, String(path, span=span)), kwargs, span=span)
    return ExprStmt(call, span=span)
