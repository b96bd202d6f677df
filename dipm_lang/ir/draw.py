"""Draw a plan to PNG with matplotlib (no Graphviz binary needed): `dipm explain --png`.

The positions come from `ir/layout.py`; this module only paints them: boxes coloured by role
(inputs, outputs, fused operations, constants), one frame per output and a grey band for the
shared work, curved edges that enter each box at one port per operand, labelled with the
operator's parameter names. Very large plans are refused with a message rather than drawn as an
unreadable poster: `--dot` (for Graphviz) and `--json` have no such limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dipm_lang.errors import RuntimeDipmError
from dipm_lang.ir.layout import LINE_H, PAD_Y, Layout, layout
from dipm_lang.ir.view import SHARED, PlanView

MAX_NODES = 300         # beyond this a picture is a tangle at any size
MAX_INCHES = 90.0       # 9000 px at DPI: larger PNGs are slow to open and no easier to read
DPI = 100
HEADER = 0.75           # inches above the plan: title and legend
FONT = "DejaVu Sans Mono"  # ships with matplotlib; monospaced, so box widths follow the text

FILL = {"load": "#cfe2ff", "save": "#cdebd0", "fused": "#ffd27a", "const": "#ffffff", "list": "#eeeeee",
        "op": "#ffffff"}
EDGE = {"load": "#4a78c2", "save": "#3f8f4a", "fused": "#c77700", "const": "#bbbbbb", "list": "#999999",
        "op": "#555555"}
FAN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
              "#ff7f0e", "#7f7f7f")  # matplotlib's tab10, orange last (it is the fused nodes' colour)
LEGEND = (("load", "input (load)"), ("save", "output (save)"), ("fused", "fused by the compiler"),
          ("op", "operation"))


class TooLargeToDraw(RuntimeDipmError):
    """The plan is too large for a readable picture."""


def check_size(view: PlanView) -> None:
    """Refuse, before any layout work, a plan too large to draw readably."""
    if len(view.nodes) > MAX_NODES:
        raise TooLargeToDraw(
            f"the plan has {len(view.nodes)} nodes; --png draws at most {MAX_NODES} readably",
            hint="write --dot OUT.dot and lay it out with Graphviz (dot -Tsvg), or read --json")


def draw_png(view: PlanView, path: str | Path, *, title: str = "") -> tuple[int, int]:
    """Draw `view` to the PNG file `path`; returns its size in pixels (width, height).

    `path` is written as given (the caller stages it in a temporary file and renames it)."""
    full, view = view, view.with_constants_inlined()
    check_size(view)
    plan = layout(view)
    width, height = plan.width, plan.height + HEADER
    if max(width, height) > MAX_INCHES:
        raise TooLargeToDraw(
            f"the picture of this plan would be {width:.0f}×{height:.0f} inches; --png draws at most "
            f"{MAX_INCHES:.0f} inches a side",
            hint="write --dot OUT.dot and lay it out with Graphviz (dot -Tsvg), or read --json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(width, 5.5), height), dpi=DPI)
    try:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, max(width, 5.5))
        ax.set_ylim(plan.height, -HEADER)  # y grows downward, as in the layout
        ax.axis("off")
        _header(ax, full, title)
        _frames(ax, plan)
        _edges(ax, plan)
        _boxes(ax, plan)
        fig.savefig(path, dpi=DPI, format="png", facecolor="white")
        pixels = fig.canvas.get_width_height()
    finally:
        plt.close(fig)
    return pixels


def _header(ax: Any, view: PlanView, title: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    saves = sum(1 for o in view.outputs if o.kind == "save")
    results = len(view.outputs) - saves
    summary = f"{len(view.nodes)} nodes, {saves} output{'s' if saves != 1 else ''}"
    summary += f", {results} result{'s' if results != 1 else ''}" if results else ""
    ax.text(0.12, -HEADER + 0.1, f"{title}  ({summary})" if title else summary, va="top", ha="left",
            fontsize=10, fontweight="bold", family=FONT)
    x = 0.12
    for kind, text in LEGEND:
        ax.add_patch(FancyBboxPatch((x, -HEADER + 0.42), 0.22, 0.14, boxstyle="round,pad=0,rounding_size=0.03",
                                    fc=FILL[kind], ec=EDGE[kind], lw=1.5 if kind == "fused" else 0.8))
        ax.text(x + 0.28, -HEADER + 0.49, text, va="center", ha="left", fontsize=7, family=FONT)
        x += 0.4 + len(text) * 0.06


def _frames(ax: Any, plan: Layout) -> None:
    from matplotlib.patches import FancyBboxPatch

    for frame in plan.frames:
        shared = frame.group == SHARED
        ax.add_patch(FancyBboxPatch((frame.x0, frame.y0), frame.x1 - frame.x0, frame.y1 - frame.y0,
                                    boxstyle="round,pad=0,rounding_size=0.08",
                                    fc="#f1f1f4" if shared else "#fcfcfc", ec="none" if shared else "#9a9a9a",
                                    lw=0.9, ls="-" if shared else (0, (4, 3)), zorder=0))
        # the title sits over the edges that enter the frame, on the frame's own colour
        ax.text(frame.x0 + 0.1, frame.y0 + 0.07, frame.title, va="top", ha="left", fontsize=8,
                fontweight="bold", color="#555555" if shared else "#2b5f2f", family=FONT, zorder=2.5,
                bbox=dict(boxstyle="square,pad=0.1", fc="#f1f1f4" if shared else "#fcfcfc", ec="none"))


def _edges(ax: Any, plan: Layout) -> None:
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MplPath

    count: dict[int, int] = {}
    for route in plan.routes:
        count[route.edge.target] = count.get(route.edge.target, 0) + 1
    # edges that leave the shared band take their source's colour, so a fan can be followed
    fanning = sorted({r.edge.source for r in plan.routes if plan.boxes[r.edge.source].node.shared
                      and not plan.boxes[r.edge.target].node.shared})
    hue = {source: FAN_COLORS[k % len(FAN_COLORS)] for k, source in enumerate(fanning)}
    for route in plan.routes:
        points = route.points
        vertices, codes = [points[0]], [MplPath.MOVETO]
        for k, ((x0, y0), (x1, y1)) in enumerate(zip(points, points[1:])):
            if k % 2 == 0:  # between rows: a smooth S-curve
                dy = (y1 - y0) / 2
                vertices += [(x0, y0 + dy), (x1, y1 - dy), (x1, y1)]
                codes += [MplPath.CURVE4] * 3
            else:           # straight down through a row it passes
                vertices.append((x1, y1))
                codes.append(MplPath.LINETO)
        source, target = plan.boxes[route.edge.source], plan.boxes[route.edge.target]
        color = hue[source.node.id] if source.node.shared and not target.node.shared else "#4d4d4d"
        ax.add_patch(FancyArrowPatch(path=MplPath(vertices, codes), arrowstyle="-|>,head_length=3.5,head_width=1.8",
                                     color=color, lw=0.9, zorder=2))
    inlined = {id(e) for e, _, _ in plan.ports} - {id(r.edge) for r in plan.routes}
    for edge, x, y in plan.ports:
        count[edge.target] = count.get(edge.target, 0) + (id(edge) in inlined)
    for edge, x, y in plan.ports:
        if count[edge.target] > 1 or id(edge) in inlined:  # the order matters with several operands
            ax.text(x, y - 0.04, edge.label, ha="center", va="bottom", fontsize=7, color="#1f4e9c",
                    family=FONT, zorder=5, bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))


def _boxes(ax: Any, plan: Layout) -> None:
    from matplotlib.patches import FancyBboxPatch

    for box in plan.boxes.values():
        node = box.node
        fused = node.kind == "fused"
        ax.add_patch(FancyBboxPatch((box.x - box.w / 2, box.top), box.w, box.h,
                                    boxstyle="round,pad=0,rounding_size=0.06", fc=FILL[node.kind],
                                    ec=EDGE[node.kind], lw=1.8 if fused else 0.9, zorder=3))
        lines = node.lines
        for k, line in enumerate(lines):
            y = box.top + PAD_Y + (k + 0.5) * LINE_H
            first, last = k == 0, k == len(lines) - 1
            ax.text(box.x, y, line, ha="center", va="center", fontsize=8, family=FONT, zorder=4,
                    fontweight="bold" if first else "normal", fontstyle="italic" if last and k else "normal",
                    color="#777777" if last and k else "#111111")
