"""`--search optuna`: seeded reproducibility, resuming an interrupted search, categorical grids,
failures, and the same table and best pick as a grid."""

from __future__ import annotations

import json

import pytest

from dipm_lang.errors import UsageError
from dipm_lang.sweeps.folder import JOURNAL_NAME
from dipm_lang.sweeps.grid import parse_grid
from dipm_lang.sweeps.points import parse_point_name
from dipm_lang.sweeps.search import describe_search, run_search
from dipm_lang.sweeps.sweep import EvalSpec, Objective, Sweep

from sweep_helpers import CAT, FINGERPRINT, FakeCompute

GRID = ["t=0:1", "w=1,2,3"]


def search(out, compute, *, trials=12, seed=0, batch=1, grid=GRID, command=CAT, objective=("score", True)):
    axes = parse_grid(grid, search=True)
    objective = Objective(*objective)
    with Sweep.open(out, FINGERPRINT, axes, eval_spec=EvalSpec(command), objective=objective,
                    search=describe_search(axes, objective, command)) as sweep:
        run_search(sweep, compute, trials=trials, seed=seed, batch=batch)
        return sweep.finish(plot=False)


def trial_params(summary):
    return [(row["trial"], row["params"]) for row in summary.rows]


def test_same_seed_same_trials_other_seed_other_trials(tmp_path):
    a = search(tmp_path / "a", FakeCompute())
    b = search(tmp_path / "b", FakeCompute())
    c = search(tmp_path / "c", FakeCompute(), seed=1, trials=3)
    assert trial_params(a) == trial_params(b)
    assert [row["metrics"] for row in a.rows] == [row["metrics"] for row in b.rows]
    assert trial_params(a)[:3] != trial_params(c)
    assert (tmp_path / "a" / JOURNAL_NAME).stat().st_size > 0


def test_points_are_named_and_tabled_as_for_grids(tmp_path):
    summary = search(tmp_path / "out", FakeCompute())
    assert [row["trial"] for row in summary.rows] == sorted({row["trial"] for row in summary.rows})
    for row in summary.rows:
        assert parse_point_name(row["path"]) == row["params"]
        assert 0.0 <= row["params"]["t"] <= 1.0 and row["params"]["w"] in (1.0, 2.0, 3.0)  # categorical
        assert row["metrics"]["score"] == 1.0 - (row["params"]["t"] - 0.3) ** 2 + 0.01 * row["params"]["w"]
        assert (tmp_path / "out" / row["path"] / "values.json").exists()
    scores = [row["metrics"]["score"] for row in summary.rows]
    assert summary.best == scores.index(max(scores)) and summary.rows[summary.best]["best"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == summary.rows


def test_an_interrupted_search_resumes_to_the_same_result(tmp_path):
    reference = search(tmp_path / "ref", FakeCompute())
    out = tmp_path / "out"
    first = FakeCompute(crash_after=5)  # dies in the 6th round, after asking its trial
    with pytest.raises(KeyboardInterrupt):
        search(out, first)
    second = FakeCompute()
    resumed = search(out, second)
    assert trial_params(resumed) == trial_params(reference)
    assert [row["metrics"] for row in resumed.rows] == [row["metrics"] for row in reference.rows]
    assert set(first.written).isdisjoint(second.written)  # nothing computed twice
    assert second.calls[0] == [reference.rows[5]["path"]]  # the interrupted trial is finished first
    assert resumed.kept == 5


def test_a_point_written_before_the_interruption_is_evaluated_not_recomputed(tmp_path):
    out = tmp_path / "out"

    def write_then_die(points, sink):
        FakeCompute()(points, sink)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(out, write_then_die, trials=3)
    compute = FakeCompute()
    summary = search(out, compute, trials=3)
    assert len(summary.rows) == 3 and summary.exit_code == 0
    assert summary.rows[0]["path"] not in compute.written
    assert len(compute.calls) == 2


def test_more_trials_continue_the_study(tmp_path):
    out = tmp_path / "out"
    search(out, FakeCompute(), trials=4)
    compute = FakeCompute()
    summary = search(out, compute, trials=6)
    assert len(compute.calls) == 2 and len(summary.rows) == 6 and summary.kept == 4


def test_batches_of_jobs_points_per_compute_call(tmp_path):
    compute = FakeCompute()
    summary = search(tmp_path / "out", compute, trials=5, batch=2)
    assert [len(call) for call in compute.calls] == [2, 2, 1]
    assert len(summary.rows) == 5


def test_failed_points_are_failed_trials_and_the_search_goes_on(tmp_path):
    import optuna

    script = tmp_path / "e.sh"
    script.write_text('case "$1" in *w=2.0) exit 1;; *) cat "$1/m.json";; esac\n')
    summary = search(tmp_path / "out", FakeCompute(), trials=8, command=f"sh {script} {{adapter}}")
    study = optuna.load_study(study_name="dipm-sweep", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / JOURNAL_NAME))))
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 8
    for row in summary.rows:
        expected = "FAIL" if row["params"]["w"] == 2.0 else "COMPLETE"
        assert states[row["trial"]] == expected
        assert row["status"] == ("failed" if expected == "FAIL" else "ok")


def test_search_needs_an_objective_and_checks_the_metric_name(tmp_path):
    axes = parse_grid(GRID, search=True)
    with Sweep.open(tmp_path / "a", FINGERPRINT, axes, search={"x": 1}) as sweep:
        with pytest.raises(UsageError, match="needs --eval"):
            run_search(sweep, FakeCompute(), trials=3)
    with pytest.raises(UsageError, match="did you mean 'score'"):
        search(tmp_path / "b", FakeCompute(), trials=3, objective=("scores", True))


def test_repeated_points_are_computed_once_and_told_again(tmp_path):
    compute = FakeCompute()
    summary = search(tmp_path / "out", compute, trials=6, grid=["w=1,2"])
    computed = [name for call in compute.calls for name in call]
    assert len(computed) == len(set(computed)) == len(summary.rows) <= 2
    import optuna

    study = optuna.load_study(study_name="dipm-sweep", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / JOURNAL_NAME))))
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    by_w = {row["params"]["w"]: row["metrics"]["score"] for row in summary.rows}
    assert all(t.value == by_w[t.params["w"]] for t in study.trials)


def test_search_through_the_command_line_layer(tmp_path):
    import io

    from dipm_lang.sweeps.plan import SweepOptions, plan_sweep, run_sweep

    plan = plan_sweep(SweepOptions(grid=("t=0:1", "w=1,2"), output=str(tmp_path / "o"), eval_command=CAT,
                                   maximize="score", search="optuna", trials=4, seed=3, jobs=2))
    stdout = io.StringIO()
    assert run_sweep(plan, FakeCompute(), FINGERPRINT, stdout=stdout, stderr=io.StringIO()) == 0
    rows = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert len(rows) == 4 and sum(row["best"] for row in rows) == 1
    assert "best (maximize score)" in stdout.getvalue() and (tmp_path / "o" / "sweep.png").is_file()
