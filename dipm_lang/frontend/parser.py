"""Text → AST: the Lark grammar (shipped as package data) and a thin Transformer.

Lark's parse errors are translated into `DipmSyntaxError` with a span and a message a
person can act on ("missing ')'", "unexpected '='") instead of a token dump.
"""

from __future__ import annotations

import ast as pyast
import re
from functools import lru_cache
from typing import Iterator

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from dipm_lang.errors import DipmSyntaxError, ResourceLimitError, Span
from dipm_lang.frontend import ast
from dipm_lang.frontend.recursion import stack_room
from dipm_lang.frontend.resources import grammar_path

MAX_SOURCE_CHARS = 1_000_000  # any text parsed (files also share safety.limits.MAX_SOURCE_BYTES)


class _BracketNewlines:
    """Post-lexer: drop newlines inside ( ) and [ ] so expressions can span lines."""

    always_accept = ("_NL",)
    _open = {"LPAR": 1, "LSQB": 1, "RPAR": -1, "RSQB": -1}

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            depth = max(0, depth + self._open.get(tok.type, 0))
            if tok.type == "_NL" and depth > 0:
                continue
            yield tok


@lru_cache(maxsize=None)
def _parser(start: str) -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        start=start,
        propagate_positions=True,
        postlex=_BracketNewlines(),
        maybe_placeholders=True,
    )


def _span_of(file: str, meta_or_tok) -> Span:
    return Span(file, meta_or_tok.line, meta_or_tok.column, meta_or_tok.end_line, meta_or_tok.end_column)


