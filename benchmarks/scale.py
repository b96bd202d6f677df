"""dipm at the sizes people use: 70B shapes, rank 256, 50 adapters (dipm alone; PEFT does not fit here).

    python -m benchmarks.scale --out benchmarks/results                    # full sizes (tens of GB written)
    python -m benchmarks.scale --quick --out /tmp/bench                    # tiny shapes: the code paths
    python -m benchmarks.scale --sections 70b --layers-70b 8 --out …       # a part, fewer layers

Sections (each measured side by side in one run; adapters from `benchmarks/adapters.py`):
- `70b`: Llama-70B shapes (hidden 8192, FFN 28672, GQA k/v of 1024 rows, all 7 projections, r=16):
  `transfer` per module in process (one layer), and as a whole process over `--layers-70b` layers
  (default 80) against the I/O floor (`benchmarks/io_floor.py`), peak RSS against inputs + output.
- `rank`: rank `--rank` (default 256) at 7B shapes: per module in process, every factored recipe and
  the `svd` merge against computing the dense product B·A once (what any dense method pays first);
  and `transfer` as a whole process over 2 layers against the floor.
- `adapters`: `--adapters` (default 50) adapters at 7B shapes, 2 layers: `multitask` (a rank-800
  intermediate), `knots` (TIES, density 0.2), `tsv`, `iso` and `ties_svd` (`--methods` for fewer),
  each as a whole process against the floor (an output of the method's size), its peak against the
  largest single input, time per input MiB; and the `svd` merge of all of them per module in process.

`--merge` keeps the other sections of an existing `<out>/scale.json` (e.g. `--sections adapters
--merge` re-measures one section and re-renders `scale.md` with all).

Writes `scale.json` and `scale.md` under `--out`; adapters and outputs go to `--work` (default
`<out>/tmp-scale`), deleted at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks import adapters as AD
from benchmarks.suite import Settings, Suite, method_expr, recipe_expr

TINY_GQA = AD.Shapes(hidden=128, ffn=448, name="tiny-gqa-shapes", kv=32)
SECTIONS = ("70b", "rank", "adapters")
RECIPES = ("transfer", "detox", "multitask")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few layers and adapters: the code paths")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--layers-70b", type=int, default=None, help="layers of the 70B whole-process run (default 80)")
    p.add_argument("--rank", type=int, default=None, help="the high rank (default 256)")
    p.add_argument("--adapters", type=int, default=None, help="inputs of the many-adapter merge (default 50)")
    p.add_argument("--methods", nargs="*", default=None, choices=MANY_METHODS,
                   help="the many-adapter merges to run (default all)")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of <out>/scale.json this run does not measure (re-rendering scale.md)")
    p.add_argument("--repeats", type=int, default=None, help="in-process runs per point, fastest reported")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every process")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    return p.parse_args(argv)


def suite(args: argparse.Namespace, name: str, shapes: AD.Shapes, rank: int) -> Suite:
    work = (args.work or args.out / "tmp-scale").resolve() / name
    repeats = args.repeats or (1 if args.quick else 3)
    return Suite(Settings(shapes=shapes, rank=rank, repeats=1, inproc_repeats=repeats, work=work))


def dense_product_s(s: Suite, inputs: dict, repeats: int) -> float:
    """Best-of time of B·A for every module of one input (the dense product, computed once)."""
    from benchmarks.measure import best_of

    def once():
        for x in inputs.values():
            torch.matmul(x.B, x.A)

    return best_of(once, repeats)


def seventy(args: argparse.Namespace, log) -> dict:
    shapes = TINY_GQA if args.quick else AD.LLAMA_70B
    s = suite(args, "70b", shapes, 16)
    layers = args.layers_70b or (2 if args.quick else 80)
    xs = {f"X{i}": s._random_inputs(i, 1, 16) for i in range(2)}
    per_module = {}
    for name, (m, n) in {name: (m, n) for name, m, n in shapes.modules(1)}.items():
        one = {key: {name: x[name]} for key, x in xs.items()}
        per_module[name.rsplit(".", 1)[1]] = {"m": m, "n": n,
                                             "transfer_ms": 1e3 * s._inproc(recipe_expr("transfer", ["X0", "X1"]), one)}
    log(f"  70b per module: {per_module}")
    row = s._recipe_vs_floor("transfer", {f"X{i}": s.adapter(i, layers) for i in range(2)}, 1)
    row.update(layers=layers, shapes=shapes.name, per_module=per_module)
    log(f"  70b transfer: {row}")
    return row


def high_rank(args: argparse.Namespace, log) -> dict:
    rank = args.rank or (32 if args.quick else 256)
    shapes = AD.SMALL if args.quick else AD.LLAMA_7B
    s = suite(args, "rank", shapes, rank)
    xs = {f"X{i}": s._random_inputs(i, 1, rank) for i in range(3)}
    modules = len(xs["X0"])
    row = {"rank": rank, "shapes": shapes.name, "modules": modules,
           "dense_product_ms": 1e3 * dense_product_s(s, xs["X0"], s.s.inproc_repeats) / modules}
    for recipe in RECIPES:
        names = ["X0", "X1", "X2"] if recipe == "multitask" else ["X0", "X1"]
        row[f"{recipe}_ms"] = 1e3 * s._inproc(recipe_expr(recipe, names), {k: xs[k] for k in names}) / modules
    row["svd_ms"] = 1e3 * s._inproc(method_expr("svd", ["X0", "X1"], s.s, rank=rank),
                                    {k: xs[k] for k in ("X0", "X1")}) / modules
    row["whole_process"] = s._recipe_vs_floor("transfer", {f"X{i}": s.adapter(i, 2) for i in range(2)}, 1)
    log(f"  rank {rank}: {row}")
    return row


MANY_METHODS = ("multitask", "knots", "tsv", "iso", "ties_svd")
"""The many-adapter merges measured as whole processes (the first is the DiPM recipe)."""


def many_expr(method: str, names: list[str], s: Suite) -> str:
    """The 50-adapter merge `method` over `names` (weights 1, or 1/N for ties_svd as PEFT's mean)."""
    xs = f"[{', '.join(names)}]"
    if method == "multitask":
        return recipe_expr("multitask", names)
    if method == "knots":
        return f'knots({xs}, method="ties", density=0.2)'
    if method in ("tsv", "iso"):
        return f"{method}({xs})"
    return method_expr(method, names, s.s)


def many(args: argparse.Namespace, log) -> dict:
    count = args.adapters or (4 if args.quick else 50)
    shapes = AD.SMALL if args.quick else AD.LLAMA_7B
    s = suite(args, "adapters", shapes, 16)
    inputs = {f"X{i}": s.adapter(i, 2) for i in range(count)}
    largest = max(AD.folder_bytes(p) for p in inputs.values()) / 2**20
    methods = {}
    for method in args.methods or MANY_METHODS:
        row = s._recipe_vs_floor(method, inputs, 1, expr=many_expr(method, list(inputs), s))
        row.update(peak_above_largest_input_mib=row["dipm_peak_mib"] - largest,
                   s_per_input_mib=row["dipm_process_s"] / row["inputs_mib"])
        methods[method] = row
        log(f"  {count} adapters, {method}: {row}")
    xs = {f"X{i}": s._random_inputs(i, 1, 16) for i in range(count)}
    result = {"adapters": count, "shapes": shapes.name, "layers": 2, "largest_input_mib": largest,
              "inputs_mib": next(iter(methods.values()))["inputs_mib"], "methods": methods,
              "svd_ms_per_module": 1e3 * s._inproc(method_expr("svd", list(xs), s.s), xs) / len(xs["X0"])}
    log(f"  {count} adapters: svd per module {result['svd_ms_per_module']:.3g} ms")
    return result


def _earlier(results: dict, section: str) -> list[str]:
    """A line for a section kept from an earlier run (`--merge`): when and how it was measured."""
    e = results.get("earlier", {}).get(section)
    if not e:
        return []
    m = e["machine"]
    return [f"Measured in an earlier run: {m['date']}, load average {m['loadavg_start']:.1f}–{m['loadavg_end']:.1f}, "
            f"`{e['command']}`.", ""]


def render(results: dict) -> str:
    m = results["machine"]
    out = ["# dipm at scale: 70B shapes, high rank, many adapters (dipm alone)", "",
           f"{m['cores']} cores, torch {m['torch']}, {m['date']}; load average {m['loadavg_start']:.1f} at the start, "
           f"{m['loadavg_end']:.1f} at the end (a shared machine: compare the ratios, measured side by side).", "",
           f"Command: `{results['command']}`", ""]
    if "70b" in results:
        r = results["70b"]
        out += [f"## 70B shapes ({r['shapes']}, r=16, {r['layers']} layers)", "",
                *_earlier(results, "70b"), "| module | shape | transfer per module |", "|---|---|---|"]
        out += [f"| {k} | {v['m']}×{v['n']} | {v['transfer_ms']:.3g} ms |" for k, v in r["per_module"].items()]
        out += ["", "| inputs MiB | output MiB | dipm process | I/O floor | ratio | dipm peak MiB | dry-run peak MiB |"
                " excess over inputs + output MiB |", "|---|---|---|---|---|---|---|---|",
                f"| {r['inputs_mib']:.0f} | {r['output_mib']:.0f} | {r['dipm_process_s']:.3g} s | "
                f"{r['floor_process_s']:.3g} s | {r['ratio_to_floor']:.2f}× | {r['dipm_peak_mib']:.0f} | "
                f"{r['dipm_dry_run_peak_mib']:.0f} | {r['memory_excess_mib']:.0f} |", ""]
    if "rank" in results:
        r = results["rank"]
        w = r["whole_process"]
        out += [f"## Rank {r['rank']} ({r['shapes']}, per module, in process)", "", *_earlier(results, "rank"),
                "| dense product B·A once | transfer | detox | multitask (3) | svd merge |", "|---|---|---|---|---|",
                f"| {r['dense_product_ms']:.3g} ms | {r['transfer_ms']:.3g} ms | {r['detox_ms']:.3g} ms | "
                f"{r['multitask_ms']:.3g} ms | {r['svd_ms']:.3g} ms |", "",
                f"Whole process, `transfer` over 2 layers: {w['dipm_process_s']:.3g} s vs the floor "
                f"{w['floor_process_s']:.3g} s ({w['ratio_to_floor']:.2f}×), peak {w['dipm_peak_mib']:.0f} MiB.", ""]
    if "adapters" in results:
        r = results["adapters"]
        out += [f"## {r['adapters']} adapters ({r['shapes']}, {r.get('layers', 2)} layers, whole process)", "",
                *_earlier(results, "adapters"),
                f"Inputs {r['inputs_mib']:.0f} MiB, the largest {r['largest_input_mib']:.1f} MiB; target: peak ≤ 2 GB (1907 MiB) "
                "above the largest input.", "",
                "| method | output MiB | dipm process | I/O floor | ratio | s per input MiB | dipm peak MiB | "
                "peak above the largest input MiB |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| `{name}` | {m['output_mib']:.0f} | {m['dipm_process_s']:.3g} s | {m['floor_process_s']:.3g} s | "
                f"{m['ratio_to_floor']:.2f}× | {m['s_per_input_mib']:.3g} | {m['dipm_peak_mib']:.0f} | "
                f"{m['peak_above_largest_input_mib']:.0f} |" for name, m in r["methods"].items()]
        out += ["", f"The `svd` merge of all {r['adapters']}, per module in process: {r['svd_ms_per_module']:.3g} ms.", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
        torch.set_num_threads(args.threads)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results: dict = {"machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                                 "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                 "loadavg_start": os.getloadavg()[0]},
                     "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "quick": args.quick}
    start = time.perf_counter()
    work = (args.work or args.out / "tmp-scale").resolve()
    try:
        for section, fn in (("70b", seventy), ("rank", high_rank), ("adapters", many)):
            if section in args.sections:
                log(f"[scale] {section}")
                results[section] = fn(args, log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge and (args.out / "scale.json").exists():
        previous = json.loads((args.out / "scale.json").read_text())
        results.setdefault("earlier", {}).update(previous.get("earlier", {}))
        for section in SECTIONS:
            if section in previous and section not in results:
                results[section] = previous[section]
                results["earlier"].setdefault(section, {"machine": previous["machine"], "command": previous["command"]})
        for section in args.sections:  # measured now
            results["earlier"].pop(section, None)
    (args.out / "scale.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (args.out / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
