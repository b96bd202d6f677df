"""The `*_svd` baselines per module: dipm's randomized truncation vs PEFT's full SVD, side by side.

    python -m benchmarks.svd_baselines --out benchmarks/results          # 7B shapes (~5-10 min on 2 cores)
    python -m benchmarks.svd_baselines --quick --out /tmp/bench          # small shapes, seconds

For each of `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd` and each module
shape (7B: q_proj 4096×4096 and up_proj 11008×4096; two rank-`--rank` sources from
`benchmarks/adapters.py`, weights [0.7, 0.3], density 0.5), in one process:
- dipm: `dipm_lang.evaluate` of the merge on in-memory factors (parsing and planning included),
  best of `--repeats`; and the same with `exact=true` (the full SVD; one run);
- PEFT: its per-module work in `LoraModel._svd_generalized_task_arithmetic_weighted_adapter`,
  called as `add_weighted_adapter` calls it — ΔWᵢ = BᵢAᵢ·scale, `merge_utils.<method>`,
  `torch.linalg.svd(full_matrices=True)` (its default), U_k·S_k and Vh_k; one run;
- the truncation error of dipm's result, ‖M − BA‖/‖M‖, over the optimal one ‖σ_{k+1:}‖/‖σ‖, both on
  dipm's own merged matrix M (`delta_tiles.merge_delta`, what both of dipm's paths truncate; for DARE
  PEFT's masks come from torch's global generator, so its M differs by design). For the methods
  without random masks, M is also compared with PEFT's merged matrix (`merge_max_rel_diff`).

Writes `svd_baselines.json` and `svd_baselines.md` under `--out`; nothing else (no files to clean).
Targets (issue 17): ≥ 20× PEFT per 7B-shaped module at rank 16, error ≤ 1.01× optimal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks import adapters as AD

METHODS = ("ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
MODULES = {"q_proj": 0, "up_proj": 5}  # projection → index in AD.PROJECTIONS
WEIGHTS = (0.7, 0.3)
DENSITY = 0.5
SCALE = 2.0  # lora_alpha 32 / r 16, folded into B
SPEEDUP_GOAL = 20.0
ERROR_GOAL = 1.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.svd_baselines", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256/704-wide modules instead of 7B shapes (seconds)")
    p.add_argument("--rank", type=int, default=16, help="rank of the sources and of the result (default 16)")
    p.add_argument("--repeats", type=int, default=None, help="dipm runs per point, the fastest reported (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--modules", nargs="*", default=list(MODULES), choices=list(MODULES),
                   help="module shapes to measure (default both)")
    p.add_argument("--also", nargs="*", default=[], metavar="METHOD:MODULE",
                   help="extra points beyond --methods × --modules, e.g. ties_svd:up_proj")
    p.add_argument("--no-exact", action="store_true", help="skip dipm's exact=true run (a full SVD per point)")
    p.add_argument("--update", action="store_true",
                   help="re-measure these points in <out>/svd_baselines.json and keep its other rows (each row "
                        "records when it was measured and the load then)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p.parse_args(argv)


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def sources(m: int, n: int, rank: int, proj: int):
    from dipm_lang.backend.lowrank import LowRank

    out = []
    for adapter in range(2):
        b, a = AD.module_factors(m, n, rank, set_seed=0, adapter=adapter, layer=0, proj=proj)
        out.append(LowRank((SCALE * b).contiguous(), a.contiguous()))
    return out


def expression(method: str, rank: int, exact: bool) -> str:
    extra = ', majority_sign_method="total"' if "ties" in method else ""
    seed = ", seed=0" if method.startswith("dare") else ""
    return (f"{method}([X0, X1], [{WEIGHTS[0]}, {WEIGHTS[1]}], density={DENSITY}{extra}{seed}, rank={rank}"
            f"{', exact=true' if exact else ''})")


def peft_module(method: str, xs, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PEFT's per-module work for `combination_type=method` (see the module docstring); returns
    (B, A, the merged matrix)."""
    from peft.utils import merge_utils

    deltas = [x.B @ x.A for x in xs]  # get_delta_weight: B·A·scaling (the scale is folded into B here)
    w = torch.tensor(WEIGHTS)
    base = method[:-len("_svd")]
    if base == "ties":
        merged = merge_utils.ties(deltas, w, DENSITY, "total")
    elif base == "dare_linear":
        merged = merge_utils.dare_linear(deltas, w, DENSITY)
    elif base == "dare_ties":
        merged = merge_utils.dare_ties(deltas, w, DENSITY, "total")
    else:
        merged = merge_utils.magnitude_prune(deltas, w, DENSITY)
    U, S, Vh = torch.linalg.svd(merged, full_matrices=True)
    return U[:, :rank] @ torch.diag(S[:rank]), Vh[:rank, :], merged