class _ToAST(Transformer):
    """One small method per grammar rule."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, meta) -> Span:
        return _span_of(self.file, meta)

    @v_args(meta=True)
    def number(self, meta, children):
        (tok,) = children
        return ast.Number(float(tok), str(tok), span=self._s(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        (tok,) = children
        try:
            value = pyast.literal_eval(str(tok))
        except (ValueError, SyntaxError):
            raise DipmSyntaxError(f"invalid escape in string {tok}", self._s(meta)) from None
        return ast.String(value, span=self._s(meta))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), span=self._s(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        func, args = children
        positional: list[ast.Expr] = []
        keywords: list[ast.Keyword] = []
        for arg in args or ():
            if isinstance(arg, ast.Keyword):
                if any(k.name == arg.name for k in keywords):
                    raise DipmSyntaxError(f"keyword argument '{arg.name}' given twice", arg.span)
                keywords.append(arg)
            elif keywords:
                raise DipmSyntaxError("positional argument after a keyword argument", arg.span)
            else:
                positional.append(arg)
        return ast.Call(str(func), tuple(positional), tuple(keywords), span=self._s(meta))

    def args(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return ast.Keyword(str(name), value, span=self._s(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        (items,) = children
        return ast.ListExpr(tuple(items or ()), span=self._s(meta))

    def items(self, children):
        return [c for c in children if c is not None]

    def _binop(op):  # noqa: N805 - a small factory of rule methods
        @v_args(meta=True)
        def rule(self, meta, children):
            left, right = children
            return ast.BinOp(op, left, right, span=self._s(meta))

        return rule

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Neg(children[0], span=self._s(meta))

    def pos(self, children):
        return children[0]

    @v_args(meta=True)
    def attr(self, meta, children):
        value, name = children
        return ast.Attr(value, str(name), span=self._s(meta))

    @v_args(meta=True)
    def binding(self, meta, children):
        name, value = children
        return ast.Binding(str(name), value, span=self._s(meta))

    @v_args(meta=True)
    def param(self, meta, children):
        name, default = children
        return ast.Param(str(name), default, span=self._s(meta))

    def params(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def def_stmt(self, meta, children):
        name, params, body = children
        seen: set[str] = set()
        for p in params or ():
            if p.name in seen:
                raise DipmSyntaxError(f"parameter '{p.name}' appears twice", p.span)
            seen.add(p.name)
        return ast.Def(str(name), tuple(params or ()), body, span=self._s(meta))

    @v_args(meta=True)
    def import_stmt(self, meta, children):
        string = self.string(meta, children)
        return ast.Import(string.value, span=self._s(meta))

    @v_args(meta=True)
    def expr_stmt(self, meta, children):
        return ast.ExprStmt(children[0], span=self._s(meta))

    def script(self, children):
        return ast.Script(tuple(children), file=self.file)

    def expression(self, children):
        return children[0]


def _check_text(text: str, file: str) -> None:
    if len(text) > MAX_SOURCE_CHARS:
        raise ResourceLimitError(f"source is too large ({len(text)} characters; the limit is {MAX_SOURCE_CHARS})",
                                 Span(file, 1, 1, 1, 2))
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        column = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise DipmSyntaxError("NUL byte in source text", Span(file, line, column, line, column + 1))


def parse_script(text: str, file: str = "<input>") -> ast.Script:
    """Parse a whole script."""
    _check_text(text, file)
    script = _parse(text, file, "script")
    return _attach_docs(script, text)


def parse_expression(text: str, file: str = "<expr>") -> ast.Expr:
    """Parse a single expression (REPL input, config values)."""
    _check_text(text, file)
    return _parse(text, file, "expression")


STATEMENT_KEYWORDS = {
    "def": "define functions on a line of their own in a script or at the REPL prompt: def f(x) = 2 * x",
    "import": "import on a line of its own in a script or at the REPL prompt: import \"lib.dipm\"",
}


def _statement_in_expression(text: str, file: str) -> DipmSyntaxError | None:
    """`def …` or `import …` where one expression is expected (`dipm eval`, config values)."""
    found = re.match(r"\s*(def|import)\b", text)
    if found is None:
        return None
    start = found.start(1)
    return DipmSyntaxError(f"'{found[1]}' starts a statement; here one expression is expected",
                           _pos_to_span(text, file, start, len(found[1])), hint=STATEMENT_KEYWORDS[found[1]])


def _parse(text: str, file: str, start: str):
    try:
        tree = _parser(start).parse(text)
        _check_depth(tree, file)
        return _transform(tree, file)
    except VisitError as e:  # an error raised inside a transformer method
        if isinstance(e.orig_exc, DipmSyntaxError):
            raise e.orig_exc from None
        raise
    except UnexpectedInput as e:
        statement = _statement_in_expression(text, file) if start == "expression" else None
        raise (statement or _translate(e, text, file)) from None
    except RecursionError:
        raise DipmSyntaxError("expression is nested too deeply", Span(file, 1, 1, 1, 2)) from None


MAX_PARSE_DEPTH = 400
"""Deepest parse tree accepted (a call nests two levels, an operator one): deeper input is refused
with its position before the recursive Transformer runs, instead of overflowing Python's stack."""


def _check_depth(tree: Tree, file: str) -> None:
    """Raise ResourceLimitError at the first subtree nested deeper than MAX_PARSE_DEPTH (iteratively)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_PARSE_DEPTH:
            meta = node.meta
            line, column = (meta.line, meta.column) if not meta.empty else (1, 1)
            raise ResourceLimitError(f"expression nested too deeply (more than {MAX_PARSE_DEPTH} levels of calls, "
                                     "brackets and operators)", Span(file, line, column, line, column + 1))
        # children pushed right to left: the first node found too deep is the leftmost one
        stack.extend((child, depth + 1) for child in reversed(node.children) if isinstance(child, Tree))


def _transform(tree: Tree, file: str):
    # The tree is at most MAX_PARSE_DEPTH deep and the Transformer recurses about twice per level.
    with stack_room(3 * MAX_PARSE_DEPTH):
        return _ToAST(file).transform(tree)


_TOKEN_NAMES = {
    "RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "LSQB": "'['", "COMMA": "','", "EQUAL": "'='",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "DOT": "'.'", "SEMICOLON": "';'",
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line", "$END": "end of input",
    "DEF": "'def'", "IMPORT": "'import'",
}


def _describe(token_type: str) -> str:
    return _TOKEN_NAMES.get(token_type, token_type)


def _open_bracket_before(text: str, pos: int) -> tuple[str, int] | None:
    """The innermost bracket still open at `pos` (ignoring strings and comments), if any."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < pos and i < len(text):
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < len(text) and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        if c in "([":
            stack.append((c, i))
        elif c in ")]" and stack:
            stack.pop()
        i += 1
    return stack[-1] if stack else None


