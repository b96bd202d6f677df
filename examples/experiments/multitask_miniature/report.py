"""From rows to conclusions: model selection on validation, test-set summary, table.md, multitask.png.

Selection (`select`): per method and seed, the λ whose *validation* mean new-skill accuracy is
highest (ties: the higher validation general accuracy, then the smaller λ); the test numbers are
then read at that λ. The test set never takes part in the choice.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from examples.experiments.detox_miniature.report import fmt, mean_sd, sweep_points

from .recipes import METHODS
from .skills import ADAPTERS, ORACLE, SKILL_NAMES, SKILLS

TEST_METRICS = (*SKILL_NAMES, "skill_mean", "normalized", "general", "general_nll")
HEADERS = (*SKILL_NAMES, "mean new skill ↑", "normalized ↑", "general ↑", "general NLL ↓")
REFERENCE_LABELS = {"base": "base model",
                    **{name: f"{name} ({skill} only)" for name, skill in zip(SKILLS, SKILL_NAMES)},
                    ORACLE: "O (oracle: the three skills trained jointly)"}


def select(rows: list[dict[str, Any]], split: str = "val") -> dict[str, Any]:
    """The sweep row (one method, one seed) with the best `split` skill_mean; ties: best `split`
    general, then the smaller λ."""
    return max(rows, key=lambda r: (r["metrics"][split]["skill_mean"], r["metrics"][split]["general"], -r["value"]))


def _by(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["method"], r["seed"])].append(r)
    return grouped


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """References' and selected merges' test metrics per seed and as mean ± sd over seeds."""
    seeds = sorted({r["seed"] for r in rows})
    grouped = _by(rows)
    out: dict[str, Any] = {"seeds": seeds, "references": {}, "methods": {}}
    for name in ("base", *ADAPTERS):
        tests = [grouped[(name, seed)][0]["metrics"]["test"] for seed in seeds]
        out["references"][name] = {m: mean_sd([t[m] for t in tests]) for m in TEST_METRICS}
    for method in METHODS:
        per_seed = {}
        for seed in seeds:
            chosen = select(grouped[(method.name, seed)])
            per_seed[str(seed)] = {"value": chosen["value"], "val_skill_mean": chosen["metrics"]["val"]["skill_mean"],
                                   "test": chosen["metrics"]["test"]}
        out["methods"][method.name] = {
            "per_seed": per_seed, "value": mean_sd([s["value"] for s in per_seed.values()]),
            "test": {m: mean_sd([s["test"][m] for s in per_seed.values()]) for m in TEST_METRICS},
        }
    return out


def _versions(settings: dict[str, Any]) -> str:
    v = settings["versions"]
    return (f"python {v['python']} · torch {v['torch']} · transformers {v['transformers']} · peft {v['peft']} · "
            f"numpy {v['numpy']} · dipm_lang {v['dipm_lang']} · {v['threads']} torch thread"
            f"{'s' if v['threads'] != 1 else ''}" + (f" · {v['arch']}" if v.get("arch") else ""))


def table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    summary = summarize(rows)
    seeds = summary["seeds"]
    n = len(seeds)
    head = "| " + " | ".join(HEADERS) + " |"
    lines = [
        "# Multitask miniature — results",
        "",
        f"Preset `{settings['preset']}`, seeds {', '.join(map(str, seeds))}; S1, S2, S3, O "
        f"{'share' if settings['shared_init'] else 'do not share'} the initial `A`; "
        f"{settings['eval_prompts_per_set']} prompts per skill and split; λ chosen per method and seed on the "
        f"validation prompts, test numbers reported. Mean ± sd over {n} seed{'s' if n != 1 else ''}.",
        "",
        f"Versions: {_versions(settings)}.",
        "",
        "#### Reference models (test prompts)",
        "",
        "| model " + head, "|---" * (len(HEADERS) + 1) + "|",
    ]
    for name in ("base", *ADAPTERS):
        ref = summary["references"][name]
        lines.append(f"| {REFERENCE_LABELS[name]} | " + " | ".join(fmt(ref[m]) for m in TEST_METRICS) + " |")

    lines += ["", "#### Merges of S1, S2, S3 at the λ chosen on validation (test prompts)", "",
              "| method | expression | λ chosen " + head, "|---" * (len(HEADERS) + 3) + "|"]
    for method in METHODS:
        s = summary["methods"][method.name]
        lines.append(f"| {method.label} | `{method.written('λ')}` | {fmt(s['value'], 2)} | "
                     + " | ".join(fmt(s["test"][m]) for m in TEST_METRICS) + " |")

    lines += ["", "#### Per seed", "",
              "| method | " + " | ".join(f"seed {s}: λ · mean new skill · general" for s in seeds) + " |",
              "|---|" + "---|" * n]
    for method in METHODS:
        cells = []
        for seed in seeds:
            s = summary["methods"][method.name]["per_seed"][str(seed)]
            cells.append(f"λ = {s['value']:g} · {s['test']['skill_mean']:.3f} · {s['test']['general']:.3f}")
        lines.append(f"| {method.label} | " + " | ".join(cells) + " |")

    lines += ["", "<details><summary>Every sweep point (mean over seeds; test prompts, except the validation "
                  "column)</summary>", "",
              "| method | λ | validation mean new skill " + head, "|---" * (len(HEADERS) + 3) + "|"]
    for method in METHODS:
        for value, mine in sweep_points(rows, method.name).items():
            val = statistics.fmean(r["metrics"]["val"]["skill_mean"] for r in mine)
            cells = [f"{statistics.fmean(r['metrics']['test'][m] for r in mine):.3f}" for m in TEST_METRICS]
            lines.append(f"| {method.label} | {value:g} | {val:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], settings: dict[str, Any], path: Path) -> None:
    """Left: mean new-skill accuracy against λ; right: general accuracy against it (test prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    seeds = summary["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.4))
    colors = {m.name: f"C{i}" for i, m in enumerate(METHODS)}
    for method in METHODS:
        grouped = sweep_points(rows, method.name)
        values = list(grouped)
        skill = [statistics.fmean(r["metrics"]["test"]["skill_mean"] for r in grouped[v]) for v in values]
        general = [statistics.fmean(r["metrics"]["test"]["general"] for r in grouped[v]) for v in values]
        axes[0].plot(values, skill, "-o", ms=3.5, color=colors[method.name], label=method.label)
        axes[1].plot(skill, general, "-o", ms=3.5, color=colors[method.name], label=method.label)
        chosen = summary["methods"][method.name]["test"]  # at the λ chosen on validation, mean over seeds
        axes[1].scatter([chosen["skill_mean"][0]], [chosen["general"][0]], marker="D", s=60,
                        color=colors[method.name], edgecolor="k", zorder=6)
    refs = summary["references"]
    for name, marker in (("base", "X"), *((name, "*") for name in SKILLS), (ORACLE, "P")):
        axes[1].scatter([refs[name]["skill_mean"][0]], [refs[name]["general"][0]], marker=marker, s=110, color="k",
                        zorder=5)
        axes[1].annotate(name, (refs[name]["skill_mean"][0], refs[name]["general"][0]), textcoords="offset points",
                         xytext=(6, -10), fontsize=8)
    axes[0].axhline(refs[ORACLE]["skill_mean"][0], ls="--", lw=0.8, color="k", label="oracle O")
    axes[0].axhline(statistics.fmean(refs[name]["skill_mean"][0] for name in SKILLS), ls=":", lw=0.8, color="k",
                    label="a single adapter (mean)")
    axes[0].set_xlabel("λ (scale of the merged update)")
    axes[0].set_ylabel("mean new-skill accuracy (inc, swap, rotate)")
    axes[0].set_title("New skills against λ", fontsize=10)
    axes[1].set_xlabel("mean new-skill accuracy")
    axes[1].set_ylabel("general accuracy (copy, reverse, sort)")
    axes[1].set_title("Retention against new skills (best: top right; ◆ = λ chosen on validation)", fontsize=10)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[1].set_xlim(-0.03, 1.03)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"multitask miniature — preset {settings['preset']}, "
                 f"{'shared' if settings['shared_init'] else 'separate'} A init, seeds {', '.join(map(str, seeds))}, "
                 "test prompts, mean over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
