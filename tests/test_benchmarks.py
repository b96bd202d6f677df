"""Smoke test of `python -m benchmarks.run --quick`: it runs, writes its three files, and the
tables hold every expected row with positive numbers. No timing is asserted.

The quick run is a slow test (CI runs it with `-m slow`): it measures whole processes by design,
about 25 of them (dipm, PEFT's merge, the I/O floor), each paying Python's and torch's start-up and
five of them transformers' and PEFT's: ~70 s of CPU. The default run renders the report from the
committed full run's results.json instead (`--render-only`: no process started).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a package at the repository root, not installed
    sys.path.insert(0, str(REPO))
METHODS = ("svd", "cat", "linear", "ties_svd", "dare_linear")
RECIPES = ("transfer", "detox", "multitask")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_writes_the_three_files(quick_results: Path) -> None:
    assert_three_files(quick_results)
    assert not (quick_results / "tmp").exists()  # the scratch folder is removed


def assert_three_files(out: Path) -> None:
    for name in ("results.md", "results.json", "scaling.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rows(markdown: str) -> dict[str, list[str]]:
    """First cell (backticks removed) → the other cells, for every table row."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


@pytest.mark.slow
def test_tables_have_every_row_with_numbers(quick_results: Path) -> None:
    assert_every_row_with_numbers((quick_results / "results.md").read_text(),
                                  json.loads((quick_results / "results.json").read_text()))


