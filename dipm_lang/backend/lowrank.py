"""Per-module kernels on factored values (SPEC §3, §5): never build an m×n matrix.

A `LowRank` holds one module's update ΔW = B @ A (scale folded into B), or a stack of
same-shape modules with leading batch dims `[...]`. A `Mag[by]` is a plain tensor:
`[..., m]` for by="out", `[..., n]` for by="in", `[...]` for by="matrix".

How each operator stays low-rank:
- per-unit norms come from the small triangular factor of the r×r Gram matrix (see
  `unit_norms`), per-unit inner products from r×r cross-Gram matrices;
- per-unit scalings fold into one factor (rows of B for "out", columns of A for "in");
- sums concatenate factors, so they are exact and ranks add;
- `lowrank` truncates with QR of both factors and an SVD of the small core.

Every kernel accepts arbitrary leading batch dims and rank k = 0 (an absent module), and
computes in the dtype of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dipm_lang.ir.constants import EPS, SIN_EPS


BYS = ("out", "in", "matrix")

__all__ = [
    "EPS",
    "SIN_EPS",
    "LowRank",
    "unit_norms",
    "unit_dots",
    "scale_units",
    "mag",
    "dir",
    "normalize",
    "exact_unit_norms",
    "recombine",
    "reverse",
    "linear_combination",
    "combine_units",
    "shift",
    "mix",
    "orth",
    "lowrank",
    "truncate",
    "compact",
]


@dataclass(frozen=True, eq=False)
class LowRank:
    """Delta (or Dir) of one module (or a batch of same-shape modules): ΔW = B @ A, scale already folded into B."""

    B: Tensor  # [..., m, k]
    A: Tensor  # [..., k, n]

    # eq=False: tensor fields make the generated __eq__ ambiguous; identity is what we want.

    def __post_init__(self) -> None:
        B, A = self.B, self.A
        if B.dim() < 2 or A.dim() < 2:
            raise ValueError(f"LowRank factors need ≥ 2 dims, got B{tuple(B.shape)}, A{tuple(A.shape)}")
        if B.shape[-1] != A.shape[-2]:
            raise ValueError(f"inner ranks differ: B{tuple(B.shape)} @ A{tuple(A.shape)}")
        if B.shape[:-2] != A.shape[:-2]:
            raise ValueError(f"batch dims differ: B{tuple(B.shape)}, A{tuple(A.shape)}")
        if B.dtype != A.dtype or B.device != A.device:
            raise ValueError(f"factors differ in dtype/device: {B.dtype}@{B.device} vs {A.dtype}@{A.device}")

    @property
    def m(self) -> int:
        """Output features (rows of ΔW)."""
        return self.B.shape[-2]

    @property
    def n(self) -> int:
        """Input features (columns of ΔW)."""
        return self.A.shape[-1]

    @property
    def rank(self) -> int:
        """Inner dimension k of the factorisation (an upper bound on the true rank)."""
        return self.B.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        """Leading batch dims (empty for a single module)."""
        return self.B.shape[:-2]

    @property
    def dtype(self) -> torch.dtype:
        return self.B.dtype

    @property
    def device(self) -> torch.device:
        return self.B.device

    def dense(self) -> Tensor:
        """The m×n update B @ A (materialises it: for tests, I/O and elementwise baselines)."""
        return self.B @ self.A

    def to(self, *args, **kwargs) -> LowRank:
        """Move/cast both factors, with the arguments of `Tensor.to`."""
        return LowRank(self.B.to(*args, **kwargs), self.A.to(*args, **kwargs))

    def __getitem__(self, index) -> LowRank:
        """Index the batch dims (e.g. `x[i]` is the i-th stacked module)."""
        if not isinstance(index, tuple):
            index = (index,)
        if Ellipsis in index or len(index) > len(self.batch_shape):
            raise IndexError("LowRank indexing applies to batch dims only")
        return LowRank(self.B[index], self.A[index])

    @classmethod
    def zeros(
        cls,
        m: int,
        n: int,
        batch: Sequence[int] = (),
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LowRank:
        """The zero update of shape m×n, represented with rank k = 0."""
        batch = tuple(batch)
        return cls(
            torch.zeros(*batch, m, 0, dtype=dtype, device=device),
            torch.zeros(*batch, 0, n, dtype=dtype, device=device),
        )


# --- helpers -----------------------------------------------------------------------------


def _check_by(by: str) -> None:
    if by not in BYS:
        raise ValueError(f"by must be one of {BYS}, got {by!r}")


def _make(B: Tensor, A: Tensor) -> LowRank:
    """Build a LowRank, broadcasting the factors' batch dims to a common shape.

    A per-unit scale with batch dims can widen one factor's batch; expanding the other
    (a view, no copy) keeps the `LowRank` invariant of equal batch shapes.
    """
    batch = _broadcast(B.shape[:-2], A.shape[:-2])
    return LowRank(B.expand(*batch, *B.shape[-2:]), A.expand(*batch, *A.shape[-2:]))


def _broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of batch shapes, in plain Python: the first call of
    `torch.broadcast_shapes` imports sympy (a quarter of a second of start-up)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, ndim - len(shape)):
            if size != 1:
                if out[i] not in (1, size):
                    raise ValueError(f"batch shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = size
    return tuple(out)


def per_module(c: float | Tensor, like: Tensor, batch: Sequence[int]) -> float | Tensor:
    """A number, or one per module (`[*batch]`, a schedule's values), shaped to broadcast over
    `like` (a per-unit tensor `[*batch, units…]`), in `like`'s dtype and device."""
    if not isinstance(c, Tensor):
        return c
    extra = like.dim() - len(batch)
    return c.to(dtype=like.dtype, device=like.device).reshape(*c.shape, *([1] * extra))


def _safe_inv(norms: Tensor, eps: float) -> Tensor:
    """1/norm where norm > eps, else 0 (zero units stay zero, no inf/NaN in either branch)."""
    nonzero = norms > eps
    return torch.where(nonzero, 1.0 / torch.where(nonzero, norms, torch.ones_like(norms)), torch.zeros_like(norms))


def _as_tensor(c: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


# --- per-unit reductions -----------------------------------------------------------------


def unit_norms(x: LowRank, by: str = "out") -> Tensor:
    """‖u‖ for every unit of ΔW = B @ A, from the r×r Gram matrices' triangular factors.

    out: ‖row_i‖² = B_i (A Aᵀ) B_iᵀ; in: ‖col_j‖² = A_jᵀ (Bᵀ B) A_j; matrix: trace((A Aᵀ)(Bᵀ B)).
    We evaluate these through R with RᵀR equal to the Gram matrix (R from a QR of the
    factor, i.e. a stable Cholesky factor of the Gram) and take Euclidean norms of
    k-vectors instead of square roots of the quadratic forms: the quadratic forms lose
    half the digits of small units (error ~sqrt(machine eps)·scale), which would turn
    numerically-zero units such as `d − ⟨d,e⟩e` with d ∥ e into noise above eps.
    """
    _check_by(by)
    if by == "out":
        # A = Rᵀ Qᵀ with orthonormal Q, so row_i(BA) = (B Rᵀ)_i Qᵀ has norm ‖(B Rᵀ)_i‖.
        r = torch.linalg.qr(x.A.mT, mode="r").R  # [..., min(n,k), k]
        return torch.linalg.vector_norm(x.B @ r.mT, dim=-1)
    if by == "in":
        r = torch.linalg.qr(x.B, mode="r").R  # [..., min(m,k), k]
        return torch.linalg.vector_norm(r @ x.A, dim=-2)
    rb = torch.linalg.qr(x.B, mode="r").R
    ra = torch.linalg.qr(x.A.mT, mode="r").R
    return torch.linalg.vector_norm(rb @ ra.mT, dim=(-2, -1))


def unit_dots(x: LowRank, y: LowRank, by: str = "out") -> Tensor:
    """⟨x_u, y_u⟩ for every unit, from r×r cross-Gram matrices (no m×n)."""
    _check_by(by)
    if by == "out":
        # row_i(x)·row_i(y) = Bx_i (Ax Ayᵀ) By_iᵀ
        return ((x.B @ (x.A @ y.A.mT)) * y.B).sum(-1)
    if by == "in":
        # col_j(x)·col_j(y) = Ax_jᵀ (Bxᵀ By) Ay_j
        return (x.A * ((x.B.mT @ y.B) @ y.A)).sum(-2)
    # trace((Bx Ax)ᵀ (By Ay)) = Σ (Bxᵀ By) ⊙ (Ax Ayᵀ)
    return ((x.B.mT @ y.B) * (x.A @ y.A.mT)).sum((-2, -1))


# --- per-unit scaling and sums -----------------------------------------------------------


def scale_units(x: LowRank, s: Tensor, by: str = "out") -> LowRank:
    """Multiply each unit by s (shaped like Mag[by], or a 0-dim scalar), folding s into one factor."""
    _check_by(by)
    s = _as_tensor(s, x.B)
    if s.dim() == 0:
        return LowRank(x.B * s, x.A)
    if by == "out":
        return _make(x.B * s[..., :, None], x.A)  # diag(s) · B
    if by == "in":
        return _make(x.B, x.A * s[..., None, :])  # A · diag(s)
    return _make(x.B * s[..., None, None], x.A)  # s · B


def linear_combination(xs: Sequence[LowRank], coeffs: Sequence[float | Tensor]) -> LowRank:
    """Σ cᵢ·xᵢ exactly, by concatenating factors: B' = [c₁B₁, c₂B₂, …], A' = [A₁; A₂; …].

    A coefficient is a number or a tensor of one scalar per module (shape `[...]`).
    """
    return combine_units(xs, coeffs, "matrix")


def combine_units(xs: Sequence[LowRank], coeffs: Sequence[float | Tensor], by: str = "out") -> LowRank:
    """Σ cᵢ ⊙ xᵢ unit by unit, exactly (ranks add); each cᵢ is a number or a Mag[by]-shaped tensor."""
    _check_by(by)
    if len(xs) == 0:
        raise ValueError("combine_units needs at least one operand")
    if len(xs) != len(coeffs):
        raise ValueError(f"{len(xs)} operands but {len(coeffs)} coefficients")
    m, n = xs[0].m, xs[0].n
    if any(x.m != m or x.n != n for x in xs):
        raise ValueError(f"shape mismatch: {[(x.m, x.n) for x in xs]}")
    scaled = [x if isinstance(c, (int, float)) and c == 1 else scale_units(x, c, by) for x, c in zip(xs, coeffs)]
    batch = _broadcast(*(x.batch_shape for x in scaled))
    B = torch.cat([x.B.expand(*batch, m, x.rank) for x in scaled], dim=-1)
    A = torch.cat([x.A.expand(*batch, x.rank, n) for x in scaled], dim=-2)
    return LowRank(B, A)


# --- decoupler and recombiner ------------------------------------------------------------


def mag(x: LowRank, by: str = "out") -> Tensor:
    """Mag[by]: ‖u‖ for every unit of ΔW."""
    return unit_norms(x, by)


def dir(x: LowRank, by: str = "out", eps: float = EPS, norms: Tensor | None = None) -> LowRank:  # noqa: A001
    """Dir[by]: u/‖u‖ for every unit; a zero unit (‖u‖ ≤ eps) gives a zero direction.

    `norms`: `unit_norms(x, by)` when the caller has it already (e.g. shared with `mag(x)`), or
    `exact_unit_norms(x, by)` (float64) for a value that may cancel.
    """
    inverse = _safe_inv(unit_norms(x, by) if norms is None else norms, eps)
    return scale_units(x, inverse.to(x.dtype), by)


normalize = dir
"""`normalize(x, by)` is the same operator as `dir(x, by)` (SPEC §3)."""


def recombine(d: LowRank, m: Tensor, by: str = "out") -> LowRank:
    """m ⊙ d unit by unit: a Delta from a direction and a magnitude of the same `by`."""
    return scale_units(d, m, by)


# --- modulators on directions ------------------------------------------------------------


def reverse(d: LowRank) -> LowRank:
    """−d (flip the sign of B)."""
    return LowRank(-d.B, d.A)


SAFE_SIN = 0.1
"""Below this sin θ (or for units whose norms are not ≈ 1), a float32 `shift` recomputes the
unit's coefficients in float64; above it float32's angle error (~1e-7/sin θ) is at float32's
own rounding level."""


@dataclass(frozen=True)
class ShiftAngle:
    """What `shift(d, e, t)` computes from d and e alone, once for every `t` (a sweep's points):
    each unit's angle θ, and which units take the fallback. In float32 (and narrower), `settled`
    marks the units safe at that precision and `exact` is the float64 angle for the others."""

    theta: Tensor
    safe_sin: Tensor       # sin θ, 1 where degenerate (torch.where evaluates both branches)
    degenerate: Tensor     # sin θ < 1e-6, or a zero unit: normalize((1−t)·d + t·e) instead
    settled: Tensor | None = None
    exact: "ShiftAngle | None" = None


def shift(d: LowRank, e: LowRank, t: float | Tensor, by: str = "out", eps: float = EPS, *,
          angle: ShiftAngle | None = None) -> LowRank:
    """Move d toward e along the great circle by the fraction t, unit by unit (SPEC §3).

    θ = arccos(clamp(⟨d,e⟩, −1, 1)); result = sin((1−t)θ)/sin θ · d + sin(tθ)/sin θ · e.
    Where sin θ < 1e-6 or either unit is zero, the unit is normalize((1−t)·d + t·e)
    instead (a zero result stays zero). Both branches reduce to per-unit coefficients
    α, β, so the result is one concatenation α ⊙ d + β ⊙ e. `t` is a number, or one per module of
    the batch (`[...]`, a schedule's values). `angle`: `shift_angle(d, e, by, eps)`, when the caller
    has it already.
    """
    _check_by(by)
    t = float(t) if not isinstance(t, Tensor) else t
    angle = angle or shift_angle(d, e, by, eps)
    alpha, beta = _shift_coefficients(d, e, t, angle, by, eps)
    if angle.exact is not None:
        # Near-parallel, antiparallel or zero units: their angle needs float64 (see shift_angle).
        # Decided unit by unit, so a module's result never depends on its batch-mates.
        alpha64, beta64 = _shift_coefficients(d.to(torch.float64), e.to(torch.float64), t, angle.exact, by, eps)
        alpha = torch.where(angle.settled, alpha, alpha64.to(alpha.dtype))
        beta = torch.where(angle.settled, beta, beta64.to(beta.dtype))
    return combine_units([d, e], [alpha, beta], by)


def shift_angle(d: LowRank, e: LowRank, by: str = "out", eps: float = EPS) -> ShiftAngle:
    """The per-unit angles of `shift`, computed in d's dtype; for float32 (and narrower) also which
    units are settled — safe at this precision — with the float64 angles of the others.

    In float32 an exactly antiparallel pair (e = reverse(d)) has ⟨d,e⟩ ≈ −1 + 6e-8 and
    sin θ ≈ 3e-4, which would miss SPEC's sin θ < 1e-6 fallback: such units are recomputed in
    float64. Dividing by the units' own norms removes the rounding of each direction's length
    from the angle. d and e are directions (units of norm 1, or exactly 0), so the quadratic
    forms of the r×r Gram matrices are accurate here (`unit_norms` explains why they are not
    for arbitrary small units) and much cheaper than a QR per operand.
    """
    _check_by(by)
    norm_d = unit_dots(d, d, by).clamp_min(0.0).sqrt()
    norm_e = unit_dots(e, e, by).clamp_min(0.0).sqrt()
    cos = (unit_dots(d, e, by) * _safe_inv(norm_d, eps) * _safe_inv(norm_e, eps)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    degenerate = (sin_theta < SIN_EPS) | (norm_d <= eps) | (norm_e <= eps)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    if d.dtype == torch.float64:
        return ShiftAngle(theta, safe_sin, degenerate)
    near_one = lambda norm: (norm - 1.0).abs() < 1e-3  # noqa: E731 - a direction's unit
    settled = (sin_theta >= SAFE_SIN) & near_one(norm_d) & near_one(norm_e)
    exact = None if bool(settled.all()) else shift_angle(d.to(torch.float64), e.to(torch.float64), by, eps)
    return ShiftAngle(theta, safe_sin, degenerate, settled, exact)


def _shift_coefficients(d: LowRank, e: LowRank, t: float | Tensor, angle: ShiftAngle, by: str, eps: float
                        ) -> tuple[Tensor, Tensor]:
    """Per-unit α, β of `shift` for one t (the units `angle` leaves unsettled are the caller's)."""
    t = per_module(t, angle.theta, d.batch_shape)
    alpha = torch.sin((1.0 - t) * angle.theta) / angle.safe_sin
    beta = torch.sin(t * angle.theta) / angle.safe_sin
    # Degenerate units are never settled, so in float32 they are left to the float64 angle.
    # The fallback's norm comes from the factored linear path itself rather than from
    # ‖d‖², ⟨d,e⟩, ‖e‖²: at t = ½ with e = −d that expansion cancels to ~1e-8 instead of 0.
    if angle.settled is None and bool(angle.degenerate.any()):
        inv = _safe_inv(unit_norms(combine_units([d, e], [1.0 - t, t], by), by), eps)
        alpha = torch.where(angle.degenerate, (1.0 - t) * inv, alpha)
        beta = torch.where(angle.degenerate, t * inv, beta)
    return alpha, beta


NOISE = 1e3
"""A unit whose computed norm is below NOISE · (machine eps) · (a bound on its size) may be
rounding noise rather than a unit; `exact_unit_norms` recomputes it in float64."""


def exact_unit_norms(x: LowRank, by: str = "out") -> Tensor:
    """`unit_norms` for values that may cancel, in x's dtype, with cancelled units at ~1e-16.

    A unit that cancels exactly — `d − ⟨d,e⟩·e` with e = d, `mix([d, d], [1, −1])` — keeps the
    rounding noise of its computation: ~1e-7 in float32, far above eps = 1e-12, and normalising
    that noise would make a garbage direction where SPEC (and the float64 reference) has a zero
    unit. So units whose norm is within NOISE·eps of the size bound ‖Bᵢ‖·‖A‖ (rows; columns and
    matrices alike) are recomputed in float64, where the noise is ~1e-16, below eps. Decided
    unit by unit: a module's result never depends on its batch-mates; the common case (no such
    unit) costs one float32 QR.
    """
    norms = unit_norms(x, by)
    if x.dtype == torch.float64:
        return norms
    unsettled = norms <= NOISE * torch.finfo(x.dtype).eps * _size_bound(x, by)
    if not bool(unsettled.any()):
        return norms
    exact = unit_norms(x.to(torch.float64), by).to(x.dtype)
    return torch.where(unsettled, exact, norms)


def _size_bound(x: LowRank, by: str) -> Tensor:
    """An upper bound on each unit's norm: ‖row_i(B A)‖ ≤ ‖B_i‖·‖A‖_F, and alike for columns."""
    frobenius_a = torch.linalg.vector_norm(x.A, dim=(-2, -1))
    frobenius_b = torch.linalg.vector_norm(x.B, dim=(-2, -1))
    if by == "out":
        return torch.linalg.vector_norm(x.B, dim=-1) * frobenius_a[..., None]
    if by == "in":
        return torch.linalg.vector_norm(x.A, dim=-2) * frobenius_b[..., None]
    return frobenius_a * frobenius_b


def mix(ds: Sequence[LowRank], ws: Sequence[float | Tensor], by: str = "out", eps: float = EPS) -> LowRank:
    """normalize(Σ wᵢ·dᵢ)."""
    combination = linear_combination(ds, ws)
    return dir(combination, by, eps, exact_unit_norms(combination, by))


def orth(d: LowRank, e: LowRank, by: str = "out", eps: float = EPS) -> LowRank:
    """normalize(d − ⟨d,e⟩·e) unit by unit: remove the component of d along the direction e.

    The coefficient is ⟨d,e⟩/‖e‖²: equal to ⟨d,e⟩ for the unit direction e (0 for a zero unit)
    and exactly 1 when e = d, so that d − d cancels to a zero unit even in float32 (whose ‖d‖²
    is 1 only to ~1e-7).
    """
    coefficient = unit_dots(d, e, by) * _safe_inv(unit_dots(e, e, by), eps * eps)
    residual = combine_units([d, e], [1.0, -coefficient], by)
    return dir(residual, by, eps, exact_unit_norms(residual, by))


# --- rank truncation ---------------------------------------------------------------------


def _svd(x: LowRank) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ΔW from its factors: ΔW = left · diag(s) · right, never forming ΔW.

    B = Q_B R_B and Aᵀ = Q_A R_A give ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ; the core is at most k×k.
    Signs are fixed so that the largest-|·| entry of each left singular vector is
    positive: the output then depends on ΔW only, not on the factors or on LAPACK.
    """
    qb, rb = torch.linalg.qr(x.B)  # [..., m, p_b], [..., p_b, k]
    qa, ra = torch.linalg.qr(x.A.mT)  # [..., n, p_a], [..., p_a, k]
    u, s, vh = torch.linalg.svd(rb @ ra.mT, full_matrices=False)
    left = qb @ u  # [..., m, p]
    right = vh @ qa.mT  # [..., p, n]
    pivot = left.abs().argmax(dim=-2, keepdim=True)
    sign = torch.gather(left, -2, pivot).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)  # [..., 1, p]
    return left * sign, s, right * sign.mT


def lowrank(x: LowRank, r: int) -> tuple[LowRank, Tensor]:
    """Best rank-r approximation (Eckart–Young) and the relative Frobenius error dropped.

    Returns (approx, err) with approx = (Q_B U_r S_r) @ (V_rᵀ Q_Aᵀ) and
    err = sqrt(Σ_{i>r} σᵢ²) / sqrt(Σ σᵢ²) per module (shape `[...]`, 0 for a zero update).
    If r ≥ k, x is returned unchanged with error 0. Otherwise the result's rank is
    min(r, m, n) (singular values beyond min(m, n, k) do not exist).
    """
    if r < 0:
        raise ValueError(f"rank must be ≥ 0, got {r}")
    if r >= x.rank:
        return x, torch.zeros(x.batch_shape, dtype=x.dtype, device=x.device)
    return _truncate(*_svd(x), r)


def truncate(x: LowRank, rank: int | Sequence[int] | None) -> tuple[LowRank | list[LowRank], float, float]:
    """`save(x, rank=N)`: the best rank-N approximation (x itself for no rank) and, summed over the
    batch, the squared Frobenius norms (dropped, total) from which a report's relative error comes.
    With one rank per module of the batch (a schedule's values), the modules are truncated one by
    one and returned as a list."""
    if rank is None:
        return x, 0.0, 0.0
    if not isinstance(rank, int):
        parts = [truncate(x[i], int(r)) for i, r in enumerate(rank)]
        return [p[0] for p in parts], sum(p[1] for p in parts), sum(p[2] for p in parts)
    total = unit_norms(x, "matrix")
    approx, err = lowrank(x, rank)
    return approx, float(((err * total) ** 2).sum()), float((total ** 2).sum())


def _truncate(left: Tensor, s: Tensor, right: Tensor, r: int) -> tuple[LowRank, Tensor]:
    """Keep the leading r singular triplets (S folded into B) and report the relative error dropped."""
    r = min(r, s.shape[-1])
    approx = LowRank(left[..., :r] * s[..., None, :r], right[..., :r, :])
    total = torch.linalg.vector_norm(s, dim=-1)
    dropped = torch.linalg.vector_norm(s[..., r:], dim=-1)
    nonzero = total > 0
    err = torch.where(nonzero, dropped / torch.where(nonzero, total, torch.ones_like(total)), torch.zeros_like(total))
    return approx, err


def compact(x: LowRank, rtol: float | None = None) -> LowRank:
    """Re-factor x exactly, dropping only numerically-zero singular values.

    A singular value counts as zero when σᵢ ≤ rtol·σ₁ (default rtol: max(m, n, k)·machine eps).
    With batch dims, the kept rank is the largest needed by any module of the batch.
    Returns x itself when nothing can be dropped.
    """
    if x.rank == 0:
        return x
    if rtol is None:
        rtol = max(x.m, x.n, x.rank) * torch.finfo(x.dtype).eps
    left, s, right = _svd(x)
    keep = int((s > rtol * s[..., :1]).sum(-1).max()) if s.numel() else 0
    return _truncate(left, s, right, keep)[0] if keep < x.rank else x
