"""`python -m benchmarks.run`: build adapters, measure dipm against PEFT and the I/O floor, report.

    python -m benchmarks.run --out benchmarks/results              # the full run (~20-30 min on 2 cores)
    python -m benchmarks.run --quick --out /tmp/bench                # tiny shapes, about a minute
    python -m benchmarks.run --render-only --out benchmarks/results  # redraw from results.json
    python -m benchmarks.run --skip recipes scaling --update --out benchmarks/results  # re-measure one section

Writes `results.md`, `results.json` and `scaling.png` under `--out`. Adapters and outputs go
to `--work` (default `<out>/tmp`, removed afterwards unless `--keep`).

On a machine shared with other work, pass `--threads 1`: a second OpenMP thread then spins
waiting for a descheduled peer and small kernels (dipm's reading and writing, PEFT's merges)
slow down several times over.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks import adapters as AD
from benchmarks import report
from benchmarks.suite import Settings, Suite


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=None, help="layers for the recipes vs the I/O floor (default 32)")
    p.add_argument("--peft-layers", type=int, default=None, help="layers for dipm vs PEFT (default 2)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapters (default 16)")
    p.add_argument("--adapters", type=int, default=3, help="inputs of the multitask recipe (default 3)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where dipm and PEFT compute")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the adapter files (default float32, what PEFT saves by default)")
    p.add_argument("--repeats", type=int, default=None, help="whole-process runs of dipm and the floor (the fastest is reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every process (OMP_NUM_THREADS / MKL_NUM_THREADS / torch); default: "
                        "torch's default. On a machine shared with other work, 1 avoids OpenMP's spinning "
                        "threads waiting for descheduled ones")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few points: the smoke test (~1 minute)")
    p.add_argument("--skip", nargs="*", default=[], choices=["peft", "recipes", "scaling"],
                   help="sections to leave out")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the results go")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default <out>/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--update", action="store_true",
                   help="keep the sections of <out>/results.json that this run skips (each section says when "
                        "and how it was measured)")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite results.md and scaling.png from <out>/results.json")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    work = (args.work or args.out / "tmp").resolve()
    dtype = getattr(torch, args.dtype)
    if args.quick:
        layers = args.layers or 2
        return Settings(layers=layers, peft_layers=args.peft_layers or 2, rank=args.rank, adapters=args.adapters,
                        device=args.device, shapes=AD.TINY, repeats=args.repeats or 1, inproc_repeats=2,
                        scaling_layers=(1, 2), scaling_ranks=(4, 8), scaling_adapters=(2, 3), dtype=dtype, work=work)
    layers = args.layers or 32
    return Settings(layers=layers, peft_layers=args.peft_layers or 2, rank=args.rank, adapters=args.adapters,
                    device=args.device, repeats=args.repeats or 3, dtype=dtype, work=work,
                    scaling_layers=tuple(n for n in (1, 2, 4, 8, 16, 32) if n <= layers))


def machine(command: str, device: str, threads: int | None) -> dict:
    from importlib.metadata import version

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "torch": torch.__version__,
            "peft": version("peft"), "transformers": version("transformers"),
            "threads": threads or torch.get_num_threads(), "threads_set": threads is not None,
            "python": platform.python_version(), "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_start": os.getloadavg()[0]}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


SECTIONS = ("peft", "recipes", "scaling")
SECTION_KEYS = {"peft": ("peft",), "recipes": ("recipes", "io_floor_baseline"), "scaling": ("scaling",)}


def merged(previous: dict, run: dict, measured_results: dict, measured: list[str]) -> dict:
    """`previous` with the sections this run measured replaced; each section keeps the machine line
    of the run that measured it (`section_runs`), so a table never claims another run's date or load."""
    runs = previous.get("section_runs") or {name: previous["machine"] for name in SECTIONS}
    out = {**previous, "section_runs": {**runs, **{name: run["machine"] for name in measured}}}
    for name in measured:
        for key in SECTION_KEYS[name]:
            out[key] = measured_results[key]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        report.write(json.loads((args.out / "results.json").read_text()), args.out)
        print((args.out / "results.md").read_text())
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.threads is not None:  # before any process starts, and for the in-process timings
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
        torch.set_num_threads(args.threads)
    settings = settings_from(args)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    results = {"machine": machine(command, args.device, args.threads)}
    results["settings"] = {**{k: v for k, v in asdict(settings).items() if k not in ("log", "shapes", "work", "dtype")},
                           "shapes": settings.shapes.name, "hidden": settings.shapes.hidden, "ffn": settings.shapes.ffn,
                           "dtype": args.dtype, "quick": args.quick}
    settings.work.mkdir(parents=True, exist_ok=True)
    # Byte-compile dipm_lang as `pip install` does: a checkout run with PYTHONDONTWRITEBYTECODE set
    # would otherwise recompile its modules in every timed process (~50 ms each).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "dipm_lang"), quiet=1)
    suite = Suite(settings)
    start = time.perf_counter()
    try:
        if "peft" not in args.skip:
            suite.peft_comparison()
        if "recipes" not in args.skip:
            suite.recipes()
        if "scaling" not in args.skip:
            suite.scaling()
    finally:
        if not args.keep:
            shutil.rmtree(settings.work, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - start
    measured = [name for name in SECTIONS if name not in args.skip]
    results = merged(json.loads((args.out / "results.json").read_text()), results, suite.results, measured) \
        if args.update else {**results, **suite.results}
    report.write(results, args.out)
    print(f"wrote {args.out / 'results.md'}, results.json, scaling.png in {results['seconds']:.0f} s", file=sys.stderr)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
