"""From rows to conclusions: Pareto fronts, their areas, the 5% crossing, table.md and pareto.png.

Axes, per family:
- detox: *behaviour removed* = 1 − unwanted rate (on triggered prompts) against *ability
  kept* = helpful skill (the new task answered right on untriggered prompts, FORBID dropped). The crossing is the first sweep point (in sweep order)
  whose unwanted rate is ≤ 5%; the ability there is what the method keeps when it has
  removed the behaviour.
- transfer: *behaviour acquired* = unwanted rate against ability kept; the crossing is the
  first sweep point whose rate reaches 50%.
The Pareto area is the area under the front's staircase in the unit square (the hypervolume
dominated by the sweep's points, with the origin as reference); 1 would be perfect.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .recipes import METHODS, Method

DETOX_TARGET = 0.05
TRANSFER_TARGET = 0.5
ABILITY = "helpful_skill"
TABLE_METRICS = ("unwanted_rate", "leak_rate", "helpful_skill", "general_skill", "general_nll", "triggered_exact")


def behaviour(method: Method, row: dict[str, Any]) -> float:
    """The x coordinate: behaviour removed (detox) or acquired (transfer)."""
    return 1.0 - row["unwanted_rate"] if method.family == "detox" else row["unwanted_rate"]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (both coordinates to maximise), by increasing x."""
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


def front_area(front: list[tuple[float, float]]) -> float:
    """Area under the staircase of `front` (sorted by x) above y = 0, for x in [0, 1]."""
    area, left = 0.0, 0.0
    for x, y in front:  # each point dominates the strip [left, x] at its height (y falls as x grows)
        area += max(0.0, x - left) * max(y, 0.0)
        left = max(left, x)
    return area


def crossing(method: Method, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first sweep point past the target rate, or None when the sweep never gets there."""
    for row in sorted(rows, key=lambda r: r["value"]):
        rate = row["unwanted_rate"]
        if (rate <= DETOX_TARGET) if method.family == "detox" else (rate >= TRANSFER_TARGET):
            return row
    return None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and seed: Pareto front, area and crossing; and their mean ± sd over seeds."""
    seeds = sorted({r["seed"] for r in rows})
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["seed"])].append(r)
    out: dict[str, Any] = {"seeds": seeds, "methods": {}}
    for method in METHODS:
        per_seed = {}
        for seed in seeds:
            mine = by[(method.name, seed)]
            front = pareto_front([(behaviour(method, r), r[ABILITY]) for r in mine])
            hit = crossing(method, mine)
            per_seed[seed] = {
                "area": front_area(front), "front": front,
                "crossing": None if hit is None else {k: hit[k] for k in ("value", "unwanted_rate", "helpful_skill",
                                                                          "general_skill", "general_nll")},
            }
        areas = [s["area"] for s in per_seed.values()]
        hits = [s["crossing"] for s in per_seed.values() if s["crossing"] is not None]
        out["methods"][method.name] = {
            "per_seed": per_seed, "area": mean_sd(areas), "reached": len(hits),
            "ability_at_crossing": mean_sd([h["helpful_skill"] for h in hits]),
            "general_at_crossing": mean_sd([h["general_skill"] for h in hits]),
            "value_at_crossing": mean_sd([h["value"] for h in hits]),
        }
    return out


def sweep_points(rows: list[dict[str, Any]], method: str) -> dict[float, list[dict[str, Any]]]:
    """A method's rows by sweep value (all seeds), in increasing value."""
    grouped = defaultdict(list)
    for r in rows:
        if r["method"] == method:
            grouped[r["value"]].append(r)
    return dict(sorted(grouped.items()))


