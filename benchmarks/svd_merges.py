"""`iso`, `knots` and `tsv` per module at Llama-7B shapes: the factored kernels against the dense path.

    python -m benchmarks.svd_merges [--adapters 3] [--rank 16] [--repeat 3] [--no-dense] \
        [--shapes 4096x4096,11008x4096] [--threads 1] [--device cpu|cuda] [--out benchmarks/results/svd_merges.md]

For each module shape (default: q_proj 4096×4096 and up_proj 11008×4096) and each method, n random
rank-r adapters (float32 factors) are merged by
- the factored kernel dipm runs (`backend/svd_merges`: QR of the stacked factors and an SVD of a small
  core, float64, never an m×n matrix), and
- the dense path a tool without factors takes (`backend/svd_merges_dense`, the tests' reference
  formulas): build each ΔW = B·A, then full SVDs of the m×n (or m×n·k) matrices, in float32 as such a
  tool would (`--dense-dtype float64` for the exact reference).
It reports the time of each (best of `--repeat`, after a warm-up; the dense path once), the speed-up,
the extra peak memory of each (measured in a forked child: its peak RSS above its RSS at the start),
and, with `--dense-dtype float64`, the relative difference ‖factored − dense‖/‖dense‖. A float32
dense path is timed only: its SVD of an m×n matrix of rank ≤ n·r has ~min(m, n) singular values of
rounding noise (~1e-7·σ₁) above the numerical-rank cut-off, so a float32 `iso` averages them into σ̄
and is wrong by O(1) — one more reason to compute these merges from the factors. The dense path runs
only on modules up to `--dense-max-entries` (minutes each on a CPU). The speed-up is the result to
quote: ratios, never absolute times.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import resource
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from dipm_lang.backend import svd_merges as SM
from dipm_lang.backend import svd_merges_dense as SMD
from dipm_lang.backend.lowrank import LowRank

METHODS: dict[str, tuple[Callable, Callable]] = {
    "iso": (lambda xs, w: SM.iso(xs, w), lambda Ws, w: SMD.iso(Ws, w)),
    "knots (ties, density 0.2)": (lambda xs, w: SM.knots(xs, w, "ties", 0.2),
                                  lambda Ws, w: SMD.knots(Ws, w, "ties", 0.2)),
    "knots (linear)": (lambda xs, w: SM.knots(xs, w, "linear"), lambda Ws, w: SMD.knots(Ws, w, "linear", None)),
    "tsv": (lambda xs, w: SM.tsv(xs, w), lambda Ws, w: SMD.tsv(Ws, w, None)),
}


def adapters(m: int, n: int, count: int, rank: int, device: str, seed: int = 0) -> list[LowRank]:
    """`count` random rank-`rank` updates with LoRA-like scales (B small, A ~ 1/√n)."""
    generator = torch.Generator().manual_seed(seed)
    return [LowRank((0.01 * torch.randn(m, rank, generator=generator)).to(device),
                    (torch.randn(rank, n, generator=generator) / n ** 0.5).to(device)) for _ in range(count)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_child(fn: Callable[[], object]) -> tuple[object, float]:
    """fn()'s result and its extra peak memory in MiB, run in a forked child (CPU only)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send (result, extra peak), exit without cleanup
        try:
            start = _rss_bytes()
            result = fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            payload = pickle.dumps((result, max(0, peak - start) / 2 ** 20))
        except BaseException as error:  # noqa: BLE001 - reported by the parent
            payload = pickle.dumps((error, 0.0))
        with os.fdopen(write, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        result, extra = pickle.loads(inp.read())
    os.waitpid(pid, 0)
    if isinstance(result, BaseException):
        raise result
    return result, extra


def timed(fn: Callable[[], object], repeat: int, device: str) -> tuple[float, object]:
    def once():
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out
    once()  # warm-up
    runs = [once() for _ in range(repeat)]
    best = min(t for t, _ in runs)
    return best, runs[-1][1]


def measure(m: int, n: int, args, rows_so_far: list[dict]) -> list[dict]:
    xs = adapters(m, n, args.adapters, args.rank, args.device)
    weights = [1.0, 0.5, 0.75, 0.25][: args.adapters] + [1.0] * max(0, args.adapters - 4)
    dense_dtype = getattr(torch, args.dense_dtype)
    rows = []
    for name, (factored, dense) in METHODS.items():
        def run_factored():
            seconds, out = timed(lambda: factored(xs, weights), args.repeat, args.device)
            return seconds, out.B.cpu(), out.A.cpu()

        def run_dense():
            Ws = [(x.B.to(dense_dtype) @ x.A.to(dense_dtype)) for x in xs]
            start = time.perf_counter()
            W = dense(Ws, weights)
            if args.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start, W.cpu()

        def child(fn):  # peak memory is measured on the CPU only
            return in_child(fn) if args.device == "cpu" else (fn(), float("nan"))

        (f_s, B, A), f_mib = child(run_factored)
        row = dict(shape=f"{m}×{n}", method=name, factored_s=f_s, factored_mib=f_mib, rank=B.shape[-1])
        if args.dense and m * n <= args.dense_max_entries:
            (d_s, W), d_mib = child(run_dense)
            got = (B.double() @ A.double())
            row.update(dense_s=d_s, dense_mib=d_mib, speedup=d_s / f_s)
            if args.dense_dtype == "float64":  # a float32 dense path is no reference: see the module doc
                row["difference"] = float((got - W.double()).norm() / W.double().norm().clamp_min(1e-30))
            del W, got
        rows.append(row)
        print(_line(row), flush=True)
        if args.out:  # after every row: a long run leaves what it measured
            Path(args.out).write_text(markdown(rows_so_far + rows, args))
    return rows


def _line(row: dict) -> str:
    text = f"{row['shape']:>11}  {row['method']:26}  factored {row['factored_s'] * 1e3:9.1f} ms ({row['factored_mib']:.0f} MiB)"
    if "dense_s" in row:
        text += f"  dense {row['dense_s']:8.2f} s ({row['dense_mib']:.0f} MiB)  speed-up {row['speedup']:8.0f}×"
    if "difference" in row:
        text += f"  difference {row['difference']:.1e}"
    return text


def markdown(rows: list[dict], args) -> str:
    header = (f"*Machine:* {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device `{args.device}`; {args.adapters} adapters of rank {args.rank}, "
              f"float32 factors, weights {[1.0, 0.5, 0.75, 0.25][: args.adapters]}; dense path in {args.dense_dtype}; "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.2f}.\n\n")
    lines = ["| module | method | out rank | factored | factored peak MiB | dense | dense peak MiB | speed-up | difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    def cell(r: dict, key: str, form: str, unit: str = "") -> str:
        return format(r[key], form) + unit if key in r else "—"

    for r in rows:
        lines.append(f"| {r['shape']} | `{r['method']}` | {r['rank']} | {r['factored_s'] * 1e3:.1f} ms | "
                     f"{r['factored_mib']:.0f} | {cell(r, 'dense_s', '.2f', ' s')} | {cell(r, 'dense_mib', '.0f')} | "
                     f"{cell(r, 'speedup', '.0f', '×')} | {cell(r, 'difference', '.1e')} |")
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shapes", default="4096x4096,11008x4096", help="m×n per module, comma separated")
    parser.add_argument("--no-dense", dest="dense", action="store_false", help="time the factored kernels only")
    parser.add_argument("--dense-dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--dense-max-entries", type=int, default=4096 * 4096,
                        help="run the dense path only on modules with at most this many entries (minutes each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steady on a shared machine, and safe to fork)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None, help="write the table as markdown here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.lower().replace("×", "x").split("x"))
        rows += measure(m, n, args, rows)


if __name__ == "__main__":
    main()
