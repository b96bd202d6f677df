"""Type rules of the infix operators `+ - * /` and unary minus (SPEC §3).

- numbers with numbers → Num;
- updates (Delta or Dir) add and subtract → Delta; scaled by a number → Delta;
- magnitudes combine elementwise with magnitudes of the same `by` and with numbers → Mag;
- factors of the same kind add; scaled by a number → Factor.
"""

from __future__ import annotations

from dipm_lang.errors import DipmTypeError, Span
from dipm_lang.ir.types import DELTA, NUM, Type

OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def binary_result(op: str, left: Type, right: Type, span: Span | None) -> Type:
    """The result type of `left op right`, or a DipmTypeError that says what to write instead."""
    kinds = (left.kind, right.kind)
    if kinds == ("Num", "Num"):
        return NUM
    if left.is_update and right.is_update:
        if op in "+-":
            return DELTA
        raise DipmTypeError(f"cannot {_verb(op)} two updates ({left} {op} {right})", span,
                            hint="scale an update by a number, or use recombine(d, m) for per-unit scaling")
    if left.is_update or right.is_update:
        update, other = (left, right) if left.is_update else (right, left)
        if other == NUM and (op == "*" or (op == "/" and left.is_update)):
            return DELTA
        if other == NUM:
            raise DipmTypeError(f"cannot {_verb(op)} a number and an update ({left} {op} {right})", span,
                                hint="updates can be scaled (k * x, x / k) and added to updates")
        if other.kind == "Mag":
            raise DipmTypeError(f"cannot combine an update with a magnitude ({left} {op} {right})", span,
                                hint="recombine(d, m) scales each unit of a direction by a magnitude")
        raise DipmTypeError(f"cannot {_verb(op)} {left} and {right}", span)
    if "Mag" in kinds:
        if left.kind == right.kind == "Mag":
            if left.by != right.by:
                raise DipmTypeError(f"magnitudes of different `by` in '{op}': {left} and {right}", span,
                                    hint="compute both magnitudes with the same by=…")
            return left
        other = right if left.kind == "Mag" else left
        if other == NUM:
            return left if left.kind == "Mag" else right
        raise DipmTypeError(f"cannot {_verb(op)} {left} and {right}", span)
    if "Factor" in kinds:
        if left.kind == right.kind == "Factor":
            if op in "+-" and left.by == right.by:
                return left
            raise DipmTypeError(f"cannot {_verb(op)} {left} and {right}", span,
                                hint="factors of the same kind add and subtract; scale them by numbers")
        factor, other = (left, right) if left.kind == "Factor" else (right, left)
        if other == NUM and (op == "*" or (op == "/" and left.kind == "Factor")):
            return factor
        raise DipmTypeError(f"cannot {_verb(op)} {left} and {right}", span)
    raise DipmTypeError(f"cannot {_verb(op)} {left} and {right}", span)


def negate_result(operand: Type, span: Span | None) -> Type:
    if operand.kind == "Dir":
        return DELTA  # arithmetic on directions yields a Delta (SPEC §2); reverse(d) keeps a Dir
    if operand.kind in ("Num", "Delta", "Mag", "Factor"):
        return operand
    raise DipmTypeError(f"cannot negate a {operand}", span)


def _verb(op: str) -> str:
    return {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}[op]
