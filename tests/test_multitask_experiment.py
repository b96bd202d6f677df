"""The multitask miniature (examples/experiments/multitask_miniature) end to end.

The smoke preset runs twice in the session's background job (conftest.py: `smoke_runs`, after the
detox miniature's, sharing its base model) and must give the same rows.json byte for byte. The merges'
values are recomputed here in float64 from the saved PEFT adapters' own weights (SPEC §3 / §7.9), and
the model selection is checked to use the validation prompts only. No test asserts which method
wins. The full preset (3 seeds) is a slow test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a package at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from examples.experiments.multitask_miniature.__main__ import PLOT, main  # noqa: E402
from examples.experiments.multitask_miniature.recipes import METHODS  # noqa: E402
from examples.experiments.multitask_miniature.report import select, summarize  # noqa: E402
from examples.experiments.multitask_miniature.skills import ADAPTERS, SKILL_NAMES, SKILLS  # noqa: E402

from background import SmokeRun  # noqa: E402

OUTPUTS = ("rows.json", "table.md", PLOT, "summary.json", "timings.json")
REFERENCES = ("base", *ADAPTERS)
VERSIONS = ("python", "torch", "transformers", "peft", "numpy", "dipm_lang", "threads")


@pytest.fixture(scope="module")
def smoke(multitask_smoke_run: SmokeRun) -> tuple[Path, dict]:
    """The first smoke run's --out and its rows.json (both runs finished)."""
    multitask_smoke_run.wait()
    first = multitask_smoke_run.first
    return first, json.loads((first / "rows.json").read_text())


def row(data: dict, method: str, value: float | None = None, seed: int = 0) -> dict:
    return next(r for r in data["rows"] if r["method"] == method and r["value"] == value and r["seed"] == seed)


# ---- independent float64 references from the saved PEFT folders ---------------------------------

def peft_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """module -> (alpha / r)·B·A in float64, read with safetensors and the adapter's own config."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    assert not config.get("rank_pattern") and not config.get("alpha_pattern") and not config.get("use_rslora")
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    deltas = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            deltas[module] = scale * b.double() @ a.double()
    return deltas


def saved_adapters(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: peft_deltas(out / "adapters" / "seed0" / name) for name in SKILLS}


def dipm_value(method: str, out: Path, lam: float):
    """The method's expression compiled as the experiment compiles it, on the saved adapters."""
    import dipm_lang

    expression = next(m for m in METHODS if m.name == method).expression
    program = dipm_lang.compile(expression, inputs={name: str(out / "adapters" / "seed0" / name) for name in SKILLS})
    return program(lam=lam)


def assert_close(value, reference: dict[str, torch.Tensor]) -> None:
    assert set(value) == set(reference)
    for module, expected in reference.items():
        got = value.delta(module).double()
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())), module


# ---- tests --------------------------------------------------------------------------------------

def test_all_outputs_and_every_method_present(smoke):
    out, data = smoke
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lams = data["settings"]["lam"]
    for method in METHODS:
        assert sorted(r["value"] for r in data["rows"] if r["method"] == method.name) == sorted(lams), method.name
    for name in REFERENCES:
        assert row(data, name)["family"] == "reference"
    for r in data["rows"]:
        for split in ("val", "test"):
            assert set(r["metrics"][split]) >= {*SKILL_NAMES, "general", "general_nll", "skill_mean", "normalized"}
    assert set(data["settings"]["versions"]) >= set(VERSIONS)
    text = (out / "table.md").read_text()
    assert all(f"| {m.label} |" in text for m in METHODS)
    assert f"dipm_lang {data['settings']['versions']['dipm_lang']}" in text  # the header says what produced it


def test_each_adapter_learned_its_skill(smoke):
    _, data = smoke
    base = row(data, "base")["metrics"]["test"]
    for name, skill in zip(SKILLS, SKILL_NAMES):
        mine = row(data, name)["metrics"]["test"]
        assert mine[skill] >= 0.5 and mine[skill] >= base[skill] + 0.4, (name, skill, mine[skill], base[skill])


def test_zero_scale_rows_are_the_base_model(smoke):
    _, data = smoke
    base = row(data, "base")["metrics"]
    for method in METHODS:
        zero = row(data, method.name, 0.0)["metrics"]
        for split in ("val", "test"):
            for metric, value in base[split].items():
                assert zero[split][metric] == pytest.approx(value, abs=1e-5), (method.name, split, metric)


def test_normalized_accuracy_is_relative_to_each_skills_own_adapter(smoke):
    _, data = smoke
    for r in data["rows"]:
        for split in ("val", "test"):
            ratios = []
            for name, skill in zip(SKILLS, SKILL_NAMES):
                own = row(data, name)["metrics"][split][skill]
                ratios.append(r["metrics"][split][skill] / own if own else 0.0)
            assert r["metrics"][split]["normalized"] == pytest.approx(sum(ratios) / 3, abs=2e-6), r["expr"]


