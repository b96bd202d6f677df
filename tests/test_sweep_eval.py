"""The eval hook: how the command runs, what counts as metrics, and failures that stay per point."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dipm_lang.errors import UsageError
from dipm_lang.sweeps import evaluate
from dipm_lang.sweeps.evaluate import EvalJob, parse_metrics, run_eval
from dipm_lang.sweeps.executors import LocalExecutor
from dipm_lang.sweeps.grid import parse_grid
from dipm_lang.sweeps.sweep import EvalSpec, Objective, Sweep

from sweep_helpers import CAT, FINGERPRINT, FakeCompute


def job(command: str, adapter: str = "/nonexistent", timeout: float | None = None, **params) -> EvalJob:
    return EvalJob(command, adapter, dict(params), timeout)


# ---------------------------------------------------------------- one command


def test_last_stdout_line_is_the_metrics():
    result = run_eval(job("""echo 'loading…'; echo '{"a": 0}'; printf '{"a": 1, "b": 2.5}\\n\\n'"""))
    assert result.ok and result.metrics == {"a": 1, "b": 2.5} and result.exit_code == 0


def test_adapter_is_shell_quoted_and_exported(tmp_path):
    folder = tmp_path / "my sweep's dir" / "t=0.3,lam=1.0"
    folder.mkdir(parents=True)
    (folder / "m.json").write_text('{"x": 3}\n')
    result = run_eval(job(CAT + " | tail -n 1", str(folder), t=0.3, lam=1.0))
    assert result.metrics == {"x": 3}
    echo = run_eval(job("""printf '{"same": %d, "params": %d}\\n' \
                        "$([ "$DIPM_SWEEP_ADAPTER" = {adapter} ] && echo 1 || echo 0)" \
                    "$([ "$DIPM_SWEEP_PARAMS" = '{"t": 0.3, "lam": 1.0}' ] && echo 1 || echo 0)" """,
                        str(folder), t=0.3, lam=1.0))
    assert echo.metrics == {"same": 1, "params": 1}


def test_other_braces_are_left_alone():
    result = run_eval(job("""echo '{"n": 1}' # {adapter} {not_a_placeholder}"""))
    assert result.metrics == {"n": 1}


def test_crash_records_exit_code_and_stderr_tail():
    script = "for i in $(seq 1 30); do echo line$i >&2; done; echo '{\"a\": 1}'; exit 3"
    result = run_eval(job(script))
    assert not result.ok and result.exit_code == 3 and result.reason == "exit code 3"
    assert list(result.stderr) == [f"line{i}" for i in range(11, 31)]  # the last 20 lines
    assert result.failure() == {"exit_code": 3, "reason": "exit code 3", "stderr": list(result.stderr)}


def test_timeout_ends_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    result = run_eval(job(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.3))
    assert time.monotonic() - start < 5
    assert not result.ok and result.exit_code is None and result.reason == "timed out after 0.3 s"
    pid = int(pidfile.read_text())
    time.sleep(0.1)
    assert not _alive(pid), "the background child of the timed-out command is still running"


def test_timeout_kills_a_command_that_ignores_sigterm(monkeypatch):
    monkeypatch.setattr(evaluate, "KILL_GRACE_S", 0.2)
    start = time.monotonic()
    result = run_eval(job("trap '' TERM; sleep 30", timeout=0.2))
    assert result.reason == "timed out after 0.2 s"
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("stdout, reason", [
    ("", "no output on stdout"),
    ("just text", "not JSON"),
    ('{"a": 1', "not JSON"),
    ("[1, 2]", "not an object"),
    ("{}", "empty JSON object"),
    ('{"a": "0.5"}', "metric 'a' is not a number"),
    ('{"a": true}', "metric 'a' is not a number"),
    ('{"a": {"b": 1}}', "metric 'a' is not a number"),
    ('{"a": NaN}', "not JSON"),
    ('{"a": 1e999}', "not a finite float"),
    ('{"a": 1' + "0" * 400 + "}", "not a finite float"),
])
def test_invalid_metrics_lines(stdout, reason):
    metrics, problem = parse_metrics(("progress 1/2\n" + stdout if stdout else "\n \n") + "\n")
    assert metrics is None and reason in problem


def test_valid_metrics_keep_ints_and_floats():
    assert parse_metrics('{"n": 3, "acc": 0.25, "neg": -1e-3}') == ({"n": 3, "acc": 0.25, "neg": -0.001}, None)


