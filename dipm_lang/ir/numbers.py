"""Plain numbers and strings in the IR: constant evaluation and their printed form.

Every layer needs these — the lowering checks constant arguments, `simplify` folds numbers,
`fuse` reads coefficients, listings print attributes — so they live here, in the lowest layer
that needs them.
"""

from __future__ import annotations

import math
from typing import Any

from dipm_lang.errors import DipmTypeError
from dipm_lang.ir.node import Node, walk
from dipm_lang.ir.schedules import Blocks, Combine, Parameter, Ramp, Where, is_schedule

NUMBER_OPS = ("add", "sub", "mul", "div", "neg", "max", "min", "abs")
"""Operators that compute a number from numbers (constant-folded at compile time)."""


class NotConstant(Exception):
    """The expression depends on an adapter: it has no compile-time value."""


def const_eval(node: Node) -> Any:
    """The value of a constant expression (numbers, strings, lists and arithmetic on numbers)."""
    values: dict[int, Any] = {}  # each shared operand once, without recursion: bindings can chain deep
    for n in walk([node]):
        if n.op == "const":
            values[id(n)] = n.value
        elif n.op == "list":
            values[id(n)] = [values[id(a)] for a in n.args]
        elif n.type.is_number and n.op in NUMBER_OPS:
            values[id(n)] = numeric(n.op, [values[id(a)] for a in n.args])
        else:
            raise NotConstant()
    return values[id(node)]


def is_constant(node: Node) -> bool:
    try:
        const_eval(node)
    except NotConstant:
        return False
    return True


def numeric(op: str, values: list[float]) -> float:
    """Arithmetic on plain numbers (and on schedules, which it builds lazily), as the language defines it."""
    if any(is_schedule(v) for v in values):
        if op == "div" and not is_schedule(values[1]) and values[1] == 0.0:
            raise DipmTypeError("division by zero")
        return Combine(op, tuple(values))
    if op == "neg":
        return -values[0]
    if op == "abs":
        return abs(values[0])
    a, b = values
    if op == "max":
        return max(a, b)
    if op == "min":
        return min(a, b)
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0.0:
        raise DipmTypeError("division by zero")
    return a / b


def format_number(value: float) -> str:
    """A number as dipm source text (integral values without a decimal point)."""
    if not math.isfinite(value):  # "1e999" parses back to inf; nan never comes from the parser
        return "nan" if math.isnan(value) else ("1e999" if value > 0 else "-1e999")
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch < " " or ch == "\x7f":  # other control characters (a raw NUL or CR would not parse back)
        return f"\\x{ord(ch):02x}"
    if "\ud800" <= ch <= "\udfff":  # lone surrogates cannot be written as UTF-8
        return f"\\u{ord(ch):04x}"
    return ch


def format_string(value: str) -> str:
    """A string as a dipm string literal (escapes make it parse back to the same value)."""
    return '"' + "".join(_escape(ch) for ch in value) + '"'


def format_value(value: Any) -> str:
    """A schedule as dipm source text (`ramp([0, 0.5, 1])`, `where("q_proj", 0.3, 0.7)`)."""
    if not is_schedule(value):
        return format_number(float(value))
    if isinstance(value, Parameter):
        return value.name
    if isinstance(value, Ramp):
        inner = "[" + ", ".join(format_number(v) for v in value.values) + "]"
        return f"ramp({inner}" + (f", layers={value.layers})" if value.layers is not None else ")")
    if isinstance(value, Blocks):
        if value.preset is not None:
            return f"lbw({format_string(value.preset)})"
        return "lbw([" + ", ".join(format_number(v) for v in value.values) + "])"
    if isinstance(value, Where):
        return f"where({format_string(value.pattern)}, {format_value(value.then)}, {format_value(value.otherwise)})"
    symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
    if value.op in symbols:
        return f"({format_value(value.args[0])} {symbols[value.op]} {format_value(value.args[1])})"
    return f"{value.op}({', '.join(format_value(a) for a in value.args)})"