def dipm_merged(method: str, xs, name: str) -> torch.Tensor:
    """The m×n matrix dipm truncates (the same tiles, pruning cut and masks as its kernel)."""
    from dipm_lang.backend import baselines as BL
    from dipm_lang.backend.delta_tiles import merge_delta
    from dipm_lang.ops.baselines import METHODS as TABLE

    merge = TABLE[method]
    masks = ([BL.dare_rows(0, name, i, "delta", xs[0].n) for i in range(len(xs))]
             if BL.needs_masks(merge, DENSITY) else None)
    return merge_delta(merge, xs, list(WEIGHTS), DENSITY, "total" if "ties" in method else None, masks)


def measure(method: str, proj: str, m: int, n: int, rank: int, repeats: int, exact_too: bool, log) -> dict:
    import dipm_lang

    xs = sources(m, n, rank, MODULES[proj])
    name = "m"
    inputs = {"X0": {name: xs[0]}, "X1": {name: xs[1]}}
    fast_s, fast = best_of(lambda: dipm_lang.evaluate(expression(method, rank, False), **inputs), repeats)
    exact_s, exact = (best_of(lambda: dipm_lang.evaluate(expression(method, rank, True), **inputs), 1)
                      if exact_too else (None, None))
    peft_s, (pB, pA, peft_merged) = best_of(lambda: peft_module(method, xs, rank), 1)
    M = dipm_merged(method, xs, name).double()
    S = torch.linalg.svdvals(M)
    total = float(S.norm())
    optimum = float(S[rank:].norm()) / total

    def error(x) -> float:  # x: one module's factors
        return float((M - x.B.double() @ x.A.double()).norm()) / total

    row = {"method": method, "module": proj, "m": m, "n": n, "rank": rank,
           "dipm_s": fast_s, "dipm_exact_s": exact_s, "peft_s": peft_s,
           "speedup_vs_peft": peft_s / fast_s, "exact_speedup_vs_peft": peft_s / exact_s if exact_s else None,
           "optimal_error": optimum, "dipm_error": error(fast[name]),
           "dipm_exact_error": error(exact[name]) if exact is not None else None,
           "peft_error_on_its_merge": float((peft_merged.double() - pB.double() @ pA.double()).norm()
                                            / peft_merged.double().norm())}
    row["error_ratio"] = row["dipm_error"] / optimum
    if not method.startswith("dare"):
        # entries at the pruning cut or with a near-zero sign sum can fall either way between two
        # roundings of the products (tiles vs one GEMM): a few entries differ, the matrix does not
        row["merge_rel_diff"] = float((M - peft_merged.double()).norm()) / total
    log(f"  {row}")
    return row


def _warm_up(rank: int) -> None:
    """Imports and first calls (PEFT's merge_utils, dipm's compiler, MKL's SVD) before any timing."""
    import dipm_lang
    from peft.utils import merge_utils  # noqa: F401

    xs = sources(256, 256, rank, 0)
    for method in METHODS:
        dipm_lang.evaluate(expression(method, rank, False), X0={"m": xs[0]}, X1={"m": xs[1]})
        peft_module(method, xs, rank)


