"""The results table: `DIR/sweep.json` (a list, one object per point) and `DIR/sweep.csv`.

A row (SPEC §7.7):

    {"params": {"t": 0.3}, "path": "t=0.3", "status": "ok", "metrics": {"acc": 0.91}, "best": true}

- `status` is `"ok"` or `"failed"`. A point fails when its adapter could not be computed
  (`"error"`: the message) or, with `--eval`, when its evaluation failed (`"eval"`: `exit_code`,
  `reason`, and the last `stderr` lines). A point evaluated successfully has `"metrics"`.
- `"best"` (with `--maximize`/`--minimize`) is true on exactly the best row, false elsewhere.
- `"trial"` (with `--search`) is the Optuna trial number that first asked for the point.

The CSV flattens the same keys with dots, as `pandas.json_normalize` does: `params.t`,
`metrics.acc`, `eval.exit_code`, `eval.reason`, `eval.stderr` (lines joined by newlines).
Both files are rewritten atomically each time a point finishes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dipm_lang.sweeps.files import write_atomic
from dipm_lang.sweeps.points import Point

TABLE_NAME = "sweep.json"
CSV_NAME = "sweep.csv"

Row = dict[str, Any]


def make_row(point: Point, *, metrics: Mapping[str, float] | None = None,
             eval_failure: Mapping[str, Any] | None = None, error: str | None = None,
             trial: int | None = None) -> Row:
    """The row of a finished point; it failed iff `eval_failure` or `error` is given."""
    row: Row = {"params": point.values, "path": point.name,
                "status": "failed" if (eval_failure is not None or error is not None) else "ok"}
    if trial is not None:
        row["trial"] = trial
    if metrics is not None:
        row["metrics"] = dict(metrics)
    if eval_failure is not None:
        row["eval"] = dict(eval_failure)
    if error is not None:
        row["error"] = error
    return row


def metric_value(row: Row, metric: str) -> float | None:
    """The row's `metric` when the row may compete for best: ok, and the metric a finite number."""
    if row.get("status") != "ok":
        return None
    value = (row.get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pick_best(rows: Sequence[Row], metric: str, maximize: bool) -> int | None:
    """Index of the best row; ties go to the first in point order; failed rows never win."""
    best, best_value = None, 0.0
    for i, row in enumerate(rows):
        value = metric_value(row, metric)
        if value is None:
            continue
        if best is None or (value > best_value if maximize else value < best_value):
            best, best_value = i, value
    return best


def mark_best(rows: Sequence[Row], best: int | None) -> list[Row]:
    return [{**row, "best": i == best} for i, row in enumerate(rows)]


def metric_names(rows: Sequence[Row]) -> list[str]:
    """Every metric any row has, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.get("metrics") or {}))
    return list(names)


def read_table(folder: Path) -> list[Row]:
    """The rows a previous run wrote (empty if none, or unreadable: the points are then redone)."""
    try:
        rows = json.loads((folder / TABLE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("path"), str)] \
        if isinstance(rows, list) else []


def write_table(folder: Path, rows: Sequence[Row]) -> None:
    """Write sweep.json, then sweep.csv, each atomically."""
    write_atomic(folder / TABLE_NAME, (json.dumps(list(rows), indent=1, allow_nan=False) + "\n").encode())
    write_atomic(folder / CSV_NAME, csv_text(rows).encode())


def csv_text(rows: Sequence[Row]) -> str:
    flat = [_flatten(row) for row in rows]
    columns: dict[str, None] = {}
    for first in ("path", "status", "best", "trial"):
        if any(first in row for row in flat):
            columns[first] = None
    for prefix in ("params.", "metrics.", "eval.", "error"):
        for row in flat:
            columns.update(dict.fromkeys(key for key in row if key.startswith(prefix)))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in flat:
        writer.writerow(_cell(row.get(column)) for column in columns)
    return out.getvalue()


def _flatten(row: Row) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)
