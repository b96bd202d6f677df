"""The sweep folder: resuming, what --force may replace, the lock, and staging of point folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dipm_lang.errors import AdapterError, RuntimeDipmError
from dipm_lang.sweeps.folder import LOCK_NAME, MANIFEST_NAME, Fingerprint
from dipm_lang.sweeps.grid import parse_grid
from dipm_lang.sweeps.sweep import EvalSpec, Objective, Sweep

from sweep_helpers import FINGERPRINT, FakeCompute


def counting_eval(tmp_path: Path) -> str:
    """An evaluator that appends the point's name to calls.log, then prints its metrics."""
    return f'basename {{adapter}} >> {tmp_path / "calls.log"}; cat {{adapter}}/m.json'


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().split() if log.exists() else []


def sweep_once(out, grid, compute, *, fingerprint=FINGERPRINT, eval_command=None, force=False, search=None):
    with Sweep.open(out, fingerprint, parse_grid(grid), eval_spec=EvalSpec(eval_command) if eval_command else None,
                    objective=Objective("score", True) if eval_command else None, force=force,
                    search=search) as sweep:
        sweep.run_grid(compute)
        return sweep.finish(plot=False)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file: equal snapshots mean nothing was rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- resume


def test_rerun_resumes_done_points_are_kept_not_recomputed(tmp_path):
    out = tmp_path / "out"
    command = counting_eval(tmp_path)
    first = FakeCompute(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        sweep_once(out, ["t=0:1:0.25"], first, eval_command=command)
    assert first.written == ["t=0.0", "t=0.25"]
    done = {name: snapshot(out / name) for name in first.written}
    evaluated = {row["path"] for row in json.loads((out / "sweep.json").read_text()) if "metrics" in row}
    calls_before = len(calls(tmp_path))

    second = FakeCompute()
    summary = sweep_once(out, ["t=0:1:0.25"], second, eval_command=command)
    assert second.calls == [["t=0.5", "t=0.75", "t=1.0"]]  # one call, pending points only
    assert {name: snapshot(out / name) for name in first.written} == done
    assert summary.exit_code == 0 and [r["path"] for r in summary.rows] == [f"t={t}" for t in
                                                                             (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(r["metrics"]["t_echo"] == r["params"]["t"] for r in summary.rows)
    # Points evaluated before the interruption are not evaluated again; the others are.
    all_points = {"t=0.0", "t=0.25", "t=0.5", "t=0.75", "t=1.0"}
    assert sorted(calls(tmp_path)[calls_before:]) == sorted(all_points - evaluated)

    third = FakeCompute()
    again = sweep_once(out, ["t=0:1:0.25"], third, eval_command=command)
    assert third.calls == [] and again.kept == 5 and again.rows == summary.rows


def test_resume_evaluates_again_after_a_failed_evaluation_or_a_new_command(tmp_path):
    out = tmp_path / "out"
    flaky = tmp_path / "flaky.sh"
    flaky.write_text('case "$1" in *t=1.0) exit 4;; *) cat "$1/m.json";; esac\n')
    first = sweep_once(out, ["t=0,1"], FakeCompute(), eval_command=f"sh {flaky} {{adapter}}")
    assert [r["status"] for r in first.rows] == ["ok", "failed"]
    flaky.write_text('cat "$1/m.json"\n')  # the evaluator got fixed; same command
    compute = FakeCompute()
    second = sweep_once(out, ["t=0,1"], compute, eval_command=f"sh {flaky} {{adapter}}")
    assert compute.calls == [] and [r["status"] for r in second.rows] == ["ok", "ok"]

    command = counting_eval(tmp_path)  # another command: its metrics replace the old ones
    third = sweep_once(out, ["t=0,1"], FakeCompute(), eval_command=command)
    assert sorted(calls(tmp_path)) == ["t=0.0", "t=1.0"] and third.exit_code == 0


def test_resume_with_a_larger_grid_computes_only_the_new_points(tmp_path):
    out = tmp_path / "out"
    sweep_once(out, ["t=0,1"], FakeCompute())
    compute = FakeCompute()
    summary = sweep_once(out, ["t=0:2:0.5"], compute)
    assert compute.calls == [["t=0.5", "t=1.5", "t=2.0"]]
    assert summary.kept == 2 and len(summary.rows) == 5


def test_points_outside_the_new_grid_are_left_and_noted(tmp_path):
    out = tmp_path / "out"
    sweep_once(out, ["t=0,1,2"], FakeCompute())
    summary = sweep_once(out, ["t=0"], FakeCompute())
    assert (out / "t=2.0").is_dir() and [r["path"] for r in summary.rows] == ["t=0.0"]
    assert any("2 point folders of earlier runs" in note for note in summary.notes)


# ---------------------------------------------------------------- --force


@pytest.mark.parametrize("change, reason", [
    (Fingerprint("other-recipe", FINGERPRINT.input_hashes, FINGERPRINT.settings), "the recipe changed"),
    (Fingerprint(FINGERPRINT.recipe_hash, {"H": "h-sha", "T": "new"}, FINGERPRINT.settings), "input T changed"),
    (Fingerprint(FINGERPRINT.recipe_hash, FINGERPRINT.input_hashes, {"out_dtype": "bfloat16"}),
     "settings changed (out_dtype)"),
])
def test_another_sweep_in_the_folder_needs_force(tmp_path, change, reason):
    out = tmp_path / "out"
    sweep_once(out, ["t=0,1"], FakeCompute())
    before = snapshot(out)
    with pytest.raises(AdapterError, match="use --force") as info:
        sweep_once(out, ["t=0,1"], FakeCompute(), fingerprint=change)
    assert reason in str(info.value)
    assert snapshot(out) == before

    compute = FakeCompute()
    summary = sweep_once(out, ["t=5"], compute, fingerprint=change, force=True)
    assert compute.calls == [["t=5.0"]] and summary.kept == 0
    assert sorted(os.listdir(out)) == sorted([LOCK_NAME, MANIFEST_NAME, "sweep.csv", "sweep.json", "t=5.0"])
    assert json.loads((out / MANIFEST_NAME).read_text())["recipe_hash"] == change.recipe_hash


def test_a_grid_sweep_does_not_resume_a_search_folder(tmp_path):
    out = tmp_path / "out"
    sweep_once(out, ["t=0"], FakeCompute(), search={"space": "x"})
    with pytest.raises(AdapterError, match="holds a search sweep, this is a grid"):
        sweep_once(out, ["t=0"], FakeCompute())


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_is_not_a_sweep_is_never_used_or_replaced(tmp_path, force):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    (out / "t=0.0").mkdir()
    with pytest.raises(AdapterError, match="not a dipm sweep folder") as info:
        sweep_once(out, ["t=0"], FakeCompute(), force=force)
    assert "notes.txt" in str(info.value)
    assert sorted(os.listdir(out)) == ["notes.txt", "t=0.0"]  # not even a lock file was left


def test_force_refuses_a_sweep_folder_with_foreign_files(tmp_path):
    out = tmp_path / "out"
    sweep_once(out, ["t=0"], FakeCompute())
    (out / "analysis.ipynb").write_text("{}")
    (out / "t=0.0" / "extra").write_text("fine: inside a point")
    with pytest.raises(AdapterError, match="analysis.ipynb"):
        sweep_once(out, ["t=0"], FakeCompute(), fingerprint=Fingerprint("new", {}), force=True)
    assert (out / "analysis.ipynb").exists() and (out / "t=0.0").is_dir()


def test_empty_or_missing_folders_and_a_file_in_the_way(tmp_path):
    (tmp_path / "empty").mkdir()
    assert sweep_once(tmp_path / "empty", ["t=0"], FakeCompute()).exit_code == 0
    assert sweep_once(tmp_path / "a" / "b", ["t=0"], FakeCompute()).exit_code == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match="not a folder"):
        sweep_once(tmp_path / "file", ["t=0"], FakeCompute(), force=True)


# ---------------------------------------------------------------- lock and staging


def test_two_sweeps_cannot_share_a_folder_at_once(tmp_path):
    axes = parse_grid(["t=0"])
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes):
        with pytest.raises(AdapterError, match="another dipm sweep"):
            Sweep.open(tmp_path / "out", FINGERPRINT, axes)
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes):  # released on close
        pass


