"""Write the results: `results.json` (every number), `results.md` (tables), `scaling.png`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.suite import MEMORY_SLACK_MIB

# ---- targets (issue 5); reported, never asserted ---------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value, its goal and PASS/MISS (or n/a when not measured)."""
    out = []
    svd = next((r for r in results["peft"] if r["method"] == "svd"), None)
    layers = results["settings"]["peft_layers"]
    if svd and svd.get("dipm_s_per_module"):
        ratio = svd["peft_s_per_module"] / svd["dipm_s_per_module"]
        out.append(_target(f"rank-{results['settings']['rank']} svd merge, per module", ratio, "≥ 1000× PEFT",
                           ratio >= 1000, f"{_ratio(ratio)} PEFT"))
        ratio = svd["peft_process_s"] / svd["dipm_process_s"]
        out.append(_target(f"rank-{results['settings']['rank']} svd merge, whole process ({layers} layers)", ratio,
                           "≥ 15× PEFT", ratio >= 15, f"{_ratio(ratio)} PEFT"))
    transfer = next((r for r in results["recipes"] if r["recipe"] == "transfer"), None)
    if transfer:
        ratio = transfer["ratio_to_floor"]
        out.append(_target(f"transfer, {transfer['layers']} layers, exact output, whole process", ratio,
                           "≤ 1.5× the I/O floor", ratio <= 1.5, f"{ratio:.2f}× the floor"))
    if results["recipes"]:
        worst = max(results["recipes"], key=lambda r: r["memory_excess_mib"])
        excess = worst["memory_excess_mib"]
        out.append(_target("peak memory of factored recipes", excess,
                           f"≤ baseline + inputs + output + {MEMORY_SLACK_MIB:.0f} MiB", excess <= MEMORY_SLACK_MIB,
                           f"{abs(excess):.0f} MiB {'over' if excess > 0 else 'under'} baseline + inputs + output "
                           f"(worst: {worst['recipe']})"))
    return out


def _target(name: str, value: float, goal: str, ok: bool, shown: str) -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "result": "PASS" if ok else "MISS", "measured": shown}


# ---- formatting ------------------------------------------------------------------------------