def assert_every_row_with_numbers(text: str, results: dict) -> None:
    rows = _rows(text)
    for name in METHODS + RECIPES:
        assert name in rows, name
        numbers = [float(m) for cell in rows[name] for m in re.findall(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", cell)]
        assert numbers and any(n > 0 for n in numbers), (name, rows[name])
    assert "Machine:" in text and "torch" in text and "cores" in text
    targets = [r for r in rows if r.startswith(("rank-", "transfer,", "peak memory"))]
    assert len(targets) == 4, targets
    # each verdict in the table is the one results.json holds, and agrees with its number
    verdicts = {t["target"]: t["result"] for t in results["targets"]}
    assert {t: rows[t][-1].strip("*") for t in targets} == verdicts
    assert_verdicts_agree_with_numbers(results["targets"])


def assert_verdicts_agree_with_numbers(targets: list[dict]) -> None:
    assert len(targets) == 4
    for target in targets:
        # PASS exactly when the measured value meets the goal ("≥ 1000× PEFT", "≤ 1.5× the I/O floor",
        # "≤ baseline + … + 64 MiB": the bound is the goal's number)
        bound = float(re.search(r"\d+(?:\.\d+)?", target["goal"]).group())
        met = target["value"] >= bound if target["goal"].startswith("≥") else target["value"] <= bound
        assert target["goal"][0] in "≥≤", target
        assert target["result"] == ("PASS" if met else "MISS"), target


@pytest.mark.slow
def test_json_numbers_are_positive(quick_results: Path) -> None:
    results = json.loads((quick_results / "results.json").read_text())
    assert [r["method"] for r in results["peft"]] == list(METHODS)
    for row in results["peft"]:
        for key in ("dipm_s_per_module", "peft_s_per_module", "dipm_process_s", "peft_process_s",
                    "dipm_peak_mib", "peft_peak_mib"):
            assert row[key] > 0, (row["method"], key)
        if row["method"].startswith("dare"):
            # random masks: dipm's are seeded per module, PEFT's come from torch's global RNG, so the
            # errors differ; but both drop entries with probability 1 - density and rescale the rest
            # by 1/density, so the errors have the same size (full-size run: 2.547 and 2.535)
            assert row["dipm_error"] == pytest.approx(row["peft_error"], rel=0.2), row
        else:  # the same merge computed two ways: the same distance from the exact weighted sum
            assert row["dipm_error"] == pytest.approx(row["peft_error"], rel=1e-3, abs=1e-5), row
    cat = next(r for r in results["peft"] if r["method"] == "cat")
    assert cat["dipm_error"] < 1e-5 and cat["peft_error"] < 1e-5  # cat is exact in both
    assert [r["recipe"] for r in results["recipes"]] == list(RECIPES)
    for row in results["recipes"]:
        for key in ("dipm_process_s", "floor_process_s", "dipm_peak_mib", "floor_peak_mib", "inputs_mib",
                    "output_mib", "ratio_to_floor"):
            assert row[key] > 0, (row["recipe"], key)
    scaling = results["scaling"]
    assert scaling["layers"] and scaling["rank"] and scaling["adapters"]
    for rows in scaling.values():
        for row in rows:
            assert all(v > 0 for k, v in row.items() if isinstance(v, (int, float))), row
    assert_verdicts_agree_with_numbers(results["targets"])


def test_render_only_reports_the_committed_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--render-only` on the full run's results.json: the same tables and plot, without measuring."""
    pytest.importorskip("matplotlib")
    from benchmarks.run import main

    shutil.copy(REPO / "benchmarks" / "results" / "results.json", tmp_path / "results.json")
    assert main(["--render-only", "--out", str(tmp_path)]) == 0
    assert_three_files(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    assert_every_row_with_numbers(text, json.loads((tmp_path / "results.json").read_text()))


@pytest.mark.slow
def test_sweep_benchmark_quick(tmp_path: Path) -> None:
    """`python -m benchmarks.sweep --quick`: every measurement positive, and each verdict agrees with
    its number and goal (the 11 points written are checked by the benchmark itself)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sweep", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "sweep.json").read_text())
    for key in ("sweep_s", "floor_s", "separate_runs_s", "sweep_peak_mib", "single_run_peak_mib", "outputs_mib"):
        assert results[key] > 0, key
    assert results["points"] == 11
    assert results["ratio_to_floor"] == pytest.approx(results["sweep_s"] / results["floor_s"])
    assert results["peak_vs_single_run"] == pytest.approx(results["sweep_peak_mib"] / results["single_run_peak_mib"])
    rows = _rows((tmp_path / "sweep.md").read_text())
    floor_ok = results["ratio_to_floor"] <= 1.3
    memory_ok = results["peak_vs_single_run"] <= 1.5
    assert rows["11-point sweep vs the I/O floor"][-1] == ("PASS" if floor_ok else "MISS")
    assert rows["peak memory vs one dipm run"][-1] == ("PASS" if memory_ok else "MISS")
    assert not (tmp_path / "tmp-sweep").exists()


@pytest.mark.slow
def test_svd_baselines_quick(tmp_path: Path) -> None:
    """`python -m benchmarks.svd_baselines --quick`: every method and shape measured side by side,
    dipm's truncation within 1.01× the optimum of its merged matrix (the randomized path's promise),
    the methods without random masks merging PEFT's matrix, and each verdict agreeing with its number."""
    pytest.importorskip("peft")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.svd_baselines", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "svd_baselines.json").read_text())
    rows = results["rows"]
    assert sorted((r["method"], r["module"]) for r in rows) == sorted(
        (m, p) for m in ("ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
        for p in ("q_proj", "up_proj"))
    for row in rows:
        for key in ("dipm_s", "dipm_exact_s", "peft_s", "optimal_error", "dipm_error"):
            assert row[key] > 0, (row["method"], key)
        assert row["dipm_error"] <= 1.01 * row["optimal_error"], row
        assert row["dipm_exact_error"] == pytest.approx(row["optimal_error"], rel=1e-4), row
        assert row["error_ratio"] == pytest.approx(row["dipm_error"] / row["optimal_error"])
        if not row["method"].startswith("dare"):
            assert row["merge_rel_diff"] < 1e-5, row
    for target in results["targets"]:
        bound = float(re.search(r"\d+(?:\.\d+)?", target["goal"]).group())
        met = target["value"] >= bound if target["goal"].startswith("≥") else target["value"] <= bound
        assert target["result"] == ("PASS" if met else "MISS"), target
    text = (tmp_path / "svd_baselines.md").read_text()
    assert all(f"`{r['method']}`" in text for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svd_baselines.json", "svd_baselines.md"]


@pytest.mark.slow
def test_scale_quick(tmp_path: Path) -> None:
    """`python -m benchmarks.scale --quick`: the 70B (GQA), high-rank and many-adapter code paths run,
    every number is positive, the ratios are their quotients, and the scratch files are deleted."""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "scale.json").read_text())
    seventy = results["70b"]
    assert {k: (v["m"], v["n"]) for k, v in seventy["per_module"].items()}["k_proj"] == (32, 128)  # GQA rows
    assert len(seventy["per_module"]) == 7 and all(v["transfer_ms"] > 0 for v in seventy["per_module"].values())
    many = results["adapters"]
    for row in (seventy, results["rank"]["whole_process"], *many["methods"].values()):
        assert row["ratio_to_floor"] == pytest.approx(row["dipm_process_s"] / row["floor_process_s"])
        assert row["dipm_peak_mib"] > 0 and row["inputs_mib"] > 0 and row["output_mib"] > 0
    rank = results["rank"]
    assert all(rank[k] > 0 for k in ("dense_product_ms", "transfer_ms", "detox_ms", "multitask_ms", "svd_ms"))
    assert many["adapters"] == 4 and list(many["methods"]) == ["multitask", "knots", "tsv", "iso", "ties_svd"]
    for method, row in many["methods"].items():
        assert row["inputs"] == 4 and row["inputs_mib"] == pytest.approx(many["inputs_mib"]), method
        assert row["peak_above_largest_input_mib"] == pytest.approx(row["dipm_peak_mib"] - many["largest_input_mib"])
        assert row["s_per_input_mib"] == pytest.approx(row["dipm_process_s"] / row["inputs_mib"])
    # the outputs' ranks: knots and iso keep the concatenation's rank (4 × 16), tsv 4 × max(1, 16 // 4),
    # ties_svd its rank=16 — so the outputs' sizes are in that ratio
    sizes = {method: row["output_mib"] for method, row in many["methods"].items()}
    assert sizes["knots"] == pytest.approx(sizes["iso"]) and sizes["knots"] == pytest.approx(4 * sizes["ties_svd"], rel=0.05)
    assert sizes["tsv"] == pytest.approx(sizes["ties_svd"], rel=0.05)
    assert sorted(p.name for p in out.iterdir()) == ["scale.json", "scale.md"]  # tmp-scale removed
    text = (out / "scale.md").read_text()
    assert all(f"| `{method}` |" in text for method in many["methods"])

    # --merge: re-measure one section, keep the others (and say when they were measured)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--quick", "--sections", "adapters",
                           "--methods", "tsv", "--merge", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    merged = json.loads((out / "scale.json").read_text())
    assert merged["70b"] == seventy and merged["rank"] == rank and list(merged["adapters"]["methods"]) == ["tsv"]
    assert set(merged["earlier"]) == {"70b", "rank"} and "adapters" not in merged["earlier"]
    text = (out / "scale.md").read_text()
    assert text.count("Measured in an earlier run") == 2 and "## 70B shapes" in text and "| `tsv` |" in text


@pytest.mark.slow
def test_svd_merges_benchmark_small(tmp_path: Path) -> None:
    """`python -m benchmarks.svd_merges` on small shapes, dense path in float64: a row per method and
    shape, the factored result equal to the dense one (so the speed-up compares equal work), the
    dense path skipped above --dense-max-entries."""
    out = tmp_path / "svd_merges.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.svd_merges", "--shapes", "96x64,160x80", "--rank", "4",
                           "--repeat", "1", "--dense-dtype", "float64", "--dense-max-entries", str(96 * 64),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 96×64") or
            line.startswith("| 160×80")]
    assert len(rows) == 8
    for shape, method, rank, factored, f_mib, dense, d_mib, speedup, difference in (map(str.strip, r) for r in rows):
        assert float(factored.removesuffix(" ms")) > 0, method
        if shape == "96×64":
            assert float(dense.removesuffix(" s")) > 0 and float(speedup.removesuffix("×")) > 0, method
            assert float(difference) <= 1e-6, (method, difference)  # float32 output vs float64 dense
        else:
            assert dense == speedup == difference == "—", method