def test_a_failed_point_leaves_no_partial_folder_and_stale_staging_is_removed(tmp_path):
    out = tmp_path / "out"

    def half_written(points, sink):
        for point in points:
            with pytest.raises(RuntimeError):
                with sink.stage(point) as target:
                    target.mkdir()
                    (target / "adapter_config.json").write_text("{}")
                    raise RuntimeError("died halfway")
            sink.failed(point, "died halfway")

    summary = sweep_once(out, ["t=0,1"], half_written)
    assert [r["status"] for r in summary.rows] == ["failed", "failed"]
    assert sorted(os.listdir(out)) == sorted([LOCK_NAME, MANIFEST_NAME, "sweep.csv", "sweep.json"])

    stale = out / ".t=0.0.sweep-stage-12345"
    (stale / "t=0.0").mkdir(parents=True)
    (out / ".sweep.json.dipm-tmp-abc").write_text("[")
    compute = FakeCompute()
    sweep_once(out, ["t=0,1"], compute)
    assert compute.calls == [["t=0.0", "t=1.0"]]  # failed points are computed again
    assert not stale.exists() and not (out / ".sweep.json.dipm-tmp-abc").exists()


def test_a_written_point_is_never_overwritten(tmp_path):
    axes = parse_grid(["t=0"])
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes) as sweep:
        (point,) = sweep.grid_points()
        FakeCompute()([point], sweep)
        with pytest.raises(AdapterError, match="never overwrites"):
            with sweep.stage(point):
                pass
        with pytest.raises(RuntimeDipmError, match="not there"):
            sweep.written(type(point)((("t", 9.0),)))


