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


def save_call(expr: Expr, path: str, rank: int | None = None, span: Span | None = None, *,
              energy: float | None = None, max_rank: int | None = None, target: str | None = None,
              spans: dict[str, Span | None] | None = None, format: str | None = None) -> ExprStmt:
    """The statement `save(expr, "path", rank=N, energy=E, max_rank=M, target="T")`, built as a tree so
    the path needs no quoting (recipe configs, `dipm eval -o`); `spans`: where each keyword was given."""
    span = span or expr.span
    spans = spans or {}
    kwargs: list[Keyword] = []
    for name, value in (("rank", rank), ("energy", energy), ("max_rank", max_rank)):
        if value is not None:
            at = spans.get(name) or span
            kwargs.append(Keyword(name, Number(float(value), repr(value), span=at), span=at))
    for name, text in (("target", target), ("format", format)):
        if text is not None:
            at = spans.get(name) or span
            kwargs.append(Keyword(name, String(text, span=at), span=at))
    call = Call("save", (expr, String(path, span=span)), tuple(kwargs), span=span)
    return ExprStmt(call, span=span)
