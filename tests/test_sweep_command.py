"""`dipm sweep` end to end on real adapters (SPEC §7.7): every point equals `dipm run --set`, the folder
layout and table, resuming, failures that stay with their point, and work shared across points."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from adapters import peft_deltas, write_raw_adapter
from clitools import run_main

RECIPE = """\
H = load("adapters/H")
T = load("adapters/T")
C = load("adapters/C")
lam = 0.5
save(transfer(C, T, t=t), "out/transfer")
save(detox(H, T, t=lam) + t * C, "out/mixed")
"""
"""Two saves (so each point is a folder of two adapters), a free number `t` and a bound one `lam`;
the quartet's adapters differ in ranks and module sets."""


@pytest.fixture
def workdir(quartet: Path, tmp_path: Path) -> Path:
    """A copy of the quartet's adapters (some tests change an input) and the recipe."""
    shutil.copytree(quartet / "adapters", tmp_path / "adapters")
    (tmp_path / "recipe.dipm").write_text(RECIPE)
    return tmp_path


def assert_same_adapter(a: Path, b: Path, rtol: float = 2e-6) -> None:
    """The same ΔW per module, as PEFT reads the two folders (float32 precision)."""
    x, y = peft_deltas(a), peft_deltas(b)
    assert x.keys() == y.keys()
    for name in x:
        dx, dy = x[name][0], y[name][0]
        scale = max(float(dx.norm()), float(dy.norm()), 1e-12)
        assert float((dx - dy).norm()) <= rtol * scale, (a, name)


def test_every_point_is_what_dipm_run_with_set_writes(workdir):
    result = run_main("sweep", "recipe.dipm", "--grid", "t=0:1:0.5", "--set", "lam=0.25", "-o", "sw", cwd=workdir)
    assert result.code == 0, result.err
    rows = json.loads((workdir / "sw" / "sweep.json").read_text())
    # SPEC §7.7: points in grid order, folders NAME=repr(float), keys params/path/status
    assert [(row["params"], row["path"], row["status"]) for row in rows] == [
        ({"t": 0.0}, "t=0.0", "ok"), ({"t": 0.5}, "t=0.5", "ok"), ({"t": 1.0}, "t=1.0", "ok")]
    assert sorted(p.name for p in (workdir / "sw").iterdir() if not p.name.startswith(".")) == [
        "sweep-manifest.json", "sweep.csv", "sweep.json", "t=0.0", "t=0.5", "t=1.0"]
    for value in ("0.0", "0.5", "1.0"):
        single = run_main("run", "recipe.dipm", "--set", f"t={value}", "--set", "lam=0.25", "--force", "-q",
                          cwd=workdir)
        assert single.code == 0, single.err
        for save in ("transfer", "mixed"):  # several saves: DIR/<point>/<basename>
            assert_same_adapter(workdir / "sw" / f"t={value}" / save, workdir / "out" / save)
        card = (workdir / "sw" / f"t={value}" / "transfer" / "README.md").read_text()
        assert f"- `t` = {float(value)!r}" in card and "- `lam` = 0.25" in card  # the point's numbers


def test_one_save_is_the_point_folder_and_a_rerun_resumes(workdir):
    (workdir / "one.dipm").write_text('C = load("adapters/C")\nT = load("adapters/T")\n'
                                      'save(transfer(C, T, t=t), "out/x")\n')
    first = run_main("sweep", "one.dipm", "--grid", "t=0.2,0.4", "-o", "sw", cwd=workdir)
    assert first.code == 0, first.err
    assert (workdir / "sw" / "t=0.2" / "adapter_config.json").is_file()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (workdir / "sw").glob("t=*/*")}
    again = run_main("sweep", "one.dipm", "--grid", "t=0.2,0.4,0.6", "-o", "sw", cwd=workdir)
    assert again.code == 0, again.err
    assert "(2 kept from an earlier run)" in again.out
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before  # neither recomputed nor rewritten
    assert (workdir / "sw" / "t=0.6" / "adapter_model.safetensors").is_file()