def test_direct_writes_without_staging_are_accepted(tmp_path):
    summary = sweep_once(tmp_path / "out", ["t=0,1"], FakeCompute(stage=False))
    assert [r["status"] for r in summary.rows] == ["ok", "ok"]


def test_one_pass_writer_keeps_many_points_open_then_commits_each(tmp_path):
    """The lead's shape: begin every point, stream modules into all of them, commit each."""
    out = tmp_path / "out"

    def one_pass(points, sink):
        targets = {point: sink.begin(point) for point in points}
        for target in targets.values():  # a recipe with two saves: a folder of two adapters
            for save in ("detox", "baseline"):
                (target / save).mkdir(parents=True)
        for point, target in targets.items():
            assert not sink.path(point).exists()  # nothing visible before the commit
            for save in ("detox", "baseline"):
                (target / save / "adapter_config.json").write_text(json.dumps(point.values))
            if point.values["t"] == 1.0:
                sink.discard(point)
                sink.failed(point, "the result is zero everywhere")
            else:
                assert sink.commit(point) == sink.path(point)
                sink.written(point)

    summary = sweep_once(out, ["t=0,0.5,1"], one_pass)
    assert [r["status"] for r in summary.rows] == ["ok", "ok", "failed"]
    assert json.loads((out / "t=0.5" / "baseline" / "adapter_config.json").read_text()) == {"t": 0.5}
    assert not (out / "t=1.0").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".") and n != LOCK_NAME]


def test_points_begun_but_never_committed_are_cleaned_up_on_close(tmp_path):
    out = tmp_path / "out"

    def crash(points, sink):
        for point in points:
            sink.begin(point).mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_once(out, ["t=0,1"], crash)
    assert sorted(os.listdir(out)) == sorted([LOCK_NAME, MANIFEST_NAME, "sweep.csv", "sweep.json"])


def test_metrics_of_an_old_eval_command_never_pass_for_the_new_one(tmp_path):
    """Interrupted while re-evaluating under a new command: the next run must not keep the old
    command's metrics as if they were the new one's."""
    out = tmp_path / "out"
    command_a = counting_eval(tmp_path)
    sweep_once(out, ["t=0,1"], FakeCompute(), eval_command=command_a)
    assert sorted(calls(tmp_path)) == ["t=0.0", "t=1.0"]
    hang = "sleep 30 # {adapter}"
    with pytest.raises(KeyboardInterrupt):  # killed right after opening: the table still holds A's
        with Sweep.open(out, FINGERPRINT, parse_grid(["t=0,1"]), eval_spec=EvalSpec(hang)):
            raise KeyboardInterrupt
    assert json.loads((out / MANIFEST_NAME).read_text())["eval"] == command_a
    assert len(json.loads((out / "sweep.json").read_text())) == 2
    with pytest.raises(KeyboardInterrupt):  # killed while re-evaluating: A's metrics are gone
        with Sweep.open(out, FINGERPRINT, parse_grid(["t=0,1"]), eval_spec=EvalSpec(hang)) as sweep:
            sweep.run_grid(FakeCompute())
            raise KeyboardInterrupt
    assert json.loads((out / "sweep.json").read_text()) == []
    assert json.loads((out / MANIFEST_NAME).read_text())["eval"] == hang
    sweep_once(out, ["t=0,1"], FakeCompute(), eval_command=command_a)
    assert sorted(calls(tmp_path)) == ["t=0.0", "t=0.0", "t=1.0", "t=1.0"]  # evaluated again