def test_task_arithmetic_is_lambda_times_the_sum(smoke):
    out, _ = smoke
    deltas = saved_adapters(out)
    for lam in (0.5, 1.0):  # 1.0: the identity row, S1 + S2 + S3 exactly
        reference = {m: lam * sum(deltas[name][m] for name in SKILLS) for m in deltas["S1"]}
        assert_close(dipm_value("task_arithmetic", out, lam), reference)


def test_multitask_mixes_directions_and_keeps_the_mean_magnitudes(smoke):
    """SPEC §3: recombine(mix(dir(xᵢ)), mean(mag(xᵢ))) with by="out" — rows of the updates."""
    out, _ = smoke
    deltas = saved_adapters(out)
    lam = 0.5
    reference = {}
    for m in deltas["S1"]:
        rows = [deltas[name][m] for name in SKILLS]
        norms = [r.norm(dim=1, keepdim=True) for r in rows]
        mixed = sum(r / n.clamp_min(1e-300) * (n > 1e-12) for r, n in zip(rows, norms))
        direction = mixed / mixed.norm(dim=1, keepdim=True)
        reference[m] = lam * direction * (sum(norms) / 3)
    value = dipm_value("dipm_multitask", out, lam)
    assert_close(value, reference)
    for m in deltas["S1"]:  # what it keeps: λ × the mean row norms
        kept = value.delta(m).double().norm(dim=1)
        assert torch.allclose(kept, lam * sum(deltas[n][m].norm(dim=1) for n in SKILLS) / 3, rtol=1e-5), m


def test_iso_is_the_flattened_spectrum_of_the_sum(smoke):
    """SPEC §7.9: Σ xᵢ = U Σ Vᵀ → σ̄·U Vᵀ (σ̄ the mean of the compact SVD's singular values)."""
    out, _ = smoke
    deltas = saved_adapters(out)
    reference = {}
    for m in deltas["S1"]:
        total = sum(deltas[name][m] for name in SKILLS)
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        k = int((s > s[0] * 1e-10).sum())  # the compact SVD: rank of the sum (≤ 24)
        reference[m] = 2.0 * s[:k].mean() * u[:, :k] @ vh[:k]
    assert_close(dipm_value("iso", out, 2.0), reference)


def test_selection_uses_validation_only():
    def r(value, val, test, val_general=0.5):
        return {"value": value, "metrics": {"val": {"skill_mean": val, "general": val_general},
                                            "test": {"skill_mean": test, "general": 0.5}}}

    rows = [r(0.0, 0.1, 0.9), r(0.5, 0.6, 0.2), r(1.0, 0.4, 0.8)]
    assert select(rows)["value"] == 0.5          # the test set would have picked 0.0
    assert select(rows, "test")["value"] == 0.0  # (the function itself can read either split)
    tie = [r(1.0, 0.6, 0.1, 0.9), r(0.5, 0.6, 0.2, 0.9), r(2.0, 0.6, 0.3, 0.8)]
    assert select(tie)["value"] == 0.5           # ties: better validation general, then the smaller λ


def test_summary_reports_test_numbers_at_the_validation_choice(smoke):
    out, data = smoke
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarize(data["rows"])))  # summary.json is the rows' summary
    for method in METHODS:
        mine = [r for r in data["rows"] if r["method"] == method.name]
        best_val = max(r["metrics"]["val"]["skill_mean"] for r in mine)
        chosen = summary["methods"][method.name]["per_seed"]["0"]
        at = row(data, method.name, chosen["value"])
        assert at["metrics"]["val"]["skill_mean"] == best_val
        assert chosen["test"] == at["metrics"]["test"]


def test_rerun_is_byte_identical(smoke, multitask_smoke_run):
    out, _ = smoke
    second = multitask_smoke_run.second  # run with the first run's --cache
    assert json.loads((second / "timings.json").read_text())["seeds"]["0"]["base_model_cached"]
    assert (second / "rows.json").read_bytes() == (out / "rows.json").read_bytes()


@pytest.mark.slow
def test_full_preset(tmp_path):
    out = tmp_path / "full"
    assert main(["--preset", "full", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "rows.json").read_text())
    assert data["settings"]["seeds"] == [0, 1, 2]
    for seed in (0, 1, 2):
        base = row(data, "base", seed=seed)["metrics"]["test"]
        for name, skill in zip(SKILLS, SKILL_NAMES):
            mine = row(data, name, seed=seed)["metrics"]["test"]
            assert mine[skill] >= 0.7 and mine[skill] >= base[skill] + 0.5, (seed, name, mine[skill])
        assert base["general"] >= 0.9, seed
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