def _seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.3g} s" if s < 100 else f"{s:.0f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x >= 100:
        return f"{x:,.0f}×".replace(",", " ")
    return f"{x:.3g}×"


def _mib(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}".replace(",", " ")


def _err(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ---- results.md ------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = ["# dipm_lang benchmarks", ""]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB RAM"
                 + (f", {m['gpu']}" if m.get("gpu") else "")
                 + f"; torch {m['torch']}, peft {m['peft']}, transformers {m['transformers']}, Python {m['python']}; "
                 f"device `{s['device']}`, {m['threads']} thread{'s' if m['threads'] != 1 else ''} per process"
                 f"{' (--threads)' if m.get('threads_set') else ''}; "
                 f"{m['date']}; load average {m['loadavg_start']:.2f} at the start, "
                 f"{m['loadavg_end']:.2f} at the end.")
    lines += ["", f"Command: `{m['command']}`", ""]
    for name, run in (results.get("section_runs") or {}).items():
        if run["date"] != m["date"]:
            lines += [f"Section `{name}` re-measured {run['date']} on {run['cpu']}, {run['threads']} thread"
                      f"{'s' if run['threads'] != 1 else ''} per process (load average {run['loadavg_start']:.2f} → "
                      f"{run['loadavg_end']:.2f}; peft {run['peft']}, transformers {run['transformers']}): "
                      f"`{run['command']}`.", ""]
    lines.append(f"Adapters: {s['shapes']} (hidden {s['hidden']}, FFN {s['ffn']}), all seven projections, "
                 f"r={s['rank']}, lora_alpha={2 * s['rank']}, no rsLoRA, {s['dtype']} files, built by "
                 "`benchmarks/adapters.py` (decaying spectra, correlated pairs). Whole-process times are wall "
                 "times of a fresh subprocess (warm page cache), best of "
                 f"{s['repeats']} for dipm and the floor (one when a run takes over a minute), one run for PEFT; "
                 "peak memory is that subprocess's maximum RSS. Per-module times are in-process compute (dipm: "
                 "one `dipm_lang.evaluate` call on in-memory factors, parsing and planning included, best of "
                 f"up to {s['inproc_repeats'] + 1} runs within 20 s; PEFT: its `add_weighted_adapter` call) divided "
                 "by the number of modules.")
    if s.get("quick"):
        lines += ["", "**`--quick`: tiny shapes, for the smoke test; not the targets' setting.**"]

    lines += ["", "## Targets", ""]
    lines += _table(["target", "measured", "goal", "result"],
                    [[t["target"], t["measured"], t["goal"], f"**{t['result']}**"] for t in results["targets"]])

    peft = results["peft"]
    if peft:
        lines += ["", f"## dipm vs PEFT `add_weighted_adapter` ({peft[0]['layers']} layers, {peft[0]['modules']} "
                  f"modules, weights {list(s['weights'])}, density {s['density']})", ""]
        rows = []
        for r in peft:
            rows.append([f"`{r['method']}`", _seconds(r.get("dipm_s_per_module")), _seconds(r["peft_s_per_module"]),
                         _ratio(_div(r["peft_s_per_module"], r.get("dipm_s_per_module"))),
                         _seconds(r.get("dipm_process_s")), _seconds(r["peft_process_s"]),
                         _ratio(_div(r["peft_process_s"], r.get("dipm_process_s"))),
                         _mib(r.get("dipm_peak_mib")), _mib(r["peft_peak_mib"]),
                         _err(r.get("dipm_error")), _err(r["peft_error"])])
        lines += _table(["method", "dipm s/module", "PEFT s/module", "speed-up", "dipm process", "PEFT process",
                         "speed-up", "dipm peak MiB", "PEFT peak MiB", "dipm error", "PEFT error"], rows)
        lines += ["", "Error: relative Frobenius error of the written adapter's update against the exact "
                  "weighted sum Σ wᵢ·ΔWᵢ over all modules, computed on the factors. `cat` is exact; `svd` drops "
                  "the tail of the spectrum; `linear` (PEFT's √-weights on A and B separately, cross terms), "
                  "`ties_svd` and `dare_linear` are not sums by design. dipm's expressions: "
                  + "; ".join(f"`{r['method']}`: `{r['dipm_expr']}`" if r.get("dipm_expr") else
                              f"`{r['method']}`: not in dipm_lang yet" for r in peft) + "."]

    recipes = results["recipes"]
    if recipes:
        base = results["io_floor_baseline"]
        lines += ["", f"## DiPM recipes vs the I/O floor ({recipes[0]['layers']} layers)", ""]
        rows = [[f"`{r['recipe']}`", str(r["inputs"]), _mib(r["inputs_mib"]), _mib(r["output_mib"]),
                 _seconds(r["dipm_process_s"]), _seconds(r["floor_process_s"]), f"{r['ratio_to_floor']:.2f}×",
                 _mib(r["dipm_peak_mib"]), _mib(r["floor_peak_mib"]), _mib(r["dipm_dry_run_peak_mib"]),
                 f"{r['memory_excess_mib']:+.0f}"] for r in recipes]
        lines += _table(["recipe", "inputs", "inputs MiB", "output MiB", "dipm process", "I/O floor", "ratio",
                         "dipm peak MiB", "floor peak MiB", "dry-run peak MiB", "excess MiB"], rows)
        lines += ["", "I/O floor: a subprocess that reads the inputs with `safetensors.torch.load_file` and writes "
                  "an output of the same tensor shapes with `save_file` (`benchmarks/io_floor.py`). Excess: dipm's "
                  "peak minus its dry run's peak (same imports and header checks, no tensors) minus inputs minus "
                  f"output. For reference, `python -c \"import torch\"` takes {_seconds(base['import_torch_s'])} "
                  f"({_mib(base['import_torch_peak_mib'])} MiB) and `dipm --help` {_seconds(base['dipm_help_s'])} "
                  f"({_mib(base['dipm_help_peak_mib'])} MiB)."]

    scaling = results["scaling"]
    if scaling:
        lines += ["", "## Scaling (dipm only)", "", "![scaling](scaling.png)", ""]
        if scaling.get("layers"):
            lines += _table(["layers", "transfer, dipm process", "I/O floor", "dipm peak MiB"],
                            [[str(r["layers"]), _seconds(r["dipm_process_s"]), _seconds(r["floor_process_s"]),
                              _mib(r["dipm_peak_mib"])] for r in scaling["layers"]])
            lines.append("")
        if scaling.get("rank"):
            lines += _table(["rank", "transfer per module", "svd merge per module", "dense B·A once"],
                            [[str(r["rank"]), _seconds(r["transfer_ms_per_module"] / 1e3),
                              _seconds(r["svd_ms_per_module"] / 1e3),
                              _seconds(r["dense_product_ms_per_module"] / 1e3)
                              if "dense_product_ms_per_module" in r else "—"] for r in scaling["rank"]])
            lines.append("")
        if scaling.get("adapters"):
            lines += _table(["adapters", "multitask per module", "svd merge per module"],
                            [[str(r["adapters"]), _seconds(r["multitask_ms_per_module"] / 1e3),
                              _seconds(r["svd_ms_per_module"] / 1e3)] for r in scaling["adapters"]])
            lines.append("")
        lines.append(f"Rank and adapter counts: in-process compute on {s['peft_layers']} layers of in-memory "
                     "factors; layers: whole processes.")
    return "\n".join(lines).rstrip() + "\n"


# ---- scaling.png -----------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling = results["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    rows = scaling.get("layers", [])
    if rows:
        x = [r["layers"] for r in rows]
        ax.plot(x, [r["dipm_process_s"] for r in rows], "o-", label="dipm run transfer")
        ax.plot(x, [r["floor_process_s"] for r in rows], "s--", label="I/O floor")
        _ticks(ax, x)
    ax.set(xlabel="layers", ylabel="seconds (whole process)", title="Layers (7 modules each)")
    ax.legend()
    ax = axes[1]
    rows = scaling.get("rank", [])
    if rows:
        x = [r["rank"] for r in rows]
        ax.plot(x, [r["transfer_ms_per_module"] for r in rows], "o-", label="transfer")
        ax.plot(x, [r["svd_ms_per_module"] for r in rows], "s-", label="svd merge")
        dense = [(r["rank"], r["dense_product_ms_per_module"]) for r in rows if "dense_product_ms_per_module" in r]
        if dense:
            ax.plot(*zip(*dense), "k:", label="dense B·A once")
        _ticks(ax, x)
        ax.set_yscale("log")
    ax.set(xlabel="LoRA rank", ylabel="ms per module (compute)", title="Rank")
    ax.legend()
    ax = axes[2]
    rows = scaling.get("adapters", [])
    if rows:
        x = [r["adapters"] for r in rows]
        ax.plot(x, [r["multitask_ms_per_module"] for r in rows], "o-", label="multitask")
        ax.plot(x, [r["svd_ms_per_module"] for r in rows], "s-", label="svd merge")
        _ticks(ax, x)
        ax.set_yscale("log")
    ax.set(xlabel="adapters", ylabel="ms per module (compute)", title="Number of adapters")
    ax.legend()
    m, s = results["machine"], results["settings"]
    fig.suptitle(f"dipm_lang scaling — {s['shapes']}, {m['cpu']}, {m['cores']} cores, {s['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ticks(ax, values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "scaling.png")
