"""AST → dipm source text. `parse(print(tree)) == tree` for every tree the parser makes."""

from __future__ import annotations

from dipm_lang.frontend import ast
from dipm_lang.ir.numbers import format_number, format_string

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY = 3


def print_expr(expr: ast.Expr, context: int = 0) -> str:
    """Source text for `expr`; parenthesised where the surrounding precedence needs it."""
    if isinstance(expr, ast.Number):
        text = format_number(expr.value)
        # A negative literal cannot come from the parser (it makes Neg); guard anyway.
        return f"({text})" if expr.value < 0 else text
    if isinstance(expr, ast.String):
        return format_string(expr.value)
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.ListExpr):
        return "[" + ", ".join(print_expr(i) for i in expr.items) + "]"
    if isinstance(expr, ast.Call):
        parts = [print_expr(a) for a in expr.args] + [f"{k.name}={print_expr(k.value)}" for k in expr.kwargs]
        return f"{expr.func}({', '.join(parts)})"
    if isinstance(expr, ast.BinOp):
        level = _PRECEDENCE[expr.op]
        # left-associative: the right operand needs parentheses at equal precedence
        text = f"{print_expr(expr.left, level)} {expr.op} {print_expr(expr.right, level + 1)}"
        return f"({text})" if level < context else text
    if isinstance(expr, ast.Neg):
        text = f"-{print_expr(expr.operand, _UNARY)}"
        return f"({text})" if _UNARY < context else text
    if isinstance(expr, ast.Attr):
        base = print_expr(expr.value, 4)
        return f"({base}).{expr.name}" if isinstance(expr.value, ast.Number) else f"{base}.{expr.name}"
    raise TypeError(f"cannot print {expr!r}")


def print_statement(statement: ast.Statement) -> str:
    if isinstance(statement, ast.Binding):
        return f"{statement.name} = {print_expr(statement.value)}"
    if isinstance(statement, ast.Def):
        params = ", ".join(p.name if p.default is None else f"{p.name}={print_expr(p.default)}"
                           for p in statement.params)
        doc = "".join(f"# {line}\n" for line in statement.doc.splitlines())
        return f"{doc}def {statement.name}({params}) = {print_expr(statement.body)}"
    if isinstance(statement, ast.Import):
        return f"import {format_string(statement.path)}"
    return print_expr(statement.expr)


def print_script(script: ast.Script) -> str:
    return "".join(print_statement(s) + "\n" for s in script.statements)
