"""`dipm sweep`'s flags and their checks, the printed run, and the progress bar's width."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest

from dipm_lang.errors import UsageError
from dipm_lang.cli.sweep import add_sweep_arguments, options_from
from dipm_lang.sweeps.plan import SweepOptions, plan_sweep, run_sweep
from dipm_lang.sweeps.progress import Progress

from sweep_helpers import CAT, FINGERPRINT, FakeCompute


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dipm sweep")
    p.add_argument("recipe")
    add_sweep_arguments(p)
    p.add_argument("--force", action="store_true")  # dipm run's shared options
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def options(*argv: str) -> SweepOptions:
    return options_from(parser().parse_args(["r.dipm", *argv]))


def test_flags_become_options():
    o = options("--grid", "t=0:1:0.1", "--grid", "w=1,2", "-o", "out", "--eval", "e {adapter}",
                "--eval-timeout", "30", "--maximize", "acc", "--jobs", "4", "--executor", "ray",
                "--ray-address", "auto", "--eval-gpus", "0.5", "--eval-cpus", "2", "--max-points", "5000",
                "--force", "--no-plot")
    assert o == SweepOptions(grid=("t=0:1:0.1", "w=1,2"), output="out", eval_command="e {adapter}",
                             eval_timeout=30.0, maximize="acc", jobs=4, executor="ray", ray_address="auto",
                             eval_gpus=0.5, eval_cpus=2.0, max_points=5000, force=True, plot=False)
    plan = plan_sweep(o, parameters=["t", "w"])
    assert plan.points == 22 and plan.objective.maximize and plan.eval.timeout == 30.0


@pytest.mark.parametrize("argv", [
    ("--jobs", "0"), ("--eval-timeout", "0"), ("--eval-timeout", "nan"), ("--eval-gpus", "-1"),
    ("--maximize", "a", "--minimize", "b"), ("--executor", "dask"), ("--search", "grid"),
])
def test_argparse_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as info:
        options("--grid", "t=0", "-o", "out", *argv)
    assert info.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (("--maximize", "acc"), "needs --eval"),
    (("--eval-timeout", "5"), "--eval-timeout needs --eval"),
    (("--eval", "e {adapter}", "--ray-address", "auto"), "--ray-address needs --executor ray"),
    (("--eval", "e {adapter}", "--eval-gpus", "1"), "--eval-gpus needs --executor ray"),
    (("--executor", "ray",), "needs --eval"),
    (("--search", "optuna", "--trials", "5"), "--search needs --eval"),
    (("--search", "optuna", "--eval", "e {adapter}", "--minimize", "l"), "--search needs --trials"),
    (("--trials", "5",), "--trials needs --search"),
    (("--seed", "1",), "--seed needs --search"),
    (("--eval", "evaluate.py",), "{adapter}"),
])
def test_flag_combinations_are_checked_before_anything_runs(argv, message):
    with pytest.raises(UsageError) as info:
        plan_sweep(options("--grid", "t=0", "-o", "out", *argv))
    assert message in str(info.value) and info.value.exit_code == 2


def test_grid_names_are_checked_against_the_recipe():
    with pytest.raises(UsageError, match="did you mean 't'"):
        plan_sweep(options("--grid", "tt=0", "-o", "out"), parameters=["t"])


def test_search_plan_accepts_continuous_ranges():
    plan = plan_sweep(options("--grid", "t=0:1", "-o", "o", "--search", "optuna", "--trials", "3",
                              "--eval", "e {adapter}", "--minimize", "loss"))
    assert plan.search["space"] == [{"name": "t", "low": 0.0, "high": 1.0}] and plan.search["direction"] == "minimize"


def test_run_sweep_prints_the_table_and_returns_the_exit_code(tmp_path):
    out = tmp_path / "out"
    plan = plan_sweep(options("--grid", "t=0:1:0.5", "-o", str(out), "--eval", CAT, "--maximize", "score",
                              "--jobs", "2"))
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_sweep(plan, FakeCompute(fail={"t=1.0"}), FINGERPRINT, stdout=stdout, stderr=stderr)
    assert code == 1
    text = stdout.getvalue()
    assert "3 points, 2 ok, 1 failed" in text and "best (maximize score): t=0.5" in text
    assert re.search(r"^\* +0\.5 +ok", text, re.M)
    assert "t=1.0: cannot compute t=1.0" in text and str(out / "sweep.png") in text.replace("\n  ", "")
    assert stderr.getvalue() == ""  # no progress bar when stderr is not a terminal
    assert len(json.loads((out / "sweep.json").read_text())) == 3


def test_a_metric_nobody_reports_is_a_usage_error_after_the_table(tmp_path):
    plan = plan_sweep(options("--grid", "t=0,1", "-o", str(tmp_path / "o"), "--eval", CAT, "--minimize", "scroe",
                              "-q"))
    with pytest.raises(UsageError, match="did you mean 'score'"):
        run_sweep(plan, FakeCompute(), FINGERPRINT, stdout=io.StringIO())
    assert len(json.loads((tmp_path / "o" / "sweep.json").read_text())) == 2


def test_progress_bar_never_reaches_80_columns(tmp_path):
    stream = io.StringIO()
    bar = Progress(1000, enabled=True, stream=stream, width=80)
    for i in range(5):
        bar.advance("t=0.30000000000000004,lam=1.2345678901234567,w=0.1111111111111111", ok=i % 2 == 0)
    bar.close()
    pieces = [p for p in re.split(r"[\r\n]", stream.getvalue()) if p]
    assert pieces and max(len(p) for p in pieces) <= 79
    assert "2 failed" in stream.getvalue()
    narrow = io.StringIO()
    Progress(10, enabled=True, stream=narrow, width=50).close()
    assert max(len(p) for p in re.split(r"[\r\n]", narrow.getvalue())) <= 49


def test_run_sweep_draws_progress_when_asked(tmp_path):
    stderr = io.StringIO()
    plan = plan_sweep(options("--grid", "t=0:1:0.25", "-o", str(tmp_path / "o"), "--progress", "-q"))
    assert run_sweep(plan, FakeCompute(), FINGERPRINT, stdout=io.StringIO(), stderr=stderr) == 0
    assert "5/5" in stderr.getvalue()
