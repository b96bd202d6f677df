"""The table printed at the end of a sweep: one line per point, the best row marked with `*`,
every line shorter than the terminal (80 columns by default) so nothing wraps.

Written by hand rather than with rich: a fixed-width text table is forty lines, and the fitting
rule is ours to choose — parameters and the objective metric always stay; other metric columns
are dropped from the right until the table fits (the CSV has them all).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dipm_lang.sweeps.table import Row, metric_names, metric_value

if TYPE_CHECKING:
    from dipm_lang.sweeps.sweep import SweepSummary

MAX_ROWS = 50          # above this, show the best (or first) TOP_ROWS rows
TOP_ROWS = 20
MAX_HEADER = 16        # a longer column name is cut with "…"
GAP = "  "


def format_summary(summary: SweepSummary, width: int = 80) -> str:
    limit = max(40, width) - 1
    rows = summary.rows
    objective = summary.objective
    ok = len(rows) - summary.failed
    lines = [f"sweep: {len(rows)} point{'s' if len(rows) != 1 else ''}, {ok} ok, {summary.failed} failed"
             + (f" ({summary.kept} kept from an earlier run)" if summary.kept else "") + f" — {summary.folder}"]
    if objective is not None:
        if summary.best is not None:
            best = rows[summary.best]
            value = metric_value(best, objective.metric)
            lines.append(f"best ({objective.direction} {objective.metric}): {best['path']} "
                         f"({objective.metric} = {_number(value)})")
        else:
            lines.append(f"best ({objective.direction} {objective.metric}): none — no ok point has that metric")
    lines = [piece for line in lines for piece in _wrap(line, limit)]
    shown, note = _select(rows, objective)
    lines.append("")
    lines += format_table(shown, summary.params, objective.metric if objective else None, limit)
    if note:
        lines.append(note)
    failures = [row for row in rows if row["status"] != "ok"]
    if failures:
        lines.append("failed:")
        for row in failures[:TOP_ROWS]:
            lines += _wrap(f"  {row['path']}: {failure_reason(row)}", limit, indent="      ")
        if len(failures) > TOP_ROWS:
            lines.append(f"  … and {len(failures) - TOP_ROWS} more (see sweep.json)")
    for text in summary.notes:
        lines += _wrap(f"note: {text}", limit)
    if summary.plot is not None:
        lines += _wrap(f"plot: {summary.plot}", limit)
    return "\n".join(lines)


def format_table(rows: Sequence[Row], params: Sequence[str], metric: str | None, limit: int) -> list[str]:
    """Aligned columns — mark, parameters, status, metrics — each line at most `limit` long."""
    metrics = metric_names(rows)
    if metric in metrics:
        metrics = [metric] + [m for m in metrics if m != metric]
    columns: list[tuple[str, list[str], bool]] = [
        (_header(p), [_param(row["params"].get(p)) for row in rows], True) for p in params]
    columns.append(("status", [row["status"] for row in rows], False))
    for name in metrics:
        columns.append((_header(name), [_metric(row, name) for row in rows], True))
    dropped = 0
    while _width(columns) > limit and len(columns) > len(params) + 1 + (1 if metric in metrics else 0):
        columns.pop()
        dropped += 1
    widths = [max(len(header), *(len(c) for c in cells)) if cells else len(header)
              for header, cells, _ in columns]
    out = ["  " + GAP.join(_align(h, w, right) for (h, _, right), w in zip(columns, widths))]
    for i, row in enumerate(rows):
        mark = "* " if row.get("best") else "  "
        out.append(mark + GAP.join(_align(cells[i], w, right) for (_, cells, right), w in zip(columns, widths)))
    out = [line.rstrip() for line in out]
    if dropped:
        out.append(f"({dropped} more metric column{'s' if dropped > 1 else ''} in sweep.csv)")
    return [_clip(line, limit) for line in out]


def failure_reason(row: Row) -> str:
    if "error" in row:
        return str(row["error"])
    failure: dict[str, Any] = row.get("eval") or {}
    reason = str(failure.get("reason") or "failed")
    stderr = [line for line in failure.get("stderr") or [] if line.strip()]
    return reason + (f" — {stderr[-1].strip()}" if stderr else "")


def _select(rows: Sequence[Row], objective) -> tuple[list[Row], str | None]:
    if len(rows) <= MAX_ROWS:
        return list(rows), None
    if objective is None:
        return list(rows[:MAX_ROWS]), f"(first {MAX_ROWS} of {len(rows)} points; all are in sweep.csv)"
    ranked = [row for row in rows if metric_value(row, objective.metric) is not None]
    # sort is stable: ties keep point order, as the best pick does
    ranked.sort(key=lambda row: metric_value(row, objective.metric), reverse=objective.maximize)
    return ranked[:TOP_ROWS], f"(the {min(TOP_ROWS, len(ranked))} best of {len(rows)} points; all are in sweep.csv)"


def _width(columns) -> int:
    widths = [max(len(header), *(len(c) for c in cells)) if cells else len(header) for header, cells, _ in columns]
    return 2 + sum(widths) + len(GAP) * (len(widths) - 1)


def _header(name: str) -> str:
    return name if len(name) <= MAX_HEADER else name[:MAX_HEADER - 1] + "…"


def _param(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    text = repr(float(value))
    return text if len(text) <= 10 else f"{value:.6g}"


def _metric(row: Row, name: str) -> str:
    value = (row.get("metrics") or {}).get(name)
    return "-" if value is None else _number(value)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _align(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _clip(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _wrap(text: str, limit: int, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, limit, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False) or [""]
