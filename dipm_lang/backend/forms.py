"""Kernels on values of either form: a `LowRank` update, or DoRA's form diag(c)·W0 + K (SPEC §7.8).

With base weights, a DoRA adapter's exact update, a full weight `W0 + x` and everything computed
from them by `+ − k*`, `cat` and the `by="out"`/`by="matrix"` operators is a `DoraForm` (c, K):
one coefficient per output row times W0, plus a low-rank K (`backend/dora.py` holds the algebra).
The kernels here take either form — a `LowRank` is the form with c = 0 — and hand plain low-rank
values to `backend/lowrank.py` unchanged, so programs without base weights run exactly as before.

- per-unit norms and inner products need W0 (the batch's base weights, `[G, m, n]` in the LoRA
  layout); they are computed on blocks of rows of c·W0 + B·A in float64 and returned in the
  value's dtype: one pass over W0 per reduction, no m×n matrix besides W0 itself, and no
  cancellation worries (`shift` of antiparallel directions, `orth` of equal ones) in float32 runs;
- per-unit scalings and sums act on c and on K's factors (`DoraForm.scale_rows`, `combine_rows`);
- `by="in"` (one unit per column) mixes the rows that c scales: it leaves the form, and is refused
  (`IN_MESSAGE`; the planner refuses it before any tensor is read, naming the call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from dipm_lang.backend import lowrank as L
from dipm_lang.backend.dora import DoraForm, combine_rows, row_dots, row_norms
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import ExecutionError
from dipm_lang.ir.constants import SIN_EPS

Value = Union[LowRank, DoraForm]

F64 = torch.float64

IN_MESSAGE = ('by="in" needs column norms of diag(c)·W0 + K, which leave DoRA\'s form (its rows are scaled by c); '
              'a DoRA adapter or a weight has no per-column decoupling here')


def has_form(*values: Any) -> bool:
    """Whether any of `values` is in DoRA's form (then W0 is needed to reduce it)."""
    return any(isinstance(v, DoraForm) for v in values)


def as_form(x: Value) -> DoraForm:
    return x if isinstance(x, DoraForm) else DoraForm.from_lowrank(x)


def check_by(by: str) -> None:
    if by == "in":
        raise ExecutionError(IN_MESSAGE)


def base_value(W0: Tensor) -> DoraForm:
    """W0 itself as a value: c = 1, K = 0 (rank 0)."""
    *batch, m, n = W0.shape
    return DoraForm(torch.ones(*batch, m, dtype=W0.dtype, device=W0.device),
                    LowRank.zeros(m, n, batch, dtype=W0.dtype, device=W0.device))


def zeros_like(x: Value) -> Value:
    """The zero update with x's shape (select's unselected modules)."""
    if isinstance(x, DoraForm):
        return DoraForm(torch.zeros_like(x.c), LowRank.zeros(x.m, x.n, x.batch_shape, x.dtype, x.c.device))
    return LowRank.zeros(x.m, x.n, x.batch_shape, x.dtype, x.device)


def to_update(x: Value) -> DoraForm:
    """A weight-level value W as the update it stands for, W − W0 (what saving a weight writes)."""
    return as_form(x).plus_base(-1.0)


# --- per-unit reductions ----------------------------------------------------------------------


def unit_norms(x: Value, by: str, W0: Tensor | None) -> Tensor:
    """‖u‖ per unit of either form, in x's dtype (Mag[by])."""
    if not isinstance(x, DoraForm):
        return L.unit_norms(x, by)
    check_by(by)
    rows = row_norms(x.to(F64), _base(W0))
    out = rows if by == "out" else torch.linalg.vector_norm(rows, dim=-1)
    return out.to(x.dtype)


def unit_dots(x: Value, y: Value, by: str, W0: Tensor | None) -> Tensor:
    """⟨x_u, y_u⟩ per unit, in x's dtype."""
    if not has_form(x, y):
        return L.unit_dots(x, y, by)
    check_by(by)
    dots = row_dots(as_form(x).to(F64), as_form(y).to(F64), _base(W0))
    out = dots if by == "out" else dots.sum(-1)
    return out.to(x.dtype)


def _base(W0: Tensor | None) -> Tensor:
    if W0 is None:  # the planner asks for the base weights first; a kernel should never get here
        raise ExecutionError("this value is in DoRA's form diag(c)·W0 + K and needs the base model's weights")
    return W0


# --- scalings and sums ----------------------------------------------------------------------


def scale_units(x: Value, s: Tensor | float, by: str) -> Value:
    """Each unit times s (Mag[by]-shaped, one per module `[...]`, or a number)."""
    if not isinstance(x, DoraForm):
        return L.scale_units(x, s, by)
    check_by(by)
    return x.scale_rows(s)