def test_changed_inputs_do_not_resume_without_force(workdir):
    assert run_main("sweep", "recipe.dipm", "--grid", "t=0.5", "-o", "sw", cwd=workdir).code == 0
    tensors = {}
    from safetensors.torch import load_file

    tensors = load_file(workdir / "adapters" / "T" / "adapter_model.safetensors")
    tensors = {k: 2 * v for k, v in tensors.items()}
    config = json.loads((workdir / "adapters" / "T" / "adapter_config.json").read_text())
    shutil.rmtree(workdir / "adapters" / "T")
    write_raw_adapter(workdir / "adapters" / "T", tensors, config)
    refused = run_main("sweep", "recipe.dipm", "--grid", "t=0.5", "-o", "sw", cwd=workdir)
    assert refused.code == 1 and "holds another sweep" in refused.err and "T" in refused.err, refused.err
    assert run_main("sweep", "recipe.dipm", "--grid", "t=0.5", "-o", "sw", "--force", cwd=workdir).code == 0


def test_a_point_the_compiler_refuses_fails_alone(workdir):
    (workdir / "r.dipm").write_text('C = load("adapters/C")\nsave(lowrank(C, r), "out/x")\n')
    result = run_main("sweep", "r.dipm", "--grid", "r=1,1.5,2", "-o", "sw", cwd=workdir)
    assert result.code == 1  # SPEC §6: some point failed
    rows = {row["path"]: row for row in json.loads((workdir / "sw" / "sweep.json").read_text())}
    assert rows["r=1.0"]["status"] == rows["r=2.0"]["status"] == "ok"
    assert rows["r=1.5"]["status"] == "failed" and "whole number" in rows["r=1.5"]["error"]
    assert not (workdir / "sw" / "r=1.5").exists()


def test_a_pass_that_fails_at_run_time_is_retried_point_by_point(workdir, monkeypatch):
    import dipm_lang.run as run_module
    from dipm_lang.errors import ExecutionError

    real = run_module.run_program

    def failing_at_half(program, options, **kwargs):
        if any("t=0.5" in root.attr("path") for root in program.roots):
            raise ExecutionError("the tensors of t=0.5 went wrong")
        return real(program, options, **kwargs)

    monkeypatch.setattr(run_module, "run_program", failing_at_half)
    result = run_main("sweep", "recipe.dipm", "--grid", "t=0,0.5,1", "-o", "sw", cwd=workdir)
    assert result.code == 1, result.err
    rows = {row["path"]: row for row in json.loads((workdir / "sw" / "sweep.json").read_text())}
    assert [rows[p]["status"] for p in ("t=0.0", "t=0.5", "t=1.0")] == ["ok", "failed", "ok"]
    assert "went wrong" in rows["t=0.5"]["error"]
    assert not [p for p in (workdir / "sw").iterdir() if ".sweep-stage-" in p.name]  # no staging left


def test_points_share_the_work_they_have_in_common(workdir, monkeypatch):
    """One pass for all points: the inputs are read and their `dir`/`mag` computed once per batch of
    modules, whatever the number of points; only the per-point operators run once per point."""
    from dipm_lang.backend.executor import Executor

    counts: Counter = Counter()
    real = Executor._apply

    def counting(self, node, args, ctx):
        counts[node.op] += 1
        return real(self, node, args, ctx)

    monkeypatch.setattr(Executor, "_apply", counting)
    assert run_main("run", "recipe.dipm", "--set", "t=0.3", "-q", cwd=workdir).code == 0
    single = Counter(counts)
    counts.clear()
    assert run_main("sweep", "recipe.dipm", "--grid", "t=0.1:0.4:0.1", "-o", "sw", cwd=workdir).code == 0
    assert single["load"] and counts["load"] == single["load"]
    assert single["dir"] and counts["dir"] == single["dir"] and counts["mag"] == single["mag"]
    # each batch shifts twice: transfer's shift depends on t (once per point), detox's does not (once)
    batches = single["shift"] // 2
    assert batches and counts["shift"] == 4 * batches + batches and counts["save"] == 4 * single["save"]


