"""Exact low-rank factors of LoRA, LoCon, LoHa and LoKr modules (SPEC §7.10).

Every kind reads as ΔW = B @ A with ΔW the module's update as a matrix: `m` output rows and
`n = in·kh·kw` columns for a convolution (torch's `weight.reshape(out, -1)` order).

- LoRA / LoCon: A = down (`[r, in(, kh, kw)]` flattened to `[r, n]`), B = up (`[m, r(, 1, 1)]`).
- LoHa, ΔW = (W1a W1b) ⊙ (W2a W2b): the Hadamard product of two rank-r1 / rank-r2 matrices is the
  rank-(r1·r2) product with B[i, p·r2+q] = W1a[i,p]·W2a[i,q] and A[p·r2+q, j] = W1b[p,j]·W2b[q,j]
  (the row-wise Khatri–Rao products), so it is exact, never m×n.
- LoKr, ΔW = W1 ⊗ W2: with W1 = B1 A1 and W2 = B2 A2 (an undecomposed W is W·I), the mixed-product
  property gives W1 ⊗ W2 = (B1 ⊗ B2)(A1 ⊗ A2), rank r1·r2. For a convolution LyCORIS writes
  kron(W1[..., None, None], W2) with W2 `[K, N, kh, kw]`; as a matrix that is W1 ⊗ W2.reshape(K, -1).

Shapes are validated from the header alone (`*_shape`), before any tensor is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LORA_ROLES = ("down", "up")
LOHA_ROLES = ("w1a", "w1b", "w2a", "w2b")
LOKR_ROLES = ("w1", "w1a", "w1b", "w2", "w2a", "w2b")


class ShapeError(ValueError):
    """A module's tensors do not fit together; the message says how (the caller adds file and module)."""


@dataclass(frozen=True)
class FactorShape:
    """What the header says about one module's update."""

    m: int  # output features
    n: int  # input features (in·kh·kw for a convolution)
    rank: int  # inner size of the exact factors B [m, rank], A [rank, n]
    kernel: tuple[int, ...] | None  # convolution kernel when the file shows one
    dim: int | None  # LyCORIS' "dim" for the alpha / dim scale; None: the scale is 1 (LoKr, both full)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def lora_shape(down: tuple[int, ...], up: tuple[int, ...]) -> FactorShape:
    if len(down) not in (2, 4) or len(up) != len(down):
        raise ShapeError(f"lora_down {list(down)} and lora_up {list(up)} must both be 2-D (Linear) "
                         "or both 4-D (convolution)")
    if len(up) == 4 and tuple(up[2:]) != (1, 1):
        raise ShapeError(f"lora_up {list(up)} has a {up[2]}×{up[3]} kernel; only 1×1 up-projections "
                         "(kohya's LoCon) are supported")
    rank = down[0]
    if up[1] != rank or rank == 0:
        raise ShapeError(f"ranks differ: lora_down {list(down)} vs lora_up {list(up)}")
    kernel = tuple(down[2:]) if len(down) == 4 else None
    return FactorShape(up[0], _numel(down[1:]), rank, kernel, rank)


def loha_shape(w1a, w1b, w2a, w2b) -> FactorShape:
    if len(w1a) != 2 or len(w2a) != 2 or len(w1b) not in (2, 4) or len(w2b) not in (2, 4):
        raise ShapeError(f"hada_w1_a {list(w1a)}, hada_w1_b {list(w1b)}, hada_w2_a {list(w2a)}, "
                         f"hada_w2_b {list(w2b)} are not LoHa factor shapes")
    r1, r2 = w1a[1], w2a[1]
    if w1b[0] != r1 or w2b[0] != r2 or r1 == 0 or r2 == 0:
        raise ShapeError(f"inner sizes differ: hada_w1_a {list(w1a)} / hada_w1_b {list(w1b)}, "
                         f"hada_w2_a {list(w2a)} / hada_w2_b {list(w2b)}")
    if w1a[0] != w2a[0] or _numel(w1b[1:]) != _numel(w2b[1:]):
        raise ShapeError(f"the two Hadamard factors have different shapes: {w1a[0]}×{_numel(w1b[1:])} "
                         f"vs {w2a[0]}×{_numel(w2b[1:])}")
    kernel = tuple(w1b[2:]) if len(w1b) == 4 else (tuple(w2b[2:]) if len(w2b) == 4 else None)
    # LyCORIS' loader takes dim = hada_w1_b.size(0) (`LohaModule.make_module_from_state_dict`).
    return FactorShape(w1a[0], _numel(w1b[1:]), r1 * r2, kernel, r1)


def lokr_shape(shapes: dict[str, tuple[int, ...]]) -> FactorShape:
    def half(full: str, a: str, b: str) -> tuple[int, int, int, tuple[int, ...] | None, bool]:
        """(rows, columns, inner size, kernel, decomposed) of W1 or W2."""
        if full in shapes:
            if a in shapes or b in shapes:
                raise ShapeError(f"has both lokr_{full} and its factors lokr_{a}/lokr_{b}")
            shape = shapes[full]
            if len(shape) not in (2, 4):
                raise ShapeError(f"lokr_{full} {list(shape)} must be 2-D or 4-D")
            columns = _numel(shape[1:])
            return shape[0], columns, columns, (tuple(shape[2:]) if len(shape) == 4 else None), False
        if a not in shapes or b not in shapes:
            raise ShapeError(f"needs lokr_{full} or both lokr_{a} and lokr_{b}")
        sa, sb = shapes[a], shapes[b]
        if len(sa) != 2 or len(sb) not in (2, 4) or sa[1] != sb[0] or sa[1] == 0:
            raise ShapeError(f"lokr_{a} {list(sa)} and lokr_{b} {list(sb)} do not multiply")
        return sa[0], _numel(sb[1:]), sa[1], (tuple(sb[2:]) if len(sb) == 4 else None), True

    l1, c1, r1, k1, d1 = half("w1", "w1a", "w1b")
    l2, c2, r2, k2, d2 = half("w2", "w2a", "w2b")
    if k1 is not None and k1 != (1, 1):
        raise ShapeError(f"lokr_w1 carries a {k1} kernel; LyCORIS puts the kernel on W2 only")
    # LyCORIS: dim = w1_a.size(1) if W1 is decomposed, else w2_a.size(1); both full → scale 1.
    dim = r1 if d1 else (r2 if d2 else None)
    return FactorShape(l1 * l2, c1 * c2, r1 * r2, k2, dim)


# --- factors from tensors (computed in the caller's dtype) --------------------------------------

def lora_factors(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def loha_factors(w1a, w1b, w2a, w2b) -> tuple[torch.Tensor, torch.Tensor]:
    w1b, w2b = w1b.reshape(w1b.shape[0], -1), w2b.reshape(w2b.shape[0], -1)
    B = (w1a[:, :, None] * w2a[:, None, :]).reshape(w1a.shape[0], -1)  # B[i, p·r2+q] = W1a[i,p]·W2a[i,q]
    A = (w1b[:, None, :] * w2b[None, :, :]).reshape(-1, w1b.shape[1])  # A[p·r2+q, j] = W1b[p,j]·W2b[q,j]
    return B, A


def lokr_factors(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    def half(full: str, a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        if full in t:
            W = t[full].reshape(t[full].shape[0], -1)
            return W, torch.eye(W.shape[1], dtype=W.dtype, device=W.device)  # W = W · I
        return t[a], t[b].reshape(t[b].shape[0], -1)

    B1, A1 = half("w1", "w1a", "w1b")
    B2, A2 = half("w2", "w2a", "w2b")
    return torch.kron(B1, B2), torch.kron(A1, A2)

