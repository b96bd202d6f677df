"""The IR's operations and their typing rules: one table, used by the verifier and by passes.

The front end gives users friendly messages for type errors; this table is the compiler's
own contract, so a pass that builds an ill-typed node is caught by the verifier.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from dipm_lang.ir.merge import merge_type
from dipm_lang.ir.types import BY_VALUES, DELTA, NUM, STR, UNIT, Type, dir_t, list_t, mag_t


class IRTypeError(Exception):
    """An IR node whose operands or attributes break the op's contract (a compiler bug)."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise IRTypeError(message)


def _update(t: Type) -> None:
    _need(t.is_update, f"expected Delta or Dir, got {t}")


def _dir(t: Type) -> None:
    _need(t.kind == "Dir", f"expected Dir, got {t}")


def _by(attrs: dict[str, Any]) -> str:
    by = attrs.get("by")
    _need(by in BY_VALUES, f"bad by={by!r}")
    return by


def _same_by(*types: Type) -> str:
    bys = {t.by for t in types}
    _need(len(bys) == 1, f"`by` disagrees: {', '.join(map(str, types))}")
    return types[0].by  # type: ignore[return-value]


def _arith(op: str) -> Callable[[Sequence[Type], dict], Type]:
    def rule(types: Sequence[Type], attrs: dict) -> Type:
        from dipm_lang.frontend.arith import binary_result

        a, b = types
        return binary_result({"add": "+", "sub": "-", "mul": "*", "div": "/"}[op], a, b, None)

    return rule


def _neg(types: Sequence[Type], attrs: dict) -> Type:
    from dipm_lang.frontend.arith import negate_result

    return negate_result(types[0], None)


def _list(types: Sequence[Type], attrs: dict) -> Type:
    _need(len({t.kind for t in types}) <= 1, "list items of different kinds")
    return list_t(types[0] if types else None)


def _const(types: Sequence[Type], attrs: dict) -> Type:
    value = attrs.get("value")
    if isinstance(value, str):
        return STR
    _need(isinstance(value, float), f"const value {value!r} is neither a float nor a string")
    return NUM


def _load(types, attrs) -> Type:
    return DELTA


def _save(types, attrs) -> Type:
    _update(types[0])
    _need(isinstance(attrs.get("path"), str), "save without a path")
    return UNIT


def _dir_op(types, attrs) -> Type:
    _update(types[0])
    return dir_t(_by(attrs))


def _mag_op(types, attrs) -> Type:
    _update(types[0])
    return mag_t(_by(attrs))


def _reverse(types, attrs) -> Type:
    _dir(types[0])
    return types[0]


def _shift(types, attrs) -> Type:
    d, e, t = types
    _dir(d), _dir(e)
    _need(t == NUM, "shift's t must be Num")
    return dir_t(_same_by(d, e))


def _orth(types, attrs) -> Type:
    d, e = types
    _dir(d), _dir(e)
    return dir_t(_same_by(d, e))


def _weighted_list(kind: str):
    def rule(types, attrs) -> Type:
        items, weights = types
        _need(items.kind == "List" and items.item is not None and items.item.kind == kind, f"expected List[{kind}]")
        _need(weights.kind == "List" and weights.item in (NUM, None), "expected List[Num] weights")
        return dir_t(items.item.by) if kind == "Dir" else mag_t(items.item.by)  # type: ignore[union-attr]

    return rule


def _recombine(types, attrs) -> Type:
    d, m = types
    _dir(d)
    _need(m.kind == "Mag", f"expected Mag, got {m}")
    _need(_same_by(d, m) == _by(attrs), "recombine's by attribute disagrees with its operands")
    return DELTA


def _elementwise(types, attrs) -> Type:
    _need(all(t.kind in ("Mag", "Num") for t in types), "expected Mag or Num operands")
    mags = [t for t in types if t.kind == "Mag"]
    if mags:
        _same_by(*mags)
        return mags[0]
    return NUM


def _lowrank(types, attrs) -> Type:
    _update(types[0])
    _need(isinstance(attrs.get("rank"), int) and attrs["rank"] >= 1, "lowrank needs an integer rank >= 1")
    return DELTA


def _factor(types, attrs) -> Type:
    _update(types[0])
    _need(attrs.get("which") in ("A", "B"), "factor needs which=A|B")
    return Type("Factor", attrs["which"])


def _lora(types, attrs) -> Type:
    _need(types[0] == Type("Factor", "B") and types[1] == Type("Factor", "A"), "lora(B, A) needs factors")
    return DELTA


def _select(types, attrs) -> Type:
    for t in types:
        _update(t)
    _need(isinstance(attrs.get("pattern"), str), "select/replace need a pattern")
    return DELTA


def _lincomb(types, attrs) -> Type:
    coeffs = attrs.get("coeffs")
    _need(isinstance(coeffs, tuple) and len(coeffs) == len(types) and len(types) >= 1, "lincomb coeffs/arity")
    for t in types:
        _update(t)
    return DELTA


def _unit_scale(types, attrs) -> Type:
    # unit_scale(x[, m]) = coeff * m ⊙ (normalize ? dir(x) : x), per unit of `by`
    by = _by(attrs)
    _update(types[0])
    _need(len(types) in (1, 2), "unit_scale takes x and an optional magnitude")
    _need(isinstance(attrs.get("coeff"), float), "unit_scale needs a float coeff")
    if len(types) == 2:
        _need(types[1] == mag_t(by), f"unit_scale's magnitude must be Mag[{by}], got {types[1]}")
        return DELTA
    # without a magnitude it is a (possibly reversed) direction
    _need(attrs.get("normalize") is True and abs(attrs["coeff"]) == 1.0, "unit_scale without m must be ±dir(x)")
    return dir_t(by)


# op -> (arity or None for any, typing rule)
OPS: dict[str, tuple[int | None, Callable[[Sequence[Type], dict], Type]]] = {
    "const": (0, _const),
    "list": (None, _list),
    "load": (0, _load),
    "save": (1, _save),
    "dir": (1, _dir_op),
    "mag": (1, _mag_op),
    "reverse": (1, _reverse),
    "shift": (3, _shift),
    "orth": (2, _orth),
    "mix": (2, _weighted_list("Dir")),
    "mean": (2, _weighted_list("Mag")),
    "recombine": (2, _recombine),
    "add": (2, _arith("add")),
    "sub": (2, _arith("sub")),
    "mul": (2, _arith("mul")),
    "div": (2, _arith("div")),
    "neg": (1, _neg),
    "max": (2, _elementwise),
    "min": (2, _elementwise),
    "abs": (1, _elementwise),
    "lowrank": (1, _lowrank),
    "factor": (1, _factor),
    "lora": (2, _lora),
    "select": (1, _select),
    "replace": (2, _select),
    "merge": (None, merge_type),  # the baselines (ir/merge.py)
    # produced by the fusion pass
    "lincomb": (None, _lincomb),
    "unit_scale": (None, _unit_scale),
}


def infer_type(op: str, arg_types: Sequence[Type], attrs: dict[str, Any]) -> Type:
    """The type of `op(args…)`, or IRTypeError if the node would be ill-formed."""
    if op not in OPS:
        raise IRTypeError(f"unknown op {op!r}")
    arity, rule = OPS[op]
    if arity is not None and len(arg_types) != arity:
        raise IRTypeError(f"{op} takes {arity} operands, got {len(arg_types)}")
    try:
        return rule(arg_types, attrs)
    except IRTypeError:
        raise
    except Exception as e:  # the front end's type errors, reused as rules
        raise IRTypeError(f"{op}: {getattr(e, 'message', e)}") from None
