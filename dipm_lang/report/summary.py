"""A readable summary of a computed value: type, modules, ranks, norms per layer — never a tensor dump.

`summarize(type, per_module_values)` is a pure function of a value's type and its per-module
values (as the executor returns them: `LowRank` factors for updates, tensors for magnitudes
and factors, plain Python values for numbers, strings and lists). The REPL prints it after
every expression; the Python API may reuse it. Norms come from the factors (r×r Gram
matrices), never from an m×n matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from dipm_lang.backend import lowrank as L
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.ir.modules import layer_order, split_module
from dipm_lang.ir.types import Type

def fmt(value: float, digits: int = 4) -> str:
    """A number in at most `digits` significant digits (`-` for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def layer_table(cells: Mapping[tuple[int | None, str], float], *, signed: bool = False,
                indent: str = "    ", extra: Mapping[int | None, Mapping[str, float]] | None = None) -> list[str]:
    """Rows = layers, columns = module types; `extra` adds per-layer columns on the right."""
    layers = sorted({layer for layer, _ in cells}, key=layer_order)
    kinds = ordered_kinds(kind for _, kind in cells)
    extra_columns = list(next(iter(extra.values()))) if extra else []

    def cell(value: float | None) -> str:
        if value is None or math.isnan(value):
            return "·"
        return f"{value:+.4f}" if signed else fmt(value)

    header = ["layer", *kinds, *extra_columns]
    rows = []
    for layer in layers:
        row = ["-" if layer is None else str(layer), *(cell(cells.get((layer, kind))) for kind in kinds)]
        row += [cell((extra or {}).get(layer, {}).get(column)) for column in extra_columns]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(v.rjust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def ordered_kinds(kinds: Iterable[str]) -> list[str]:
    """Module types in the order a transformer block has them (attention, then MLP), others after."""
    order = ["embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    seen = sorted(set(kinds), key=lambda k: (order.index(k) if k in order else len(order), k))
    return seen


def summarize(type_: Type | str, values: Mapping[str, Any]) -> str:
    """A few lines describing a value; `values` maps module name → that module's value."""
    kind = type_.kind if isinstance(type_, Type) else str(type_).split("[", 1)[0]
    label = str(type_)
    if kind in ("Num", "Str", "Unit") or (kind == "List" and not _per_module_list(values)):
        return _plain(label, values)
    if kind == "List":
        return _list(type_, values)
    if not values:
        return f"{label} over no modules (no adapter is involved)"
    if kind == "Factor" or (kind == "Dir" and " of Factor[" in label):  # a direction of a factor is one
        return _factor(label, values)
    if kind in ("Delta", "Dir"):
        return _update(type_, label, values)
    if kind == "Mag":
        return _magnitude(type_, label, values)
    return f"{label} over {len(values)} modules"


# ---- plain values ------------------------------------------------------------------------

def _plain(label: str, values: Mapping[str, Any]) -> str:
    if not values:
        return label
    value = next(iter(values.values()))
    return f"{_format_plain(value)}  : {label}"


def _format_plain(value: Any) -> str:
    if isinstance(value, str):
        from dipm_lang.ir.numbers import format_string

        return format_string(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        from dipm_lang.ir.numbers import format_number

        return format_number(float(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_plain(v) for v in value) + "]"
    return str(value)


def _per_module_list(values: Mapping[str, Any]) -> bool:
    """Whether a list value holds per-module tensors (List[Delta] etc.), not plain items."""
    first = next(iter(values.values()), None)
    return isinstance(first, (list, tuple)) and any(isinstance(v, (LowRank, torch.Tensor)) for v in first)


def _list(type_: Type | str, values: Mapping[str, Any]) -> str:
    item_type: Type | str = type_.item if isinstance(type_, Type) and type_.item else "?"
    count = len(next(iter(values.values())))
    lines = [f"{type_} of {count} item{'s' if count != 1 else ''}"]
    for i in range(count):
        item = summarize(item_type, {name: v[i] for name, v in values.items()})
        lines.append(f"[{i}] " + item.replace("\n", "\n    "))
    return "\n".join(lines)


# ---- updates -----------------------------------------------------------------------------

def _as_lowrank(value: Any) -> LowRank:
    if isinstance(value, LowRank):
        return value
    # a dense m×n update (the dense reference backend): exact factors W = W · I
    W = torch.as_tensor(value)
    return LowRank(W, torch.eye(W.shape[-1], dtype=W.dtype, device=W.device))


def _scope(values: Mapping[str, Any]) -> str:
    cells = [split_module(n) for n in values]
    layers = {layer for layer, _ in cells if layer is not None}
    kinds = ordered_kinds(kind for _, kind in cells)
    where = f" in {len(layers)} layer{'s' if len(layers) != 1 else ''}" if layers else ""
    shown = ", ".join(kinds[:8]) + (f", … ({len(kinds)} types)" if len(kinds) > 8 else "")
    return f"{len(values)} module{'s' if len(values) != 1 else ''}{where} ({shown})"


def _range(numbers: Iterable[int], word: str) -> str:
    numbers = sorted(set(numbers))
    if not numbers:
        return f"{word} 0"
    return f"{word} {numbers[0]}" if len(numbers) == 1 else f"{word}s {numbers[0]}–{numbers[-1]}"


def _update(type_: Type | str, label: str, values: Mapping[str, Any]) -> str:
    factors = {name: _as_lowrank(v) for name, v in values.items()}
    norms: dict[str, float] = {}
    row_norms: list[torch.Tensor] = []
    for name, x in factors.items():
        norms[name] = float(L.unit_norms(x, "matrix"))
        row_norms.append(L.unit_norms(x, "out").reshape(-1).double().cpu())
    rows = torch.cat(row_norms) if row_norms else torch.zeros(0, dtype=torch.float64)
    total = math.sqrt(sum(v * v for v in norms.values()))
    dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in factors.values()})
    head = (f"{label} · {_scope(values)} · {_range((x.rank for x in factors.values()), 'rank')} · "
            f"‖·‖_F {fmt(total)} · {'/'.join(dtypes)}")
    lines = [head, "  Frobenius norm per layer × module:"]
    cells: dict[tuple[int | None, str], float] = {}
    for name, value in norms.items():
        key = split_module(name)
        cells[key] = math.sqrt(cells.get(key, 0.0) ** 2 + value ** 2)
    lines += layer_table(cells)
    if rows.numel():
        zero = int((rows <= L.EPS).sum())
        lines.append(f"  row norms (by=\"out\", {rows.numel()} rows{f', {zero} zero' if zero else ''}): "
                     f"min {fmt(float(rows.min()))}  mean {fmt(float(rows.mean()))}  max {fmt(float(rows.max()))}")
    by = type_.by if isinstance(type_, Type) else None
    if by in ("in", "matrix"):
        units = torch.cat([L.unit_norms(x, by).reshape(-1).double().cpu() for x in factors.values()])
        zero = int((units <= L.EPS).sum())
        lines.append(f"  units (by=\"{by}\"): {units.numel()}, {zero} zero")
    return "\n".join(lines)


# ---- magnitudes and factors ----------------------------------------------------------------

def _magnitude(type_: Type | str, label: str, values: Mapping[str, Any]) -> str:
    tensors = {name: torch.as_tensor(v).double().cpu().reshape(-1) for name, v in values.items()}
    flat = torch.cat(list(tensors.values()))
    sizes = sorted({t.numel() for t in tensors.values()})
    per = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    lines = [f"{label} · {_scope(values)} · {per} value{'s' if sizes != [1] else ''} per module",
             f"  min {fmt(float(flat.min()))}  mean {fmt(float(flat.mean()))}  max {fmt(float(flat.max()))}"
             f"  ({flat.numel()} values{f', {int((flat <= L.EPS).sum())} zero' if bool((flat <= L.EPS).any()) else ''})"]
    cells: dict[tuple[int | None, str], list[torch.Tensor]] = {}
    for name, t in tensors.items():
        cells.setdefault(split_module(name), []).append(t)
    what = "value" if sizes == [1] else "mean"
    lines.append(f"  {what} per layer × module:")
    lines += layer_table({k: float(torch.cat(v).mean()) for k, v in cells.items()})
    return "\n".join(lines)


def _factor(label: str, values: Mapping[str, Any]) -> str:
    tensors = {name: torch.as_tensor(v) for name, v in values.items()}
    shapes = sorted({"×".join(str(s) for s in t.shape) for t in tensors.values()})
    lines = [f"{label} · {_scope(values)} · shape{'s' if len(shapes) != 1 else ''} {', '.join(shapes[:6])}",
             "  Frobenius norm per layer × module:"]
    cells: dict[tuple[int | None, str], float] = {}
    for name, t in tensors.items():
        key = split_module(name)
        cells[key] = math.sqrt(cells.get(key, 0.0) ** 2 + float(torch.linalg.vector_norm(t.double())) ** 2)
    lines += layer_table(cells)
    return "\n".join(lines)