def combine(xs: Sequence[Value], coeffs: Sequence[float | Tensor], by: str = "matrix") -> Value:
    """Σ cᵢ ⊙ xᵢ exactly; each cᵢ is a number, one per module `[...]` or (by="out") one per row."""
    if not has_form(*xs):
        return L.combine_units(list(xs), list(coeffs), by)
    check_by(by)
    return combine_rows(list(xs), list(coeffs))


def reverse(d: Value) -> Value:
    return -d if isinstance(d, DoraForm) else L.reverse(d)


def dir(x: Value, by: str, eps: float, norms: Tensor) -> Value:  # noqa: A001 - the operator's name
    """u/‖u‖ per unit (zero units stay zero), with the unit norms given."""
    if not isinstance(x, DoraForm):
        return L.dir(x, by, eps, norms)
    return scale_units(x, L._safe_inv(norms, eps).to(x.dtype), by)


def recombine(d: Value, m: Tensor, by: str) -> Value:
    return scale_units(d, m, by)


def normalized(x: Value, by: str, eps: float, W0: Tensor | None) -> Value:
    """normalize(x): its own norms computed (float64 for the form, exact_unit_norms for LowRank)."""
    if not isinstance(x, DoraForm):
        return L.dir(x, by, eps, L.exact_unit_norms(x, by))
    return dir(x, by, eps, unit_norms(x, by, W0))


# --- modulators on directions ------------------------------------------------------------------


def shift(d: Value, e: Value, t: float | Tensor, by: str, eps: float, W0: Tensor | None) -> Value:
    """SPEC §3's shift for operands of which one at least is in DoRA's form (float64 angles).

    θ from the directions' own norms (as `lowrank.shift_angle`); where sin θ < 1e-6 or a unit is
    zero, normalize((1−t)·d + t·e), whose norm is taken from that combination itself.
    """
    check_by(by)
    W0 = _base(W0)
    d64, e64 = as_form(d).to(F64), as_form(e).to(F64)
    norm_d, norm_e = unit_norms(d64, by, W0), unit_norms(e64, by, W0)
    inv_d, inv_e = L._safe_inv(norm_d, eps), L._safe_inv(norm_e, eps)
    cos = (unit_dots(d64, e64, by, W0) * inv_d * inv_e).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    degenerate = (sin_theta < SIN_EPS) | (norm_d <= eps) | (norm_e <= eps)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    t = L.per_module(t, theta, d64.batch_shape)
    alpha = torch.sin((1.0 - t) * theta) / safe_sin
    beta = torch.sin(t * theta) / safe_sin
    if bool(degenerate.any()):
        path = combine([d64, e64], [_per_unit(1.0 - t, theta), _per_unit(t, theta)], by)
        inv = L._safe_inv(unit_norms(path, by, W0), eps)
        alpha = torch.where(degenerate, (1.0 - t) * inv, alpha)
        beta = torch.where(degenerate, t * inv, beta)
    dtype = as_form(d).dtype
    return combine([d, e], [alpha.to(dtype), beta.to(dtype)], by)


def _per_unit(c: float | Tensor, like: Tensor) -> float | Tensor:
    """A number or a per-module column as a per-unit coefficient of `combine` (like `like`)."""
    return c.expand_as(like) if isinstance(c, Tensor) else c


def mix(ds: Sequence[Value], ws: Sequence[float | Tensor], by: str, eps: float, W0: Tensor | None) -> Value:
    """normalize(Σ wᵢ·dᵢ)."""
    if not has_form(*ds):
        return L.mix(list(ds), list(ws), by, eps)
    return normalized(combine(ds, ws, "matrix"), by, eps, W0)


def orth(d: Value, e: Value, by: str, eps: float, W0: Tensor | None) -> Value:
    """normalize(d − ⟨d,e⟩/⟨e,e⟩·e) (as `lowrank.orth`)."""
    if not has_form(d, e):
        return L.orth(d, e, by, eps)
    coefficient = unit_dots(d, e, by, W0) * L._safe_inv(unit_dots(e, e, by, W0), eps * eps)
    return normalized(combine([d, e], [1.0, -coefficient], by), by, eps, W0)


# --- outputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DoraOutput:
    """A module (or a stack) to write as a DoRA adapter: B·A = L at scale 1, the magnitude vector,
    and whether the update is exactly zero (then the module is left out, as zero LoRA modules are)."""

    lora: LowRank
    magnitude: Tensor  # [..., m]
    unchanged: Tensor  # [...] bool

    def __getitem__(self, index) -> "DoraOutput":
        return DoraOutput(self.lora[index], self.magnitude[index], self.unchanged[index])
