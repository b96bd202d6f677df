"""Rank by energy (SPEC §7.6): per-module ranks from singular values, and truncation to them.

`save(x, path, energy=e, max_rank=N)` keeps, per module, the smallest rank k ≥ 1 of the compact
SVD with Σ_{i≤k} σᵢ² ≥ e · Σ σᵢ² (0 < e ≤ 1; e = 1 keeps the numerical rank), capped by
max_rank. Ranks differ by module, so a batch truncates into one `LowRank` per module.

The rule itself (`ranks_from_singular_values`) works on any singular values, so the dense
randomized path (`randomized.py`) uses the same one. Argument errors are `ValueError`s with a
message meant for the user; the caller turns them into its own error type.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dipm_lang.backend.factored_svd import F64, CompactSVD, compact_svd
from dipm_lang.backend.lowrank import LowRank

__all__ = ["check_energy_arguments", "ranks_from_singular_values", "energy_ranks", "truncate_to_ranks",
           "truncate_by_energy", "save_by_energy"]

Number = float | Tensor


def check_energy_arguments(energy: Number | None, max_rank: int | Tensor | None) -> None:
    """ValueError unless 0 < energy ≤ 1 (each value, if per module) and max_rank ≥ 1 (whole numbers)."""
    if energy is not None:
        values = torch.as_tensor(energy, dtype=F64)
        if values.numel() == 0 or not bool(((values > 0) & (values <= 1)).all()):
            raise ValueError(f"energy must be a fraction with 0 < energy ≤ 1, got {_show(energy)}")
    if max_rank is not None:
        if isinstance(max_rank, bool):
            raise ValueError(f"max_rank must be a whole number ≥ 1, got {max_rank!r}")
        values = torch.as_tensor(max_rank)
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool \
                or values.numel() == 0 or not bool((values >= 1).all()):
            raise ValueError(f"max_rank must be a whole number ≥ 1, got {_show(max_rank)}")


def _check_ranks(ranks: int | Tensor) -> None:
    values = torch.as_tensor(ranks)
    if isinstance(ranks, bool) or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool \
            or values.numel() == 0 or not bool((values >= 1).all()):
        raise ValueError(f"ranks must be whole numbers ≥ 1, got {_show(ranks)}")


def _show(value: object) -> str:
    if isinstance(value, Tensor):
        return str(value.tolist())
    return repr(value)


def ranks_from_singular_values(S: Tensor, keep: Tensor, energy: Number | None = None,
                               max_rank: int | Tensor | None = None) -> Tensor:
    """The SPEC §7.6 rank of each module from its singular values (int64, shape `[...]`).

    `S` [..., k] descending, `keep` [..., k] which ones count as nonzero (the compact rule). With
    energy e < 1: the smallest k with Σ_{i≤k}σᵢ² ≥ e·Σσᵢ²; e = 1 or None: the numerical rank. Then
    capped by max_rank, and at least 1 (a zero module keeps one zero direction, so it can still be
    written as a LoRA of rank 1).
    """
    check_energy_arguments(energy, max_rank)
    batch = S.shape[:-1]
    numerical = keep.sum(-1)
    if energy is None:
        ranks = numerical
    else:
        e = torch.as_tensor(energy, dtype=F64, device=S.device).expand(batch)
        squares = torch.where(keep, S.to(F64), torch.zeros((), dtype=F64, device=S.device)).square()
        cumulative = squares.cumsum(-1)
        total = cumulative[..., -1:] if cumulative.shape[-1] else torch.zeros(*batch, 1, dtype=F64,
                                                                               device=S.device)
        # Smallest k with cumulative[k-1] ≥ e·total; `total` is the cumsum's own last entry, so
        # e = 1 is reached exactly at the numerical rank whatever the rounding of the sum.
        below = (cumulative < e[..., None] * total).sum(-1) + 1
        ranks = torch.where(e >= 1, numerical, torch.minimum(below, numerical))
    if max_rank is not None:
        ranks = torch.minimum(ranks, torch.as_tensor(max_rank, device=S.device).expand(batch))
    return ranks.clamp(min=1).to(torch.int64)


def energy_ranks(x: LowRank, energy: Number | None = None, max_rank: int | Tensor | None = None) -> Tensor:
    """Per-module kept rank k ≥ 1 of x under SPEC §7.6 (int64, shape `x.batch_shape`), on the factors."""
    check_energy_arguments(energy, max_rank)
    svd = compact_svd(x)
    return ranks_from_singular_values(svd.S, svd.keep, energy, max_rank)


def truncate_to_ranks(x: LowRank, ranks: int | Tensor, svd: CompactSVD | None = None
                      ) -> tuple[list[LowRank], Tensor]:
    """Truncate each module of x to its own rank: (one LowRank per module, relative errors dropped).

    `ranks`: a number ≥ 1 or one per module (`[...]`). Module g becomes B = U_k·diag(S_k),
    A = V_kᵀ with exactly k = ranks[g] columns (zero directions appended when the module has fewer
    nonzero singular values), in x's dtype and without batch dims; the list follows the batch in
    row-major order (`x.batch_shape` flattened). The error is √(Σ_{i>k}σᵢ²)/√(Σσᵢ²) per module
    (float64, shape `x.batch_shape`; 0 for a zero module). `svd`: `compact_svd(x)` if already known.
    """
    _check_ranks(ranks)
    svd = compact_svd(x) if svd is None else svd
    batch = x.batch_shape
    ranks = torch.as_tensor(ranks, device=x.device).expand(batch).to(torch.int64)
    count = math.prod(batch)
    U = svd.U.reshape(count, x.m, -1)
    S = svd.S.reshape(count, -1)
    Vh = svd.Vh.reshape(count, -1, x.n)
    flat_ranks = ranks.reshape(count)
    pieces, errors = [], []
    for g in range(count):
        k = int(flat_ranks[g])
        available = min(k, S.shape[-1])
        B = torch.zeros(x.m, k, dtype=F64, device=x.device)
        A = torch.zeros(k, x.n, dtype=F64, device=x.device)
        B[:, :available] = U[g, :, :available] * S[g, :available]
        A[:available] = Vh[g, :available]
        pieces.append(LowRank(B.to(x.dtype), A.to(x.dtype)))
        total = torch.linalg.vector_norm(S[g])
        dropped = torch.linalg.vector_norm(S[g, available:])
        errors.append(dropped / total if total > 0 else torch.zeros((), dtype=F64, device=x.device))
    error = torch.stack(errors).reshape(batch) if errors else torch.zeros(batch, dtype=F64, device=x.device)
    return pieces, error


def truncate_by_energy(x: LowRank, energy: Number | None = None, max_rank: int | Tensor | None = None
                       ) -> tuple[list[LowRank], Tensor, Tensor]:
    """`energy_ranks` and `truncate_to_ranks` with one SVD: (per-module LowRanks, ranks, errors)."""
    check_energy_arguments(energy, max_rank)
    svd = compact_svd(x)
    ranks = ranks_from_singular_values(svd.S, svd.keep, energy, max_rank)
    pieces, errors = truncate_to_ranks(x, ranks, svd)
    return pieces, ranks, errors


def save_by_energy(x: LowRank, energy: Number | None, max_rank: int | Tensor | None
                   ) -> tuple[list[LowRank], float, float, list[float]]:
    """`save(x, energy=e, max_rank=N)` on a batch: (one LowRank per module, the squared Frobenius norms
    dropped and total summed over the batch — as `lowrank.truncate` reports them — and each module's
    relative error dropped, in batch order). One compact SVD per module, on the factors."""
    check_energy_arguments(energy, max_rank)
    svd = compact_svd(x)
    ranks = ranks_from_singular_values(svd.S, svd.keep, energy, max_rank)
    pieces, errors = truncate_to_ranks(x, ranks, svd)
    totals = svd.S.square().sum(-1).reshape(-1)
    relative = errors.reshape(-1).to(F64)
    dropped = float((relative.square() * totals).sum())
    return pieces, dropped, float(totals.sum()), [float(e) for e in relative]
