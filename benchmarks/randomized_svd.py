"""Randomized vs full SVD for one 5632×2048 float32 matrix at rank 16 (the `extract` / `*_svd` case).

    python -m benchmarks.randomized_svd [--repeat 5] [--rank 16] [--m 5632] [--n 2048] [--threads N]

Two matrices: a Gaussian one (flat, Marchenko–Pastur spectrum) and one with a power-law spectrum
σᵢ = i^-0.7 plus a little noise (what a fine-tuning delta looks like). For each it prints the time of
`torch.linalg.svd(full_matrices=False)` + truncation (`exact=True`), of the randomized path, their
ratio, and both errors with their ratio (the randomized error must be ≤ 1.01× the optimal one).
Times are the best of `--repeat` runs, after one warm-up. On a shared machine, short multi-threaded
runs suffer most from other load; `--threads 1` gives a steadier comparison.
"""

from __future__ import annotations

import argparse
import time

import torch

from dipm_lang.backend.randomized import randomized_lowrank


def power_law(m: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    r = min(m, n)
    left = torch.linalg.qr(torch.randn(m, r, generator=generator)).Q
    right = torch.linalg.qr(torch.randn(n, r, generator=generator)).Q
    spectrum = torch.arange(1, r + 1, dtype=torch.float32) ** -0.7
    noise = 1e-3 * torch.randn(m, n, generator=generator) / (m * n) ** 0.25
    return (left * spectrum) @ right.T + noise


def best_time(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up (MKL initialisation, allocator)
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=5632)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.m}×{args.n} float32, rank {args.rank}")
    matrices = {
        "gaussian": torch.randn(args.m, args.n, generator=torch.Generator().manual_seed(0)),
        "power-law": power_law(args.m, args.n, 1),
    }
    for name, W in matrices.items():
        full_s, (_, full_error) = best_time(lambda: randomized_lowrank(W, args.rank, seed=0, exact=True),
                                            args.repeat)
        fast_s, (_, fast_error) = best_time(lambda: randomized_lowrank(W, args.rank, seed=0), args.repeat)
        print(f"{name:10}  full SVD {full_s:7.3f} s   randomized {fast_s:7.3f} s   "
              f"speed-up {full_s / fast_s:6.1f}x   error {float(fast_error):.6f} vs optimal "
              f"{float(full_error):.6f} (ratio {float(fast_error) / float(full_error):.5f})")


if __name__ == "__main__":
    main()