def machine(threads: int | None) -> dict:
    from importlib.metadata import version

    return {"cores": os.cpu_count(), "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
            "peft": version("peft"), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_start": os.getloadavg()[0]}


def render(results: dict) -> str:
    mach = results["machine"]
    lines = ["# `*_svd` baselines: randomized truncation vs PEFT's full SVD (per module)", "",
             f"{mach['cores']} cores, {mach['threads']} torch threads, torch {mach['torch']}, peft {mach['peft']}, "
             f"{mach['date']}; load average {mach['loadavg_start']:.1f} at the start, "
             f"{mach.get('loadavg_end', 0):.1f} at the end (the machine was shared: ratios are measured side by "
             "side, absolute times are not steady).", "",
             f"Command: `{results['command']}`. Shapes: {results['shapes']}; two rank-{results['rank']} sources, "
             f"weights {list(WEIGHTS)}, density {DENSITY}. dipm: best of {results['repeats']}; exact and PEFT: one run.",
             "", "| method | module | dipm | PEFT | speed-up | dipm exact=true | exact vs PEFT | error / optimal |"
             " optimal error | PEFT merge diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        diff = f"{r['merge_rel_diff']:.1e}" if "merge_rel_diff" in r else "(own masks)"
        exact = (f"{r['dipm_exact_s']:.3g} s | {r['exact_speedup_vs_peft']:.2f}×" if r["dipm_exact_s"]
                 else "— | —")
        lines.append(f"| `{r['method']}` | {r['module']} {r['m']}×{r['n']} | {r['dipm_s']:.3g} s | "
                     f"{r['peft_s']:.3g} s | {r['speedup_vs_peft']:.1f}× | {exact} | {r['error_ratio']:.5f} | {r['optimal_error']:.3e} | {diff} |")
    for command in results.get("updates", []):
        lines += ["", f"Points re-measured by `{command}` (each row's date and load are in svd_baselines.json)."]
    lines += ["", "## Targets", "", "| target | measured | goal | result |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | **{t['result']}** |")
    lines += ["", "Error: ‖M − BA‖/‖M‖ on dipm's merged matrix M, over the optimum ‖σ_{k+1:}‖/‖σ‖ of M. "
              "PEFT merge diff: ‖M − M_PEFT‖/‖M‖ (float32: the products' rounding differs between dipm's row tiles and "
              "PEFT's one GEMM, so an entry at the pruning cut or with a near-zero sign sum can fall either way)."]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict], quick: bool) -> list[dict]:
    slowest = min(r["speedup_vs_peft"] for r in rows)
    worst = max(r["error_ratio"] for r in rows)
    where = "small" if quick else "7B-shaped"
    return [{"target": f"*_svd per {where} module vs PEFT", "value": slowest, "measured": f"{slowest:.1f}× (slowest)",
             "goal": f"≥ {SPEEDUP_GOAL:g}×", "result": "PASS" if slowest >= SPEEDUP_GOAL else "MISS"},
            {"target": "truncation error vs optimal", "value": worst, "measured": f"{worst:.5f}× (worst)",
             "goal": f"≤ {ERROR_GOAL}×", "result": "PASS" if worst <= ERROR_GOAL else "MISS"}]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = AD.SMALL if args.quick else AD.LLAMA_7B
    repeats = args.repeats or (2 if args.quick else 3)
    dims = {"q_proj": (shapes.hidden, shapes.hidden), "up_proj": (shapes.ffn, shapes.hidden)}
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    command = "python -m benchmarks.svd_baselines " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"machine": machine(args.threads), "shapes": shapes.name, "rank": args.rank, "repeats": repeats,
               "command": command, "rows": []}
    if args.update:  # the earlier run's header and rows; measured points replace theirs
        results = json.loads((args.out / "svd_baselines.json").read_text())
        results.setdefault("updates", []).append(command)
    _warm_up(args.rank)
    points = [(method, proj) for method in args.methods for proj in args.modules]
    points += [tuple(p.split(":")) for p in args.also if tuple(p.split(":")) not in points]
    text = ""
    for method, proj in points:
        m, n = dims[proj]
        log(f"[svd_baselines] {method} {proj} {m}×{n}")
        row = measure(method, proj, m, n, args.rank, repeats, not args.no_exact, log)
        row["measured"] = {"date": machine(args.threads)["date"], "loadavg": os.getloadavg()[0]}
        rows = results["rows"]
        at = next((i for i, r in enumerate(rows) if (r["method"], r["module"]) == (method, proj)), len(rows))
        rows[at:at + 1] = [row]
        text = write(results, args)  # after every point: a long run stopped early keeps what it measured
    print(text)
    return 0


def write(results: dict, args: argparse.Namespace) -> str:
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["targets"] = targets(results["rows"], args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "svd_baselines.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (args.out / "svd_baselines.md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
