"""The sweep plot: one panel per (metric, swept parameter), the best point starred.

Rows of panels are metrics (the objective first), columns are parameters (a single parameter's
panels wrap, three to a row). With one parameter a
panel is a line over its values; with several, points sharing the other parameters' values are
joined into one line (a legend names them when there are few), so interactions stay visible.
Failed points have no metrics and are counted in the title instead.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), and
written like every dipm output: never over an existing file without `force`, staged and renamed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dipm_lang.errors import AdapterError
from dipm_lang.sweeps.files import write_atomic
from dipm_lang.sweeps.table import Row, metric_names

if TYPE_CHECKING:
    from dipm_lang.sweeps.sweep import Objective

MAX_METRICS = 12   # panel rows; more metrics are in the CSV
ONE_PARAM_COLUMNS = 3  # panels per row when a single parameter is swept
MAX_LINES = 8      # above this many combinations of the other parameters: points only, no legend
PANEL = (4.2, 3.0)  # inches per panel
DPI = 100


def write_plot(rows: Sequence[Row], params: Sequence[str], path: str | Path, *, force: bool = False,
               objective: Objective | None = None) -> Path:
    """Draw the plot of `rows` and write it to `path` as PNG; returns the path."""
    path = Path(path)
    if path.exists() and not force:
        raise AdapterError("the plot file already exists (use --force to replace it)", path)
    if path.exists() and not path.is_file():
        raise AdapterError("the plot path exists and is not a file", path)
    write_atomic(path, render_png(rows, params, objective))
    return path


def render_png(rows: Sequence[Row], params: Sequence[str], objective: Objective | None = None) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = metric_names(rows)
    if objective is not None and objective.metric in metrics:
        metrics = [objective.metric] + [m for m in metrics if m != objective.metric]
    hidden = max(0, len(metrics) - MAX_METRICS)
    metrics = metrics[:MAX_METRICS] or ["(no metrics)"]
    params = list(params)
    panels = [(metric, param) for metric in metrics for param in params]
    # A row per metric, a column per parameter; one parameter's panels wrap into rows of ONE_PARAM_COLUMNS.
    columns = len(params) if len(params) > 1 else min(ONE_PARAM_COLUMNS, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows_of_panels), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    ok = [row for row in rows if row.get("status") == "ok"]
    best = next((row for row in rows if row.get("best")), None)
    for i, (metric, param) in enumerate(panels):
        _panel(axes[i], ok, params, param, metric, best, objective, legend=(i == 0))
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    failed = len(rows) - len(ok)
    title = f"{len(rows)} points" + (f", {failed} failed (not shown)" if failed else "")
    if hidden:
        title += f"; {hidden} more metrics in sweep.csv"
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _panel(ax, rows: list[Row], params: list[str], param: str, metric: str, best: Row | None,
           objective: Objective | None, legend: bool) -> None:
    others = [p for p in params if p != param]
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        value = (row.get("metrics") or {}).get(metric)
        if value is None:
            continue
        key = tuple(row["params"][p] for p in others)
        groups.setdefault(key, []).append((row["params"][param], float(value)))
    joined = len(groups) <= MAX_LINES
    for key, points in groups.items():
        points.sort()
        xs, ys = [x for x, _ in points], [y for _, y in points]
        label = ", ".join(f"{p}={v:g}" for p, v in zip(others, key)) or None
        if joined:
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, label=label)
        else:
            ax.scatter(xs, ys, s=14, alpha=0.6, color="tab:blue")
    if best is not None and metric in (best.get("metrics") or {}):
        ax.scatter([best["params"][param]], [best["metrics"][metric]], marker="*", s=220, color="tab:red",
                   edgecolor="black", linewidth=0.6, zorder=5, label="best")
        ax.annotate("best", (best["params"][param], best["metrics"][metric]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color="tab:red")
    ax.set_xlabel(param)
    better = ""
    if objective is not None and metric == objective.metric:
        better = " (higher is better)" if objective.maximize else " (lower is better)"
    ax.set_ylabel(metric + better)
    ax.set_title(f"{metric} vs {param}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend and (joined and len(groups) > 1 or best is not None):
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            ax.legend(fontsize=7, loc="best")