def _pos_to_span(text: str, file: str, pos: int, width: int = 1) -> Span:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(file, line, column, line, column + width)


def _translate(e: UnexpectedInput, text: str, file: str) -> DipmSyntaxError:
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        if char in "\"'":
            return DipmSyntaxError("unterminated string", span)
        return DipmSyntaxError(f"unexpected character {char!r}", span)

    token = getattr(e, "token", None)
    expected = set(getattr(e, "expected", ()) or ())
    at_end = isinstance(e, UnexpectedEOF) or (token is not None and token.type in ("$END", "_NL"))
    pos = len(text) if token is None or token.type == "$END" or token.start_pos is None else token.start_pos

    # An unclosed bracket is the most common mistake: point at the bracket.
    if at_end or (token is not None and token.type in ("_NL", "$END")):
        if expected & {"RPAR", "RSQB"} or isinstance(e, UnexpectedEOF) or token.type == "$END":
            opened = _open_bracket_before(text, pos)
            if opened is not None:
                closer = ")" if opened[0] == "(" else "]"
                return DipmSyntaxError(f"missing '{closer}' to close this '{opened[0]}'",
                                       _pos_to_span(text, file, opened[1]))
        return DipmSyntaxError("unexpected end of " + ("input" if pos >= len(text.rstrip()) else "line")
                               + _expected_clause(expected), _pos_to_span(text, file, min(pos, max(len(text) - 1, 0))))

    assert isinstance(e, UnexpectedToken)
    width = max(1, len(str(token.value)))
    span = Span(file, token.line, token.column, token.line, token.column + width)
    shown = str(token.value)
    if token.type == "EQUAL" and "RPAR" in expected:
        return DipmSyntaxError("'=' here: keyword arguments are written name=value, and only after a name", span)
    if token.type == "RPAR" and _open_bracket_before(text, token.start_pos) is None:
        return DipmSyntaxError("unmatched ')'", span)
    if token.type == "RSQB" and _open_bracket_before(text, token.start_pos) is None:
        return DipmSyntaxError("unmatched ']'", span)
    if token.type in ("NAME", "NUMBER", "STRING", "LPAR") and ("RPAR" in expected or "COMMA" in expected):
        opened = _open_bracket_before(text, token.start_pos)
        closer = "]" if opened is not None and opened[0] == "[" else ")"
        return DipmSyntaxError(f"unexpected {shown!r}: is a ',' or '{closer}' missing before it?", span)
    return DipmSyntaxError(f"unexpected {shown!r}" + _expected_clause(expected), span)


def _expected_clause(expected: set[str]) -> str:
    if {"NAME", "NUMBER"} <= expected:
        return "; expected an expression"
    names = sorted({_describe(t) for t in expected if not t.startswith("__")})
    if not names or len(names) > 6:
        return ""
    return "; expected " + ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]


def _attach_docs(script: ast.Script, text: str) -> ast.Script:
    """A `def`'s doc is the block of `#` comment lines directly above it."""
    lines = text.splitlines()
    statements = []
    for st in script.statements:
        if isinstance(st, ast.Def) and st.span is not None:
            doc: list[str] = []
            i = st.span.line - 2
            while i >= 0 and lines[i].lstrip().startswith("#"):
                doc.append(lines[i].lstrip()[1:].strip())
                i -= 1
            st = ast.Def(st.name, st.params, st.body, "\n".join(reversed(doc)).strip(), span=st.span)
        statements.append(st)
    return ast.Script(tuple(statements), file=script.file)
