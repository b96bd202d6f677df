"""Whole-process measurements: wall time and peak resident memory of one subprocess.

Peak memory is the child's own `ru_maxrss`, from `os.wait4` on that child — the per-child
form of `getrusage(RUSAGE_CHILDREN)` (which would report the largest child seen so far) —
taken by the small launcher `launch.py` (see there why the harness cannot start it itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ProcessResult:
    seconds: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str

    def last_json(self) -> dict:
        """The last stdout line that is a JSON object (what our helper scripts print)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        return {}


class ProcessFailed(RuntimeError):
    pass


def python_cmd(*args: str) -> list[str]:
    """`python ARGS…` with this interpreter (the repository's dipm_lang comes first on the path)."""
    return [sys.executable, *args]


def dipm_cmd(*args: str) -> list[str]:
    return python_cmd("-m", "dipm_lang.cli.main", *args)


def run_process(cmd: Sequence[str], *, timeout: float | None = None) -> ProcessResult:
    """Run `cmd` from the repository root (through `launch.py`, so that the peak RSS is the
    command's own); return its wall time and peak RSS; raise `ProcessFailed` if it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        launcher = [sys.executable, "-S", str(Path(__file__).with_name("launch.py")), str(report)]
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            proc = subprocess.run(launcher + list(cmd), cwd=REPO, env=env, stdout=out, stderr=err,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0 or not report.exists():
            raise ProcessFailed(f"launcher failed for {' '.join(cmd)}:\n{stderr[-4000:]}")
        measured = json.loads(report.read_text())
    result = ProcessResult(measured["seconds"], measured["maxrss_kib"] / 1024, measured["returncode"], stdout, stderr)
    if result.returncode != 0:
        raise ProcessFailed(f"{' '.join(cmd)} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def repeat_process(cmd: Sequence[str], repeats: int, *, before=None,
                   budget_s: float = 60.0) -> tuple[ProcessResult, list[float]]:
    """Run `cmd` up to `repeats` times (calling `before()` first each time), stopping early once
    `budget_s` seconds are spent; the fastest run, and all times. The fastest is the run least
    disturbed by other work on the machine (as `timeit` reports).

    Each run starts from a synced disk: `before()` typically deletes the previous run's output,
    and on a file system mounted with `discard` that deletion's TRIMs and the writeback of
    earlier outputs would otherwise stall whichever process writes next (measured here: a
    458 MiB write taking 0.1 s or 1.0 s depending on what the run before left behind)."""
    runs: list[ProcessResult] = []
    while len(runs) < max(1, repeats) and (not runs or sum(r.seconds for r in runs) < budget_s):
        if before is not None:
            before()
        if hasattr(os, "sync"):
            os.sync()
        runs.append(run_process(cmd))
    return min(runs, key=lambda r: r.seconds), [r.seconds for r in runs]


def best_of(fn, repeats: int, *, budget_s: float = 20.0) -> float:
    """Minimum wall time of `fn()` over a first run and up to `repeats` more, stopping early once
    `budget_s` seconds are spent (a slow method is timed once; the first run pays one-time costs,
    so fast ones are repeated past it)."""
    times: list[float] = []
    while len(times) < max(1, repeats) + 1 and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