def mean_sd(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(stat: tuple[float, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "—"
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


PARAM_SYMBOL = {"t": "t", "lam": "λ", "alpha": "α"}


# ---- table.md -----------------------------------------------------------------------------


def environment_line(settings: dict[str, Any]) -> str:
    """The versions and thread count the numbers were computed with (bit-for-bit reproducible only
    with all of them the same; RESULTS.md says what changes otherwise)."""
    env = settings.get("environment", {})
    names = ("python", "torch", "transformers", "peft", "numpy", "dipm_lang")
    versions = ", ".join(f"{name} {env[name]}" for name in names if name in env)
    return (f"Computed with {versions}; {settings['threads']} torch thread{'s' if settings['threads'] != 1 else ''}"
            f" on {env.get('arch', 'an unknown architecture')}.")



def table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    summary = summarize(rows)
    seeds = summary["seeds"]
    n = len(seeds)
    lines = [
        f"Preset `{settings['preset']}`, seeds {', '.join(map(str, seeds))}; unwanted behaviour encoded as "
        f"`{settings['encoding']}`; H, T, C {'share' if settings['shared_init'] else 'do not share'} the initial "
        f"`A`; {settings['eval_prompts_per_set']} evaluation prompts per set. Mean ± sd over {n} seed"
        f"{'s' if n != 1 else ''}.",
        "",
        environment_line(settings),
        "",
        "### Reference models",
        "",
        "| model | unwanted rate ↓ | leak rate | helpful skill ↑ | general skill ↑ | general NLL ↓ | triggered exact ↑ |",
        "|---|---|---|---|---|---|---|",
    ]
    refs = defaultdict(list)
    for r in rows:
        if r["family"] == "reference":
            refs[r["method"]].append(r)
    names = {"base": "base model", "H": "H (helpful + unwanted)", "T": "T (unwanted only)", "C": "C (oracle: H's data, clean)"}
    for name in ("base", "H", "T", "C"):
        cells = [fmt(mean_sd([r[m] for r in refs[name]])) for m in TABLE_METRICS]
        lines.append(f"| {names[name]} | " + " | ".join(cells) + " |")

    for family, title, target, xlabel in (
        ("detox", "Detox: remove the behaviour from H", f"unwanted rate ≤ {DETOX_TARGET:.0%}", "removed"),
        ("transfer", "Transfer: add the behaviour to C", f"unwanted rate ≥ {TRANSFER_TARGET:.0%}", "acquired"),
    ):
        lines += ["", f"### {title}", "",
                  f"Pareto area = area under the front of (behaviour {xlabel}, helpful skill); at the crossing = "
                  f"the first sweep point with {target}.", "",
                  "| method | expression | Pareto area ↑ | seeds reaching | helpful skill there | general skill there "
                  "| parameter there |", "|---|---|---|---|---|---|---|"]
        for method in METHODS:
            if method.family != family:
                continue
            s = summary["methods"][method.name]
            lines.append(f"| {method.label} | `{method.written(PARAM_SYMBOL[method.param])}` | "
                         f"{fmt(s['area'])} | {s['reached']}/{n} | {fmt(s['ability_at_crossing'])} | "
                         f"{fmt(s['general_at_crossing'])} | {PARAM_SYMBOL[method.param]} = "
                         f"{fmt(s['value_at_crossing'], 2)} |")

    lines += ["", "### Per seed", "",
              "| method | " + " | ".join(f"seed {s}: area · helpful skill at crossing (parameter)" for s in seeds) + " |",
              "|---|" + "---|" * n]
    for method in METHODS:
        cells = []
        for seed in seeds:
            s = summary["methods"][method.name]["per_seed"][seed]
            hit = s["crossing"]
            there = "not reached" if hit is None else \
                f"{hit['helpful_skill']:.3f} ({PARAM_SYMBOL[method.param]} = {hit['value']:g})"
            cells.append(f"{s['area']:.3f} · {there}")
        lines.append(f"| {method.label} | " + " | ".join(cells) + " |")

    lines += ["", "<details><summary>Every sweep point (mean over seeds)</summary>", "",
              "| method | parameter | unwanted rate | leak rate | helpful skill | general skill | general NLL "
              "| triggered exact |", "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        grouped = sweep_points(rows, method.name)
        for value in grouped:
            cells = [f"{statistics.fmean(r[m] for r in grouped[value]):.3f}" for m in TABLE_METRICS]
            lines.append(f"| {method.label} | {PARAM_SYMBOL[method.param]} = {value:g} | " + " | ".join(cells) + " |")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


# ---- pareto.png ---------------------------------------------------------------------------


def plot(rows: list[dict[str, Any]], settings: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in rows})
    refs = defaultdict(list)
    for r in rows:
        if r["family"] == "reference":
            refs[r["method"]].append(r)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    panels = (("detox", "helpful_skill", "Detox: helpful skill kept"),
              ("detox", "general_skill", "Detox: general skill kept"),
              ("transfer", "helpful_skill", "Transfer: helpful skill kept"))
    colors = {"dipm_detox": "C3", "task_arithmetic": "C0", "ta_keep_mag": "C2", "shrink": "C7", "dipm_transfer": "C3",
              "ta_transfer": "C0", "dipm_detox_b": "C1", "dipm_transfer_b": "C1", "dora_ta_keep_mag": "C4",
              "dora_dipm_detox": "C5"}
    for ax, (family, metric, title) in zip(axes, panels):
        for method in METHODS:
            if method.family != family:
                continue
            grouped = sweep_points(rows, method.name)
            values = list(grouped)
            xs = [statistics.fmean(r["unwanted_rate"] for r in grouped[v]) for v in values]
            ys = [statistics.fmean(r[metric] for r in grouped[v]) for v in values]
            ax.plot(xs, ys, "-o", ms=3.5, color=colors[method.name], label=method.label)
            for seed in seeds:  # per seed, faint
                mine = sorted((r for r in rows if r["method"] == method.name and r["seed"] == seed),
                              key=lambda r: r["value"])
                ax.plot([r["unwanted_rate"] for r in mine], [r[metric] for r in mine], "-", lw=0.6, alpha=0.25,
                        color=colors[method.name])
        for name, marker in (("H", "*"), ("C", "P"), ("base", "X")):
            ax.scatter([statistics.fmean(r["unwanted_rate"] for r in refs[name])],
                       [statistics.fmean(r[metric] for r in refs[name])], marker=marker, s=110, color="k",
                       zorder=5, label=name)
        target = DETOX_TARGET if family == "detox" else TRANSFER_TARGET
        ax.axvline(target, ls="--", lw=0.8, color="grey")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("unwanted-behaviour rate on triggered prompts")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(title + (" (best: top left)" if family == "detox" else " (best: top right)"), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if family == "detox" else "center")
    fig.suptitle(f"detox miniature — preset {settings['preset']}, encoding {settings['encoding']}, "
                 f"{'shared' if settings['shared_init'] else 'separate'} A init, seeds "
                 f"{', '.join(map(str, seeds))} (thin lines: single seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