def test_a_command_that_cannot_start_is_a_failure_not_an_exception(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no shell")

    monkeypatch.setattr(evaluate.subprocess, "Popen", refuse)
    result = run_eval(job("echo '{}'"))
    assert not result.ok and "could not start" in result.reason


def test_eval_spec_needs_the_placeholder_and_a_positive_timeout():
    with pytest.raises(UsageError, match=r"\{adapter\}"):
        EvalSpec("python eval.py")
    with pytest.raises(UsageError, match="positive"):
        EvalSpec("x {adapter}", timeout=0)


# ---------------------------------------------------------------- inside a sweep


DISPATCH = """case "$1" in
  *t=1.0) echo 'Traceback: boom' >&2; exit 3;;
  *t=2.0) sleep 30;;
  *t=3.0) echo 'no json here';;
  *t=4.0) echo '{"score": 1,';;
  *t=5.0) echo '{"score": "high"}';;
  *) cat "$1/m.json";;
esac
"""


def test_failures_stay_per_point_and_the_others_are_unaffected(tmp_path):
    script = tmp_path / "evaluate.sh"
    script.write_text(DISPATCH)
    axes = parse_grid(["t=0:6:1"])
    compute = FakeCompute()
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes, eval_spec=EvalSpec(f"sh {script} {{adapter}}", timeout=0.5),
                    objective=Objective("score", maximize=True), executor=lambda: LocalExecutor(3)) as sweep:
        sweep.run_grid(compute)
        summary = sweep.finish(plot=False)
    rows = {row["path"]: row for row in summary.rows}
    assert [row["path"] for row in summary.rows] == [f"t={t}.0" for t in range(7)]
    for ok in ("t=0.0", "t=6.0"):
        t = float(ok[2:])
        assert rows[ok]["status"] == "ok"
        assert rows[ok]["metrics"] == {"score": 1.0 - (t - 0.3) ** 2, "t_echo": t}
    assert rows["t=1.0"]["eval"] == {"exit_code": 3, "reason": "exit code 3", "stderr": ["Traceback: boom"]}
    assert rows["t=2.0"]["eval"]["reason"] == "timed out after 0.5 s" and rows["t=2.0"]["eval"]["exit_code"] is None
    assert "not JSON" in rows["t=3.0"]["eval"]["reason"]
    assert "not JSON" in rows["t=4.0"]["eval"]["reason"]
    assert "not a number" in rows["t=5.0"]["eval"]["reason"]
    assert all(rows[f"t={t}.0"]["status"] == "failed" for t in range(1, 6))
    assert summary.failed == 5 and summary.exit_code == 1
    assert summary.best == 0  # t=0.0 beats t=6.0; failed points never win
    on_disk = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert on_disk == summary.rows


def test_jobs_n_runs_n_evaluations_at_once_and_matches_results_to_points(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    script = tmp_path / "slow.sh"
    # Record start and end times per point, sleep, then answer with the point's own metrics.
    script.write_text(f'n=$(basename "$1"); date +%s.%N > "{log}/$n.start"; sleep 0.3; '
                      f'date +%s.%N > "{log}/$n.end"; cat "$1/m.json"\n')
    axes = parse_grid(["t=0:0.5:0.1"])
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes, eval_spec=EvalSpec(f"sh {script} {{adapter}}"),
                    executor=lambda: LocalExecutor(3)) as sweep:
        sweep.run_grid(FakeCompute())
        summary = sweep.finish(plot=False)
    assert summary.exit_code == 0
    for row in summary.rows:
        assert row["metrics"]["t_echo"] == row["params"]["t"]
    spans = [(float((log / f"{row['path']}.start").read_text()), float((log / f"{row['path']}.end").read_text()))
             for row in summary.rows]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3


def test_evaluations_start_while_points_are_still_being_computed(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    axes = parse_grid(["t=0,1,2"])
    compute = FakeCompute()
    written_at: list[float] = []

    def slow_compute(points, sink):
        for point in points:
            compute([point], sink)
            written_at.append(time.time())
            time.sleep(0.25)

    command = f'date +%s.%N > "{marks}/$(basename {{adapter}})"; cat {{adapter}}/m.json'
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes, eval_spec=EvalSpec(command),
                    executor=lambda: LocalExecutor(1)) as sweep:
        sweep.run_grid(slow_compute)
        sweep.finish(plot=False)
    first_eval = float((marks / "t=0.0").read_text())
    assert first_eval < written_at[-1]


def test_interrupting_the_sweep_ends_running_evaluations(tmp_path):
    pidfile = tmp_path / "pid"
    axes = parse_grid(["t=0"])

    def compute_then_interrupt(points, sink):
        FakeCompute()(points, sink)
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        command = f"sleep 30 & echo $! > {pidfile}; wait # {{adapter}}"
        with Sweep.open(tmp_path / "out", FINGERPRINT, axes, eval_spec=EvalSpec(command),
                        executor=lambda: LocalExecutor(1)) as sweep:
            sweep.run_grid(compute_then_interrupt)
    time.sleep(0.2)
    assert not _alive(int(pidfile.read_text()))
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == []  # not recorded as failed


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie has exited

