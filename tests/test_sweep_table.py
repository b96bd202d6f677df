"""sweep.json / sweep.csv contents, atomic updates, the best pick, the printed table, the plot."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import threading

import pytest

from dipm_lang.errors import AdapterError
from dipm_lang.io import atomic
from dipm_lang.sweeps import files, table
from dipm_lang.sweeps.grid import parse_grid
from dipm_lang.sweeps.plot import write_plot
from dipm_lang.sweeps.points import Point
from dipm_lang.sweeps.report import format_table
from dipm_lang.sweeps.sweep import EvalSpec, Objective, Sweep, SweepSummary
from dipm_lang.sweeps.table import make_row, pick_best

from sweep_helpers import CAT, FINGERPRINT, FakeCompute


def run(tmp_path, grid, *, eval_command=CAT, objective=("score", True), compute=None, plot=True, **kwargs):
    axes = parse_grid(grid)
    with Sweep.open(tmp_path / "out", FINGERPRINT, axes, eval_spec=EvalSpec(eval_command) if eval_command else None,
                    objective=Objective(*objective) if objective else None, **kwargs) as sweep:
        sweep.run_grid(compute or FakeCompute())
        return sweep.finish(plot=plot)


# ---------------------------------------------------------------- the table


def test_rows_have_the_spec_keys_in_point_order(tmp_path):
    summary = run(tmp_path, ["t=0:0.4:0.2", "w=1,2"], plot=False)
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert rows == summary.rows
    assert [row["path"] for row in rows] == ["t=0.0,w=1.0", "t=0.0,w=2.0", "t=0.2,w=1.0", "t=0.2,w=2.0",
                                             "t=0.4,w=1.0", "t=0.4,w=2.0"]
    for row in rows:
        t, w = row["params"]["t"], row["params"]["w"]
        assert set(row) == {"params", "path", "status", "metrics", "best"}
        assert row["status"] == "ok"
        assert row["metrics"] == {"score": 1.0 - (t - 0.3) ** 2 + 0.01 * w, "t_echo": t}
        assert (tmp_path / "out" / row["path"] / "values.json").exists()
    # best: score = 1 - (t-0.3)^2 + 0.01 w, computed here independently
    scores = [1.0 - (r["params"]["t"] - 0.3) ** 2 + 0.01 * r["params"]["w"] for r in rows]
    assert [r["best"] for r in rows] == [i == scores.index(max(scores)) for i in range(len(rows))]


def test_without_eval_rows_have_no_metrics(tmp_path):
    summary = run(tmp_path, ["t=0,1"], eval_command=None, objective=None)
    assert summary.rows == [{"params": {"t": 0.0}, "path": "t=0.0", "status": "ok"},
                            {"params": {"t": 1.0}, "path": "t=1.0", "status": "ok"}]
    assert summary.exit_code == 0 and summary.plot is None


def test_compute_failures_and_unwritten_points_are_failed_rows(tmp_path):
    compute = FakeCompute(fail={"t=1.0"}, skip={"t=2.0"})
    summary = run(tmp_path, ["t=0,1,2"], compute=compute, plot=False)
    rows = {row["path"]: row for row in summary.rows}
    assert rows["t=0.0"]["status"] == "ok"
    assert rows["t=1.0"] == {"params": {"t": 1.0}, "path": "t=1.0", "status": "failed",
                             "error": "cannot compute t=1.0", "best": False}
    assert rows["t=2.0"]["status"] == "failed" and "did not write" in rows["t=2.0"]["error"]
    assert summary.exit_code == 1


def test_csv_flattens_the_same_keys(tmp_path):
    script = tmp_path / "e.sh"
    script.write_text('case "$1" in *t=1.0,*) echo bad >&2; echo worse >&2; exit 2;; *) cat "$1/m.json";; esac\n')
    run(tmp_path, ["t=0,1", "w=5"], eval_command=f"sh {script} {{adapter}}", plot=False)
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())
    reader = csv.DictReader(io.StringIO((tmp_path / "out" / "sweep.csv").read_text()))
    assert reader.fieldnames == ["path", "status", "best", "params.t", "params.w", "metrics.score", "metrics.t_echo",
                                 "eval.exit_code", "eval.reason", "eval.stderr"]
    got = list(reader)
    assert len(got) == len(rows) == 2
    for flat, row in zip(got, rows):
        assert flat["path"] == row["path"] and flat["status"] == row["status"]
        assert float(flat["params.t"]) == row["params"]["t"] and float(flat["params.w"]) == row["params"]["w"]
        assert flat["best"] == ("true" if row["best"] else "false")
    assert float(got[0]["metrics.score"]) == rows[0]["metrics"]["score"]
    assert got[1]["metrics.score"] == "" and got[1]["eval.exit_code"] == "2"
    assert got[1]["eval.reason"] == "exit code 2" and got[1]["eval.stderr"] == "bad\nworse"


def test_table_updates_are_atomic(tmp_path, monkeypatch):
    """Every rename installs a complete file, and a reader polling during the sweep never sees
    a partial one; a failed write leaves the previous table and no temporary file."""
    out = tmp_path / "out"
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                text = (out / "sweep.json").read_text()
            except FileNotFoundError:
                continue
            try:
                seen.append(len(json.loads(text)))
            except ValueError as exc:
                errors.append(exc)

    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((os.path.dirname(src), os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        run(tmp_path, ["t=0:1:0.05"], plot=False)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen and max(seen) == 21
    table_renames = [r for r in renames if r[2] == "sweep.json"]
    assert len(table_renames) >= 21  # one per finished point at least
    assert all(d == str(out) and files.is_temp_name(src, "sweep.json") for d, src, _ in table_renames)

    before = (out / "sweep.json").read_text()

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(AdapterError, match="disk full"):
        table.write_table(out, [])
    assert (out / "sweep.json").read_text() == before
    assert not [name for name in os.listdir(out) if files.is_temp_name(name)]


# ---------------------------------------------------------------- best


def rows_with(values, failed=()):
    return [make_row(Point((("t", float(i)),)), metrics=None if i in failed else {"m": v},
                     eval_failure={"exit_code": 1, "reason": "x", "stderr": []} if i in failed else None)
            for i, v in enumerate(values)]


def test_best_ties_go_to_the_first_point_and_failed_points_never_win():
    assert pick_best(rows_with([1, 3, 3, 2]), "m", maximize=True) == 1
    assert pick_best(rows_with([1, 3, 3, 2]), "m", maximize=False) == 0
    assert pick_best(rows_with([2, 1, 1]), "m", maximize=False) == 1
    assert pick_best(rows_with([1, 9, 2], failed={1}), "m", maximize=True) == 2
    assert pick_best(rows_with([1, 2], failed={0, 1}), "m", maximize=True) is None
    assert pick_best(rows_with([1, 2]), "other", maximize=True) is None


def test_minimize_marks_the_smallest(tmp_path):
    summary = run(tmp_path, ["t=0:1:0.25"], objective=("t_echo", False), plot=False)
    assert [row["best"] for row in summary.rows] == [True, False, False, False, False]
    assert summary.best == 0


def test_missing_objective_metric_is_reported(tmp_path):
    summary = run(tmp_path, ["t=0,1"], objective=("scor", True), plot=False)
    assert summary.missing_metric and summary.best is None
    assert not any(row["best"] for row in summary.rows)


# ---------------------------------------------------------------- printed table


def test_printed_table_fits_80_columns_and_marks_the_best(tmp_path):
    wide = {f"metric_with_a_long_name_{i}": 0.123456 * i for i in range(12)}
    compute = FakeCompute(lambda v: {"score": 1.0 - (v["t"] - 0.3) ** 2, **wide})
    summary = run(tmp_path / "a-rather-long-folder-name-for-the-sweep" / ("x" * 30), ["t=0:1:0.1", "lam=0.5,1.25"],
                  compute=compute, plot=False)
    text = summary.text(80)
    lines = text.splitlines()
    assert all(len(line) < 80 for line in lines), max(lines, key=len)
    best_lines = [line for line in lines if line.startswith("* ")]
    assert len(best_lines) == 1 and best_lines[0].split()[1:3] == ["0.3", "0.5"]
    assert "more metric columns in sweep.csv" in text
    assert "score" in lines[lines.index("") + 1]  # the objective column is kept


def test_printed_table_lists_failures_with_reasons():
    rows = rows_with([1, 2], failed={1})
    summary = SweepSummary(folder=__import__("pathlib").Path("/tmp/x"), rows=rows, params=["t"],
                           objective=Objective("m", True), best=0, plot=None)
    text = summary.text()
    assert "t=1.0: x" in text and "1 failed" in text


def test_format_table_keeps_parameters_when_nothing_else_fits():
    rows = [make_row(Point(tuple((f"p{i}", 0.123456789 * i) for i in range(12))), metrics={"m": 1.0})]
    lines = format_table(rows, [f"p{i}" for i in range(12)], "m", 79)
    assert all(len(line) <= 79 for line in lines)


# ---------------------------------------------------------------- plot


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_with_one_panel_per_metric_and_parameter(tmp_path):
    summary = run(tmp_path, ["t=0:1:0.25", "w=1,2,3"])
    assert summary.plot == tmp_path / "out" / "sweep.png"
    width, height = png_size(summary.plot.read_bytes())
    # 2 metrics x 2 parameters at 4.2 x 3.0 inches per panel, 100 dpi
    assert (width, height) == (840, 600)
    assert summary.plot.stat().st_size > 10_000


def test_plot_never_overwrites_without_force(tmp_path):
    rows = json.loads(json.dumps(run(tmp_path, ["t=0,1"]).rows))
    target = tmp_path / "plot.png"
    target.write_bytes(b"mine")
    with pytest.raises(AdapterError, match="--force"):
        write_plot(rows, ["t"], target)
    assert target.read_bytes() == b"mine"
    write_plot(rows, ["t"], target, force=True)
    assert png_size(target.read_bytes()) == (840, 300)  # one parameter: its two panels side by side
    assert [n for n in os.listdir(tmp_path) if files.is_temp_name(n)] == []
