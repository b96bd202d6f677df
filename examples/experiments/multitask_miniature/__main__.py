"""python -m examples.experiments.multitask_miniature --preset smoke|full --seeds 0 1 2 --out DIR

Writes DIR/rows.json (every configuration's metrics on the validation and the test prompts),
DIR/table.md, DIR/multitask.png, DIR/summary.json and DIR/timings.json; the pretrained base
models are cached in DIR/cache (or --cache; the detox miniature's cache serves too) and the trained
adapters are saved as PEFT folders under DIR/adapters/seedN/{S1,S2,S3,O}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from examples.experiments.detox_miniature.__main__ import _round, environment, finish, run_seeds

from .run import PRESETS, Options, run_seed

PLOT = "multitask.png"  # a stable name: RESULTS.md shows it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.experiments.multitask_miniature",
                                     description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 for smoke, 0 1 2 for full")
    parser.add_argument("--out", type=Path, default=Path("multitask_miniature_out"))
    parser.add_argument("--cache", type=Path, help="base-model cache (default: OUT/cache)")
    parser.add_argument("--shared-init", action=argparse.BooleanOptionalAction, default=False,
                        help="S1, S2, S3 and O start from the same LoRA A matrices (default: no, each its own, "
                             "as independently trained adapters do)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process; results are byte-identical for a fixed value (default: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (default: 1)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def versions(threads: int) -> dict[str, Any]:
    """What produced the numbers: bit-for-bit reproducible only with the same versions, threads and
    CPU architecture (the detox miniature's record, plus the thread count)."""
    return {**environment(), "threads": threads}


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    options = Options(preset=replace(preset, seeds=seeds), shared_init=args.shared_init, threads=args.threads,
                      cache=(args.cache or out / "cache"), adapters_dir=out / "adapters", quiet=args.quiet)

    rows, seed_timings = run_seeds(run_seed, options, seeds, args.jobs)

    report_start = time.perf_counter()
    settings = {**options.settings(), "seeds": list(seeds), "versions": versions(args.threads)}
    (out / "rows.json").write_text(json.dumps(_round({"settings": settings, "rows": rows}), indent=1,
                                              ensure_ascii=False) + "\n")
    from .report import plot, summarize, table  # after rows.json: a report error never loses the rows

    data = json.loads((out / "rows.json").read_text())  # report from the rounded rows, as a regenerator would
    text = table(data["rows"], data["settings"])
    (out / "table.md").write_text(text)
    plot(data["rows"], data["settings"], out / PLOT)
    (out / "summary.json").write_text(json.dumps(_round(summarize(data["rows"])), indent=1) + "\n")
    finish(out, "multitask_miniature", argv, args, start, report_start, seed_timings, text, PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
