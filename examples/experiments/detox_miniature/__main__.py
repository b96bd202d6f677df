"""python -m examples.experiments.detox_miniature --preset smoke|full --seeds 0 1 2 --out DIR

Writes DIR/rows.json (every configuration's metrics), DIR/table.md, DIR/pareto.png and
DIR/timings.json; the pretrained base models are cached in DIR/cache (or --cache) keyed by
their settings and seed, and the trained adapters are saved as PEFT folders under
DIR/adapters/seedN/{H,T,C}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from . import toy
from .run import PRESETS, Options, run_seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.experiments.detox_miniature",
                                     description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 for smoke, 0 1 2 for full")
    parser.add_argument("--out", type=Path, default=Path("detox_miniature_out"))
    parser.add_argument("--cache", type=Path, help="base-model cache (default: OUT/cache)")
    parser.add_argument("--encoding", choices=toy.ENCODINGS, default="suffix",
                        help="how the unwanted behaviour is written into answers (default: suffix)")
    parser.add_argument("--shared-init", action=argparse.BooleanOptionalAction, default=True,
                        help="H, T and C start from the same LoRA A matrices (default: yes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process; results are byte-identical for a fixed value (default: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (default: 1)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def _round(value: Any) -> Any:
    """Floats to 6 decimals, so rows.json is stable text."""
    if isinstance(value, float):
        return round(value, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "platform": platform.platform()}


def environment() -> dict[str, str]:
    """The versions that determine the numbers bit for bit (recorded in rows.json and table.md)."""
    import numpy
    import peft
    import torch
    import transformers

    import dipm_lang

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "numpy": numpy.__version__,
            "dipm_lang": dipm_lang.__version__, "arch": platform.machine()}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the --jobs workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    options = Options(preset=replace(preset, seeds=seeds), encoding=args.encoding, shared_init=args.shared_init,
                      threads=args.threads, cache=(args.cache or out / "cache"), adapters_dir=out / "adapters",
                      quiet=args.quiet)

    rows, seed_timings = run_seeds(run_seed, options, seeds, args.jobs)

    from .report import plot, summarize, table

    report_start = time.perf_counter()
    settings = {**options.settings(), "seeds": list(seeds), "environment": environment()}
    (out / "rows.json").write_text(json.dumps(_round({"settings": settings, "rows": rows}), indent=1,
                                              ensure_ascii=False) + "\n")
    text = table(rows, settings)
    (out / "table.md").write_text(text)
    plot(rows, settings, out / "pareto.png")
    summary = summarize(rows)
    (out / "summary.json").write_text(json.dumps(_round(summary), indent=1, default=list) + "\n")
    finish(out, "detox_miniature", argv, args, start, report_start, seed_timings, text, "pareto.png")
    return 0


def run_seeds(run_seed: Callable[[Any, int], tuple[list[dict[str, Any]], dict[str, Any]]], options: Any,
              seeds: tuple[int, ...], jobs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every seed's rows (in seed order) and timings; with `jobs` > 1 the seeds run in spawned processes."""
    if jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_seed, [options] * len(seeds), seeds))
    else:
        results = [run_seed(options, seed) for seed in seeds]
    rows = [row for seed_rows, _ in results for row in seed_rows]
    return rows, {str(seed): timing for seed, (_, timing) in zip(seeds, results)}


def finish(out: Path, package: str, argv: list[str] | None, args: argparse.Namespace, start: float,
           report_start: float, seed_timings: dict[str, Any], text: str, plot: str) -> None:
    """Write OUT/timings.json; unless --quiet, print the table and what was written."""
    timings = {
        "command": f"python -m examples.experiments.{package} " + " ".join(sys.argv[1:] if argv is None else argv),
        "total_s": round(time.perf_counter() - start, 3),
        "cpu_s": round(cpu_seconds(), 3),  # on a busy machine the wall time says little; this does
        "report_s": round(time.perf_counter() - report_start, 3),
        "jobs": args.jobs, "threads": args.threads, "seeds": seed_timings, "machine": machine(),
    }
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    if not args.quiet:
        print(text)
        print(f"wrote {out}/rows.json, table.md, {plot}, summary.json, timings.json in {timings['total_s']:.1f} s",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
