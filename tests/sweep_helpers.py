"""Fakes for the sweep tests: a compute step that writes small point folders, and shell evaluators.

The fake compute writes `values.json` (the point's values) and `m.json` (one line of metrics
computed from the values by `metrics_of`) into each point folder, so that `cat {adapter}/m.json`
is an evaluator that costs no Python start-up and whose right answer each test knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from dipm_lang.sweeps.folder import Fingerprint

FINGERPRINT = Fingerprint("recipe-sha", {"H": "h-sha", "T": "t-sha"}, {"out_dtype": "float32"})
CAT = "cat {adapter}/m.json"


def default_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """A smooth function with a known best: score peaks at t = 0.3."""
    t = values.get("t", 0.0)
    return {"score": 1.0 - (t - 0.3) ** 2 + 0.01 * values.get("w", 0.0), "t_echo": t}


class FakeCompute:
    """`compute(points, sink)`: writes every point except those in `fail` (reported failed),
    `skip` (neither written nor reported) and `crash_after` (raises once that many are written)."""

    def __init__(self, metrics_of: Callable[[Mapping[str, float]], dict] = default_metrics, *,
                 fail: Iterable[str] = (), skip: Iterable[str] = (), stage: bool = True,
                 crash_after: int | None = None):
        self.metrics_of = metrics_of
        self.fail, self.skip = set(fail), set(skip)
        self.stage = stage
        self.crash_after = crash_after
        self.calls: list[list[str]] = []  # point names of each call
        self.written: list[str] = []

    def __call__(self, points, sink) -> None:
        self.calls.append([p.name for p in points])
        for point in points:
            if self.crash_after is not None and len(self.written) >= self.crash_after:
                raise KeyboardInterrupt("simulated interruption")
            if point.name in self.fail:
                sink.failed(point, f"cannot compute {point.name}")
                continue
            if point.name in self.skip:
                continue
            if self.stage:
                with sink.stage(point) as target:
                    self._write(target, point.values)
            else:
                self._write(sink.path(point), point.values)
            self.written.append(point.name)
            sink.written(point)

    def _write(self, folder: Path, values: Mapping[str, float]) -> None:
        folder.mkdir()
        (folder / "values.json").write_text(json.dumps(values))
        (folder / "m.json").write_text("some log line\n" + json.dumps(self.metrics_of(values)) + "\n")
