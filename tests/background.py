"""Long, self-contained commands started when the test session starts, awaited where needed.

Why: a job such as an experiment's smoke run (a model trained from scratch, in one thread)
takes over a minute of CPU. Started first, in a process of its own, it runs on another core while
the rest of the suite runs, instead of adding its time to theirs. The tests that await it are
ordered last (conftest.py), so it has had the most time by then.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clitools import ROOT, cli_env


class Job:
    """One command in its own process, from the repository root; its output goes to `log`."""

    def __init__(self, args: Sequence[str], log: Path):
        self.args = list(args)
        self.log = log
        self._output = open(log, "wb")
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL,
                                        stdout=self._output, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 1800) -> None:
        """Wait for the command; fail with the end of its output unless it exited with 0."""
        code = self.process.wait(timeout)
        self._output.close()
        assert code == 0, f"{' '.join(self.args)} exited with {code}:\n{self.log.read_text(errors='replace')[-4000:]}"

    def wait_for(self, marker: Path, timeout: float = 1800) -> None:
        """Wait until the command writes `marker` (one of its steps is done) or ends; fail with the end
        of its output if it ended without writing it."""
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if self.process.poll() is not None:
                if not marker.exists():
                    self.wait()  # fails with the log unless it exited with 0
                    assert marker.exists(), f"{' '.join(self.args)} ended without writing {marker}"
                return
            assert time.monotonic() < deadline, f"{' '.join(self.args)}: no {marker} after {timeout} s"
            time.sleep(0.5)

    def stop(self) -> None:
        """End the command if it still runs (a session stopped early must not leave it behind)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._output.close()


@dataclass
class SmokeRun:
    """An experiment's smoke preset run twice (cold, then with the same --cache) in the shared `job`
    (conftest.py: `detox_smoke_run`, `multitask_smoke_run`), which writes `done` after both."""

    first: Path    # the first run's --out
    second: Path   # the rerun's --out (the same --cache)
    cache: Path
    job: Job
    done: Path

    def wait(self) -> None:
        self.job.wait_for(self.done)
