"""DoRA's exact algebra on factors (SPEC §7.8): values of the form diag(c)·W0 + K.

A DoRA adapter (PEFT `use_dora=True`) stores, per module, LoRA factors `B`, `A`, a scale `s`
and a magnitude vector `m` with one entry per OUTPUT row of the weight (PEFT's
`lora_magnitude_vector`; for an embedding, one per embedding dimension, i.e. per row of the
LoRA layout `[dim, vocab]`). Its effective weight is, exactly as
`peft/tuners/lora/variants.py::DoraLinearVariant.merge_safe` computes it,

    W = diag(m / ‖W0 + s·B·A‖_rows) · (W0 + s·B·A),

so its update ΔW = W − W0 = diag(c)·W0 + K with

    c = m / ‖W0 + s·B·A‖_rows − 1,     K = diag(m / ‖W0 + s·B·A‖_rows) · s·B·A   (low-rank).

`DoraForm(c, K)` is any value diag(c)·W0 + K of one module (or a stack with leading batch dims,
like `LowRank`). The form is closed under +, −, k*, `cat` and per-row scalings, because both
parts combine linearly: Σ diag(αᵢ)(diag(cᵢ)W0 + Kᵢ) = diag(Σ αᵢcᵢ)·W0 + Σ diag(αᵢ)Kᵢ. A
plain LoRA update is the form with c = 0, and a full weight W0 + x is `x.plus_base()` (c + 1):
every by="out" operator on deltas and on weights is then one set of kernels (`row_norms`,
`row_dots`, `DoraForm.scale_rows`, `combine_rows`).

Row norms and inner products need W0 itself (m×n, read one module at a time). They are computed
on blocks of rows of diag(c)·W0 + B·A, so no m×n matrix beyond W0 is ever built: a Gram/QR
formula would need ‖W0 rows‖² − ‖projection‖², which cancels when a row of W0 + K is small,
while the blocked sum has the rounding of PEFT's own dense computation at the same cost
(m·n·k multiply-adds either way).

Saving (`to_dora`) inverts the map: a value diag(c)·W0 + K with every 1 + cᵢ ≠ 0 is the DoRA
adapter with L = diag(1/(1+c))·K, m = (1+c) ⊙ ‖W0 + L‖_rows and s·B·A = L, because then
m / ‖W0 + L‖ = 1 + c and (1+c)(W0 + L) − W0 = c·W0 + K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dipm_lang.backend.lowrank import LowRank, combine_units, scale_units, unit_norms
from dipm_lang.errors import RuntimeDipmError

__all__ = [
    "DoraForm",
    "DoraFactors",
    "row_norms",
    "row_dots",
    "weight_row_norms",
    "matrix_norm",
    "combine_rows",
    "dora_update",
    "to_dora",
]

BLOCK_ELEMENTS = 1 << 22
"""Rows of diag(c)·W0 + K are built this many elements at a time (16 MiB in float32)."""

ZERO = 1e-12
"""A row norm or a 1 + cᵢ at or below this counts as zero (SPEC's eps)."""


@dataclass(frozen=True, eq=False)
class DoraForm:
    """The value diag(c)·W0 + K of one module (or a stack of same-shape modules).

    `c` is `[..., m]` (one coefficient per output row of the LoRA layout), `K` a `LowRank`
    with the same batch dims. W0 is not stored: it is the base weight of the module in the
    LoRA layout `[..., m, n]`, passed where the value is evaluated.
    """

    c: Tensor  # [..., m]
    K: LowRank  # [..., m, n]

    def __post_init__(self) -> None:
        if self.c.shape != (*self.K.batch_shape, self.K.m):
            raise ValueError(f"c has shape {tuple(self.c.shape)}, expected {(*self.K.batch_shape, self.K.m)}")
        if self.c.dtype != self.K.dtype or self.c.device != self.K.device:
            raise ValueError(f"c is {self.c.dtype}@{self.c.device} but K is {self.K.dtype}@{self.K.device}")

    @classmethod
    def from_lowrank(cls, K: LowRank) -> DoraForm:
        """A plain low-rank update as a DoRA-form value (c = 0)."""
        return cls(torch.zeros(*K.batch_shape, K.m, dtype=K.dtype, device=K.device), K)

    @property
    def m(self) -> int:
        return self.K.m

    @property
    def n(self) -> int:
        return self.K.n

    @property
    def batch_shape(self) -> torch.Size:
        return self.K.batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def is_lowrank(self) -> bool:
        """True when c is exactly 0 everywhere: the value is the plain LoRA update K."""
        return not bool(self.c.any())

    def to(self, *args, **kwargs) -> DoraForm:
        """Move/cast both parts, with the arguments of `Tensor.to`."""
        return DoraForm(self.c.to(*args, **kwargs), self.K.to(*args, **kwargs))

    def __getitem__(self, index) -> DoraForm:
        """Index the batch dims (e.g. `x[i]` is the i-th stacked module)."""
        return DoraForm(self.c[index], self.K[index])

    # --- evaluation (needs W0) -------------------------------------------------------------

    def dense(self, W0: Tensor) -> Tensor:
        """The m×n value diag(c)·W0 + K (for tests, bake and elementwise operators)."""
        _check_base(self, W0)
        return self.c[..., :, None] * W0.to(self.dtype) + self.K.dense()

    def merged(self, W0: Tensor) -> Tensor:
        """W0 + value: the module's weight after merging this update."""
        _check_base(self, W0)
        return (1 + self.c)[..., :, None] * W0.to(self.dtype) + self.K.dense()

    # --- closed operations -----------------------------------------------------------------

    def plus_base(self, k: float = 1.0) -> DoraForm:
        """value + k·W0: k = 1 turns an update x into the weight W0 + x, k = −1 a weight W into W − W0."""
        return DoraForm(self.c + k, self.K)

    def scale_rows(self, s: Tensor | float) -> DoraForm:
        """diag(s)·value: s is a number, a per-module scalar `[...]` or a per-row vector `[..., m]`."""
        s = torch.as_tensor(s, dtype=self.dtype, device=self.c.device)
        if s.dim() == len(self.batch_shape) + 1:  # one factor per row
            return DoraForm(self.c * s, scale_units(self.K, s, "out"))
        rows = s[..., None] if s.dim() else s  # one factor per module, the same for every row
        return DoraForm(self.c * rows, scale_units(self.K, s, "matrix"))

    def __add__(self, other: DoraForm | LowRank) -> DoraForm:
        return combine_rows([self, other], [1.0, 1.0])

    __radd__ = __add__

    def __sub__(self, other: DoraForm | LowRank) -> DoraForm:
        return combine_rows([self, other], [1.0, -1.0])

    def __rsub__(self, other: DoraForm | LowRank) -> DoraForm:
        return combine_rows([other, self], [1.0, -1.0])

    def __neg__(self) -> DoraForm:
        return DoraForm(-self.c, LowRank(-self.K.B, self.K.A))

    def __mul__(self, k: float | Tensor) -> DoraForm:
        return self.scale_rows(k)

    __rmul__ = __mul__

    def __truediv__(self, k: float | Tensor) -> DoraForm:
        return self.scale_rows(1.0 / torch.as_tensor(k, dtype=self.dtype, device=self.c.device))


def _as_form(x: DoraForm | LowRank) -> DoraForm:
    return x if isinstance(x, DoraForm) else DoraForm.from_lowrank(x)


def _check_base(x: DoraForm, W0: Tensor) -> None:
    if W0.shape != (*x.batch_shape, x.m, x.n):
        raise ValueError(f"W0 has shape {tuple(W0.shape)} but the value is {(*x.batch_shape, x.m, x.n)}")


def combine_rows(xs: Sequence[DoraForm | LowRank], coeffs: Sequence[float | Tensor]) -> DoraForm:
    """Σ diag(αᵢ)·xᵢ exactly: c = Σ αᵢcᵢ, K = [α₁K₁, α₂K₂, …] (ranks add, as `cat`).

    Each αᵢ is a number, a per-module scalar `[...]` or a per-row vector `[..., m]` (a
    Mag[out], e.g. `shift`'s coefficients).
    """
    if len(xs) == 0 or len(xs) != len(coeffs):
        raise ValueError(f"{len(xs)} operands but {len(coeffs)} coefficients")
    forms = [_as_form(x) for x in xs]
    batch_ndim = len(forms[0].batch_shape)
    rows = []
    for form, a in zip(forms, coeffs):
        a = torch.as_tensor(a, dtype=form.dtype, device=form.c.device)
        rows.append(a[..., None] if 0 < a.dim() == batch_ndim else a)  # per-module scalar → every row
    c = sum((form.c * a for form, a in zip(forms, rows)), torch.zeros_like(forms[0].c))
    K = combine_units([form.K for form in forms], rows, "out")
    return DoraForm(c, K)


# --- per-row reductions (need W0) ------------------------------------------------------------


def _row_blocks(x: DoraForm, W0: Tensor):
    """Yield (rows, block of diag(c)·W0 + K) over all rows, each block at most BLOCK_ELEMENTS."""
    _check_base(x, W0)
    batch = math.prod(x.batch_shape)
    step = max(1, BLOCK_ELEMENTS // max(1, x.n * batch))
    B, A = x.K.B.reshape(batch, x.m, x.K.rank), x.K.A.reshape(batch, x.K.rank, x.n)
    for start in range(0, x.m, step):
        rows = slice(start, min(x.m, start + step))
        base = (x.c[..., rows, None] * W0[..., rows, :].to(x.dtype)).reshape(batch, -1, x.n)
        yield rows, torch.baddbmm(base, B[:, rows, :], A).reshape(*x.batch_shape, -1, x.n)


def row_norms(x: DoraForm | LowRank, W0: Tensor) -> Tensor:
    """‖row_i(diag(c)·W0 + K)‖ for every output row: Mag[out] of the value, `[..., m]`.

    For a weight `x.plus_base()` this is PEFT's `get_weight_norm` (‖W0 + s·B·A‖ for a DoRA
    adapter's own factors).
    """
    x = _as_form(x)
    out = torch.empty_like(x.c)
    for rows, block in _row_blocks(x, W0):
        out[..., rows] = torch.linalg.vector_norm(block, dim=-1)
    return out


def row_dots(x: DoraForm | LowRank, y: DoraForm | LowRank, W0: Tensor) -> Tensor:
    """⟨row_i(x), row_i(y)⟩ for every output row, `[..., m]` (for `shift`, `orth` by="out")."""
    x, y = _as_form(x), _as_form(y)
    out = torch.empty_like(x.c)
    for (rows, bx), (_, by) in zip(_row_blocks(x, W0), _row_blocks(y, W0)):
        out[..., rows] = (bx * by).sum(-1)
    return out


def weight_row_norms(x: DoraForm | LowRank, W0: Tensor) -> Tensor:
    """‖row_i(W0 + x)‖ for an update x: Mag[out] of the weight, DoRA's own axis (PEFT's
    `get_weight_norm`)."""
    return row_norms(_as_form(x).plus_base(), W0)


def matrix_norm(x: DoraForm | LowRank, W0: Tensor) -> Tensor:
    """Frobenius norm of the value (Mag[matrix]), `[...]`."""
    return torch.linalg.vector_norm(row_norms(x, W0), dim=-1)


# --- reading and writing DoRA adapters ------------------------------------------------------


def _module(names: Sequence[str] | None, index: int) -> str:
    return repr(names[index]) if names else f"#{index}"


def _first_bad(mask: Tensor) -> tuple[int, int]:
    """(module index in the flattened batch, row) of the first True entry of a `[..., m]` mask."""
    flat = mask.reshape(-1, mask.shape[-1])
    module = int(flat.any(-1).nonzero()[0])
    return module, int(flat[module].nonzero()[0])


def dora_update(W0: Tensor, lora: LowRank, magnitude: Tensor, *,
                names: Sequence[str] | None = None) -> DoraForm:
    """The exact update of a DoRA adapter: m ⊙ normalize_rows(W0 + s·B·A) − W0.

    `lora` is s·B·A with the scale folded into B (as the adapter reader returns it), in the
    LoRA layout; `magnitude` is the file's `lora_magnitude_vector` `[..., m]`; `W0` the base
    weight in the same layout `[..., m, n]` (Conv1D and embedding weights transposed). A row
    with ‖W0 + s·B·A‖ = 0 is an error naming the module (PEFT divides by that norm).
    """
    if magnitude.shape != (*lora.batch_shape, lora.m):
        raise ValueError(f"magnitude has shape {tuple(magnitude.shape)}, expected {(*lora.batch_shape, lora.m)}")
    norms = row_norms(DoraForm(torch.ones_like(magnitude, dtype=lora.dtype), lora), W0)
    zero = norms <= ZERO
    if bool(zero.any()):
        module, row = _first_bad(zero)
        raise RuntimeDipmError(f"DoRA module {_module(names, module)}: row {row} of W0 + s·B·A is zero, "
                               "so its direction (and PEFT's DoRA update) is undefined")
    ratio = magnitude.to(lora.dtype) / norms
    return DoraForm(ratio - 1, scale_units(lora, ratio, "out"))


@dataclass(frozen=True, eq=False)
class DoraFactors:
    """A DoRA adapter's tensors for one module (or a stack): `lora_B`, `lora_A`, `lora_magnitude_vector`.

    `lora` holds B (without the scale) and A, so that the adapter's s·B·A is `scale · lora.B @ lora.A`.
    `error` is the relative Frobenius error of the update that a truncation dropped, `[...]`.
    """

    lora: LowRank
    magnitude: Tensor
    scale: float
    error: Tensor


Truncate = Callable[[LowRank], "tuple[LowRank, Tensor]"]
"""Rank truncation of one (stack of) LowRank, e.g. `lambda L: lowrank(L, 16)`; returns (approx, error)."""


def to_dora(x: DoraForm | LowRank, W0: Tensor, *, scale: float = 1.0, truncate: Truncate | None = None,
            names: Sequence[str] | None = None) -> DoraFactors:
    """Write the value diag(c)·W0 + K as a DoRA adapter (SPEC §7.8 "Saving").

    L = diag(1/(1+c))·K, optionally truncated (the DoRA form is kept: the truncation acts on L,
    so the saved update is c·W0 + (1+c)·L' exactly), m = (1+c) ⊙ ‖W0 + L'‖_rows and
    B·A = L'/scale. Choose `scale` as the saved config's lora_alpha/r (1 for r = alpha). A rank-0
    L' is written as one zero rank (PEFT needs r ≥ 1). Errors, naming the module: some
    1 + cᵢ = 0 (the row of the result is −W0's row, which no DoRA adapter makes), or a zero row of
    W0 + L' (PEFT would divide by it). A value with c = 0 is a plain LoRA: save it as one instead.
    """
    x = _as_form(x)
    one = 1 + x.c
    degenerate = (one.abs() <= ZERO) | ~torch.isfinite(one)
    if bool(degenerate.any()):
        module, row = _first_bad(degenerate)
        raise RuntimeDipmError(
            f"module {_module(names, module)}: cannot be saved as a DoRA adapter: row {row} of the result is "
            f"{float(one.reshape(-1, x.m)[module, row]):g}·W0 + K (1 + c = 0), which no magnitude and direction "
            "of W0 + B·A gives")
    L = scale_units(x.K, 1 / one, "out")
    error = torch.zeros(x.batch_shape, dtype=x.dtype, device=x.c.device)
    if truncate is not None:
        kept, _ = truncate(L)
        dropped = scale_units(combine_units([L, kept], [1.0, -1.0], "matrix"), one, "out")
        total = matrix_norm(x, W0)
        error = torch.where(total > 0, unit_norms(dropped, "matrix") / torch.where(total > 0, total, 1.0), 0.0)
        L = kept
    norms = row_norms(DoraForm(torch.ones_like(one), L), W0)
    zero = norms <= ZERO
    if bool(zero.any()):
        module, row = _first_bad(zero)
        raise RuntimeDipmError(f"module {_module(names, module)}: cannot be saved as a DoRA adapter: row {row} of "
                               "W0 + L is zero, and PEFT divides by its norm")
    if L.rank == 0:  # c·W0 alone: PEFT needs r ≥ 1, so write one zero rank
        L = LowRank(x.c.new_zeros(*x.batch_shape, x.m, 1), x.c.new_zeros(*x.batch_shape, 1, x.n))
    return DoraFactors(lora=LowRank(L.B / scale, L.A), magnitude=one * norms, scale=scale, error=error)
