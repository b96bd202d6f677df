"""Dense reference of the operators (SPEC §3 verbatim): the oracle the factored kernels are tested against.

Every function takes and returns full matrices W [m, n] (one module, no batch dims) and is
meant to be run in float64. Units are handled uniformly by viewing W as a matrix whose rows
are the units: W itself for by="out", Wᵀ for by="in", W flattened to one row for
by="matrix". A Mag[by] is a vector of per-unit norms ([m], [n]) or a 0-dim scalar for "matrix".
Nothing here is clever on purpose; speed does not matter, obviousness does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dipm_lang.errors import RuntimeDipmError
from dipm_lang.ir.constants import EPS, SIN_EPS


__all__ = [
    "unit_norms",
    "unit_dots",
    "scale_units",
    "mag",
    "dir",
    "normalize",
    "recombine",
    "reverse",
    "linear_combination",
    "combine_units",
    "shift",
    "mix",
    "orth",
    "lowrank",
    "truncate",
    "truncate_energy",
]


def _units(W: Tensor, by: str) -> Tensor:
    """The units of W as the rows of a matrix."""
    if by == "out":
        return W
    if by == "in":
        return W.T
    if by == "matrix":
        return W.reshape(1, -1)
    raise ValueError(f"bad by {by!r}")


def _from_units(U: Tensor, by: str, shape: torch.Size) -> Tensor:
    """Inverse of `_units`."""
    if by == "out":
        return U
    if by == "in":
        return U.T
    return U.reshape(shape)


def _mag_shape(v: Tensor, by: str) -> Tensor:
    """Per-unit vector → Mag[by] (a 0-dim scalar for "matrix")."""
    return v.reshape(()) if by == "matrix" else v


def _per_unit(s: Tensor | float, count: int, dtype: torch.dtype) -> Tensor:
    """Mag[by] or a number → one value per unit, as a column to broadcast over unit entries."""
    s = torch.as_tensor(s, dtype=dtype)
    return s.reshape(-1).expand(count)[:, None] if s.dim() == 0 else s.reshape(count, 1)


def unit_norms(W: Tensor, by: str = "out") -> Tensor:
    """‖u‖ per unit."""
    return _mag_shape(torch.linalg.vector_norm(_units(W, by), dim=1), by)


def unit_dots(W: Tensor, V: Tensor, by: str = "out") -> Tensor:
    """⟨W_u, V_u⟩ per unit."""
    return _mag_shape((_units(W, by) * _units(V, by)).sum(dim=1), by)


def scale_units(W: Tensor, s: Tensor | float, by: str = "out") -> Tensor:
    """Each unit u of W times s[u]."""
    U = _units(W, by)
    return _from_units(U * _per_unit(s, U.shape[0], W.dtype), by, W.shape)


def mag(W: Tensor, by: str = "out") -> Tensor:
    """‖u‖ for every unit."""
    return unit_norms(W, by)


def dir(W: Tensor, by: str = "out", eps: float = EPS) -> Tensor:  # noqa: A001 - the language's name
    """u / ‖u‖ for every unit; a zero unit (‖u‖ ≤ eps) gives a zero direction."""
    U = _units(W, by)
    norms = torch.linalg.vector_norm(U, dim=1, keepdim=True)
    out = torch.where(norms > eps, U / torch.where(norms > eps, norms, 1.0), torch.zeros_like(U))
    return _from_units(out, by, W.shape)


normalize = dir


def recombine(D: Tensor, m: Tensor, by: str = "out") -> Tensor:
    """m ⊙ d unit by unit."""
    return scale_units(D, m, by)


def reverse(D: Tensor) -> Tensor:
    """−d."""
    return -D


def linear_combination(Ws: Sequence[Tensor], coeffs: Sequence[float | Tensor]) -> Tensor:
    """Σ cᵢ·Wᵢ."""
    return sum((torch.as_tensor(c, dtype=W.dtype) * W for W, c in zip(Ws, coeffs)), torch.zeros_like(Ws[0]))


def combine_units(Ws: Sequence[Tensor], coeffs: Sequence[float | Tensor], by: str = "out") -> Tensor:
    """Σ cᵢ ⊙ Wᵢ unit by unit."""
    return sum((scale_units(W, c, by) for W, c in zip(Ws, coeffs)), torch.zeros_like(Ws[0]))


def shift(D: Tensor, E: Tensor, t: float, by: str = "out", eps: float = EPS) -> Tensor:
    """SPEC §3 shift, unit by unit: slerp, or the normalised linear path where degenerate."""
    d, e = _units(D, by), _units(E, by)
    cos = (d * e).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin_theta = torch.sin(theta)
    zero_d = torch.linalg.vector_norm(d, dim=1, keepdim=True) <= eps
    zero_e = torch.linalg.vector_norm(e, dim=1, keepdim=True) <= eps
    degenerate = (sin_theta < SIN_EPS) | zero_d | zero_e
    safe_sin = torch.where(degenerate, 1.0, sin_theta)
    slerp = torch.sin((1 - t) * theta) / safe_sin * d + torch.sin(t * theta) / safe_sin * e
    linear = _units(dir(_from_units((1 - t) * d + t * e, by, D.shape), by, eps), by)
    return _from_units(torch.where(degenerate, linear, slerp), by, D.shape)


def mix(Ds: Sequence[Tensor], ws: Sequence[float | Tensor], by: str = "out", eps: float = EPS) -> Tensor:
    """normalize(Σ wᵢ·dᵢ)."""
    return dir(linear_combination(Ds, ws), by, eps)


def orth(D: Tensor, E: Tensor, by: str = "out", eps: float = EPS) -> Tensor:
    """normalize(d − ⟨d,e⟩·e) unit by unit."""
    d, e = _units(D, by), _units(E, by)
    residual = d - (d * e).sum(dim=1, keepdim=True) * e
    return dir(_from_units(residual, by, D.shape), by, eps)


def truncate(W: Tensor, rank: int | None) -> tuple[Tensor, float, float]:
    """`save(x, rank=N)` on a dense matrix: (W_N, ‖W − W_N‖², ‖W‖²), or W itself for no rank."""
    if rank is None:
        return W, 0.0, 0.0
    approx, _ = lowrank(W, rank)
    return approx, float(torch.linalg.matrix_norm(W - approx)) ** 2, float(torch.linalg.matrix_norm(W)) ** 2


def truncate_energy(W: Tensor, energy: float | None, max_rank: int | None) -> tuple[Tensor, float, float, list[float]]:
    """`save(x, energy=e, max_rank=N)` on a dense matrix (SPEC §7.6 read literally): the smallest k ≥ 1
    with Σ_{i≤k}σᵢ² ≥ e·Σσᵢ² among the singular values σ > 1e-10·σ₁ (all of them for e = 1 or none),
    at most N; returns (W_k, ‖W − W_k‖², ‖W‖², [relative error])."""
    S = torch.linalg.svdvals(W.to(torch.float64))
    S = S[S > 1e-10 * S[0]] if S.numel() and S[0] > 0 else S[:0]
    k = len(S)
    if energy is not None and energy < 1:
        squares = [float(s) ** 2 for s in S]
        total, running, k = sum(squares), 0.0, 0
        while k < len(squares) and running < energy * total:
            running += squares[k]
            k += 1
    k = max(1, min(k, max_rank) if max_rank is not None else k)
    approx, err = lowrank(W, k)
    return approx, float(torch.linalg.matrix_norm(W - approx)) ** 2, float(torch.linalg.matrix_norm(W)) ** 2, [float(err)]


def lowrank(W: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD: (W_r, ‖W − W_r‖_F / ‖W‖_F), the error 0 for W = 0."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    W_r = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r, :]
    total = torch.linalg.vector_norm(S)
    err = torch.linalg.vector_norm(S[r:]) / total if total > 0 else torch.zeros((), dtype=W.dtype)
    return W_r, err


def dora_update(W0: Tensor, delta: Tensor, magnitude: Tensor, names: Sequence[str] | None = None) -> Tensor:
    """A DoRA adapter's update m ⊙ normalize_rows(W0 + s·B·A) − W0 (SPEC §7.8), `delta` = s·B·A."""
    V = W0.to(delta.dtype) + delta
    norms = torch.linalg.vector_norm(V, dim=-1)
    zero = norms <= 1e-12
    if bool(zero.any()):
        name = repr(names[0]) if names else "#0"
        raise RuntimeDipmError(f"DoRA module {name}: row {int(zero.nonzero()[0, -1])} of W0 + s·B·A is zero, "
                               "so its direction (and PEFT's DoRA update) is undefined")
    return (magnitude.to(delta.dtype) / norms)[..., :, None] * V - W0.to(delta.dtype)