def test_free_numbers_given_with_set_are_numbers(workdir):
    (workdir / "free.dipm").write_text('C = load("adapters/C")\nT = load("adapters/T")\n'
                                       'save(transfer(C, T, t=t), "out/free")\n')
    assert run_main("run", "free.dipm", "--set", "t=0.3", "-q", cwd=workdir).code == 0
    from dipm_lang import evaluate

    value = evaluate("transfer(C, T, t=0.3)", C=workdir / "adapters" / "C", T=workdir / "adapters" / "T")
    written = peft_deltas(workdir / "out" / "free")
    for name, (delta, *_rest) in written.items():
        torch.testing.assert_close(delta, value.delta(name).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text, argv, message", [
    (RECIPE, ("--grid", "lam=1", "--set", "lam=0.5"), "no number parameter 'lam'"),
    (RECIPE, ("--grid", "x=1",), "no number parameter 'x'"),
    ('C = load("adapters/C")\nx = t * C\n', ("--grid", "t=1"), "saves nothing"),
    ('C = load("adapters/C")\nsave(t * C, "a/x")\nsave(C, "b/x")\n', ("--grid", "t=1"), "same folder name 'x'"),
])
def test_usage_errors_before_anything_is_written(workdir, text, argv, message):
    (workdir / "bad.dipm").write_text(text)
    result = run_main("sweep", "bad.dipm", *argv, "-o", "sw", cwd=workdir)
    assert result.code == 2 and message in result.err, result.err
    assert not (workdir / "sw").exists()


def test_a_missing_input_stops_the_sweep_before_it_starts(workdir):
    shutil.rmtree(workdir / "adapters" / "C")
    result = run_main("sweep", "recipe.dipm", "--grid", "t=0,1", "-o", "sw", cwd=workdir)
    assert result.code == 1 and "adapters/C" in result.err, result.err
    assert not (workdir / "sw").exists()


def test_dry_run_lists_the_points_and_writes_nothing(workdir):
    result = run_main("sweep", "recipe.dipm", "--grid", "t=0:1:0.5", "-o", "sw", "--dry-run", cwd=workdir)
    assert result.code == 0, result.err
    assert "3 points of t" in result.out and "3 inputs checked" in result.out
    assert "t=0.0" in result.out and "t=1.0" in result.out
    assert not (workdir / "sw").exists()


def test_a_search_through_the_command_runs_real_points(workdir):
    """`--search optuna` on a real recipe: every trial is a written adapter folder, evaluated; the
    metric here is read back from the adapter itself (its norm grows with t), and the best is kept."""
    import sys

    (workdir / "one.dipm").write_text('C = load("adapters/C")\nsave(t * C, "out/x")\n')
    (workdir / "norm.py").write_text(
        "import json, sys\nfrom safetensors.torch import load_file\n"
        "w = load_file(sys.argv[1] + '/adapter_model.safetensors')\n"
        "print(json.dumps({'norm': sum(float(v.norm()) for k, v in w.items() if 'lora_B' in k)}))\n")
    result = run_main("sweep", "one.dipm", "--grid", "t=0.1:1", "--search", "optuna", "--trials", "4", "--seed", "3",
                      "--eval", f"{sys.executable} norm.py {{adapter}}", "--maximize", "norm", "-o", "sw",
                      cwd=workdir)
    assert result.code == 0, result.err
    rows = json.loads((workdir / "sw" / "sweep.json").read_text())
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        assert (workdir / "sw" / row["path"] / "adapter_model.safetensors").is_file()
    best = max(rows, key=lambda row: row["metrics"]["norm"])
    assert best["best"] and best["params"]["t"] == max(row["params"]["t"] for row in rows)
