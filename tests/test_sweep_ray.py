"""`--executor ray`: evaluations as Ray tasks with CPU/GPU requests, on a local Ray instance.

Slow (starting Ray takes seconds) and needs `pip install "dipm_lang[ray]"`; .ci/run installs it
and sets DIPM_REQUIRE_OPTIONAL, so there a missing Ray fails instead of skipping. An existing cluster
(`--ray-address`) is not tested here: the same `ray.init(address=…)` call connects to one, and
the adapter folders must then be on a file system the worker nodes share.
"""

from __future__ import annotations

import pytest

from optional import optional_import

ray = optional_import("ray", extra="ray")

from dipm_lang.sweeps.executors import RayExecutor
from dipm_lang.sweeps.grid import parse_grid
from dipm_lang.sweeps.sweep import EvalSpec, Objective, Sweep

from sweep_helpers import CAT, FINGERPRINT, FakeCompute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One local instance for the module: 2 CPUs and one declared (not real) GPU, so that GPU
    requests can be scheduled and their CUDA_VISIBLE_DEVICES checked on a CPU-only machine."""
    import logging

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def run(tmp_path, grid, command, *, cpus=1.0, gpus=0.0, timeout=None, compute=None):
    with Sweep.open(tmp_path / "out", FINGERPRINT, parse_grid(grid), eval_spec=EvalSpec(command, timeout),
                    objective=Objective("score", True),
                    executor=lambda: RayExecutor(num_cpus=cpus, num_gpus=gpus)) as sweep:
        sweep.run_grid(compute or FakeCompute())
        return sweep.finish(plot=False)


def test_ray_evaluations_match_their_points_and_fail_per_point(local_ray, tmp_path):
    script = tmp_path / "e.sh"
    script.write_text('case "$1" in *t=0.5) echo oops >&2; exit 7;; *t=0.75) sleep 30;; *) cat "$1/m.json";; esac\n')
    summary = run(tmp_path, ["t=0:1:0.25"], f"sh {script} {{adapter}}", timeout=1.0)
    rows = {row["path"]: row for row in summary.rows}
    for name in ("t=0.0", "t=0.25", "t=1.0"):
        assert rows[name]["metrics"]["t_echo"] == rows[name]["params"]["t"]
    assert rows["t=0.5"]["eval"] == {"exit_code": 7, "reason": "exit code 7", "stderr": ["oops"]}
    assert rows["t=0.75"]["eval"]["reason"] == "timed out after 1 s"
    assert summary.rows[summary.best]["path"] == "t=0.25" and summary.exit_code == 1


def _peak(log_dir, names) -> int:
    spans = [(float((log_dir / f"{n}.start").read_text()), float((log_dir / f"{n}.end").read_text())) for n in names]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("cpus, expected_peak", [(1.0, 2), (2.0, 1)])
def test_cpu_requests_bound_how_many_run_at_once(local_ray, tmp_path, cpus, expected_peak):
    log = tmp_path / "log"
    log.mkdir()
    command = (f'n=$(basename {{adapter}}); date +%s.%N > "{log}/$n.start"; sleep 1; '
               f'date +%s.%N > "{log}/$n.end"; cat {{adapter}}/m.json')
    summary = run(tmp_path, ["t=0:0.3:0.1"], command, cpus=cpus)
    assert summary.exit_code == 0
    assert _peak(log, [row["path"] for row in summary.rows]) == expected_peak


def test_gpu_requests_reach_the_command_as_cuda_visible_devices(local_ray, tmp_path):
    command = ('printf \'{"score": 1, "gpus": %s}\\n\' "$(echo "${CUDA_VISIBLE_DEVICES:-none}" | '
               "awk -F, '{print ($1 == \"none\" || $1 == \"\") ? 0 : NF}')\" # {adapter}")
    with_gpu = run(tmp_path / "gpu", ["t=0,1"], command, gpus=1.0)
    without = run(tmp_path / "cpu", ["t=0,1"], command, gpus=0.0)
    assert [row["metrics"]["gpus"] for row in with_gpu.rows] == [1, 1]
    assert [row["metrics"]["gpus"] for row in without.rows] == [0, 0]


def test_the_cat_evaluator_through_ray_equals_the_local_one(local_ray, tmp_path):
    from dipm_lang.sweeps.executors import LocalExecutor

    remote = run(tmp_path / "ray", ["t=0:1:0.5"], CAT)
    with Sweep.open(tmp_path / "local", FINGERPRINT, parse_grid(["t=0:1:0.5"]), eval_spec=EvalSpec(CAT),
                    objective=Objective("score", True), executor=lambda: LocalExecutor(2)) as sweep:
        sweep.run_grid(FakeCompute())
        local = sweep.finish(plot=False)
    assert remote.rows == local.rows
