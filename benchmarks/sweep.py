"""An 11-point `transfer` sweep (t = 0, 0.1, …, 1) over 7B-shaped adapters, as whole processes.

    python -m benchmarks.sweep --out benchmarks/results          # 32 layers, rank 16 (~3 minutes)
    python -m benchmarks.sweep --quick --out /tmp/bench            # tiny shapes: the smoke test

Three ways to the same 11 adapters, each measured as a whole process (wall time, peak RSS):

- `dipm sweep transfer.dipm --grid t=0:1:0.1`: one program for all points, one pass over the modules;
- the I/O floor of the same work: read both inputs once, write 11 outputs of the points' shapes
  and flush them to disk (`benchmarks/io_floor.py --fsync` with one `--like` per point) — goal:
  the sweep ≤ 1.3× the floor. dipm flushes every output before renaming it into place, so that a
  crash never leaves a point folder that a resumed sweep would take for done; 11 outputs of a 7B
  model are 3 GB, and getting them onto the disk is most of the work. The floor without the flush
  (outputs left in the page cache) is reported too;
- 11 separate `dipm run transfer.dipm --set t=…`: what a sweep costs without dipm sweep.

Peak memory: the sweep's against one `dipm run`'s — goal ≤ 1.5×. Writes `sweep.md` and `sweep.json`
under `--out`; times are the fastest of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from benchmarks import adapters as AD
from benchmarks.measure import dipm_cmd, python_cmd, repeat_process

POINTS = [repr(i / 10) for i in range(11)]  # as --grid t=0:1:0.1 names them: t=0.0 … t=1.0
GOALS = {"floor": 1.3, "memory": 1.5}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 layers, one run each")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default <out>/tmp-sweep)")
    args = p.parse_args(argv)
    shapes = AD.TINY if args.quick else AD.LLAMA_7B
    layers = 2 if args.quick else args.layers
    repeats = 1 if args.quick else args.repeats
    work = (args.work or args.out / "tmp-sweep").resolve()
    shutil.rmtree(work, ignore_errors=True)
    try:
        results = measure(work, shapes, layers, args.rank, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (args.out / "sweep.md").write_text(text)
    print(text)
    return 0


def measure(work: Path, shapes: AD.Shapes, layers: int, rank: int, repeats: int) -> dict:
    inputs = {name: AD.make_adapter(work / "adapters" / name, layers=layers, rank=rank, shapes=shapes, adapter=i)
              for i, name in enumerate(("C", "T"))}
    recipe = work / "transfer.dipm"
    recipe.write_text("".join(f'{name} = load("{path.as_posix()}")\n' for name, path in inputs.items())
                      + f'save(transfer(C, T, t=t), "{(work / "single").as_posix()}")\n')
    sweep_dir = work / "sweep"
    sweep, sweep_runs = repeat_process(
        dipm_cmd("sweep", str(recipe), "--grid", "t=0:1:0.1", "-o", str(sweep_dir), "-q", "--no-progress"),
        repeats, before=lambda: shutil.rmtree(sweep_dir, ignore_errors=True))
    points = [sweep_dir / f"t={value}" for value in POINTS]
    assert all((point / AD.WEIGHTS_NAME).is_file() for point in points), "the sweep wrote every point"

    floor_dir = work / "floor"
    floor_cmd = python_cmd("-m", "benchmarks.io_floor", *map(str, inputs.values()),
                           *[arg for point in points for arg in ("--like", str(point))], "--out", str(floor_dir))
    floor, floor_runs = repeat_process([*floor_cmd, "--fsync"], repeats,
                                       before=lambda: shutil.rmtree(floor_dir, ignore_errors=True))
    cached, cached_runs = repeat_process(floor_cmd, repeats, before=lambda: shutil.rmtree(floor_dir, ignore_errors=True))

    single_dir = work / "single"
    separate_seconds, single_peak = 0.0, 0.0
    for value in POINTS:  # 11 separate runs, each the fastest of its repeats
        run, _ = repeat_process(dipm_cmd("run", str(recipe), "--set", f"t={value}", "--force", "-q", "--no-progress"),
                                repeats, before=lambda: shutil.rmtree(single_dir, ignore_errors=True))
        separate_seconds += run.seconds
        single_peak = max(single_peak, run.peak_mb)

    inputs_mib = sum(AD.folder_bytes(path) for path in inputs.values()) / 2**20
    outputs_mib = sum(AD.folder_bytes(point) for point in points) / 2**20
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "shapes": shapes.name, "layers": layers, "rank": rank, "points": len(POINTS), "repeats": repeats,
        "inputs_mib": inputs_mib, "outputs_mib": outputs_mib,
        "sweep_s": sweep.seconds, "sweep_runs": sweep_runs, "sweep_peak_mib": sweep.peak_mb,
        "floor_s": floor.seconds, "floor_runs": floor_runs, "floor_peak_mib": floor.peak_mb,
        "page_cache_floor_s": cached.seconds, "page_cache_floor_runs": cached_runs,
        "separate_runs_s": separate_seconds, "single_run_peak_mib": single_peak,
        "ratio_to_floor": sweep.seconds / floor.seconds,
        "ratio_to_page_cache_floor": sweep.seconds / cached.seconds,
        "speedup_vs_separate_runs": separate_seconds / sweep.seconds,
        "peak_vs_single_run": sweep.peak_mb / single_peak,
    }


def verdicts(r: dict) -> list[tuple[str, str, bool, str]]:
    """(what, goal, met, measured) for each goal."""
    return [
        ("11-point sweep vs the I/O floor", f"≤ {GOALS['floor']}× the floor", r["ratio_to_floor"] <= GOALS["floor"],
         f"{r['ratio_to_floor']:.2f}×"),
        ("peak memory vs one dipm run", f"≤ {GOALS['memory']}× one run", r["peak_vs_single_run"] <= GOALS["memory"],
         f"{r['peak_vs_single_run']:.2f}×"),
    ]


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# dipm sweep: {r['points']} points of transfer, {r['layers']} layers of {r['shapes']}, rank {r['rank']}",
             "", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}. "
             f"Inputs {r['inputs_mib']:.0f} MiB, outputs {r['outputs_mib']:.0f} MiB in all; "
             f"fastest of {r['repeats']} whole-process runs.", "",
             "| | wall time | peak MiB |", "|---|---|---|",
             f"| `dipm sweep --grid t=0:1:0.1` | {r['sweep_s']:.2f} s | {r['sweep_peak_mib']:.0f} |",
             f"| I/O floor: read the inputs once, write the 11 outputs, flush them to disk | {r['floor_s']:.2f} s | "
             f"{r['floor_peak_mib']:.0f} |",
             f"| the same, outputs left in the page cache | {r['page_cache_floor_s']:.2f} s | |",
             f"| 11 separate `dipm run --set t=…` | {r['separate_runs_s']:.2f} s | {r['single_run_peak_mib']:.0f} "
             "(each) |", "",
             f"The sweep is {r['speedup_vs_separate_runs']:.1f}× faster than 11 separate runs, and "
             f"{r['ratio_to_page_cache_floor']:.2f}× the floor that leaves its outputs in the page cache (dipm "
             "flushes every output before renaming it into place).", "",
             "| goal | target | measured | result |", "|---|---|---|---|"]
    for what, goal, met, shown in verdicts(r):
        lines.append(f"| {what} | {goal} | {shown} | {'PASS' if met else 'MISS'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
