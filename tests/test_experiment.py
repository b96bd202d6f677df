"""The detox miniature (examples/experiments/detox_miniature) end to end.

The smoke preset runs twice (cold, then with the cached base model) and must give the same
rows.json byte for byte. Those two runs start with the test session, in a process of their own
(conftest.py: `smoke_runs`), and these tests wait for them. The full preset (3 seeds,
minutes) is a slow test. No test asserts which method wins: the experiment is evidence, not a
foregone conclusion.
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

from examples.experiments.detox_miniature.__main__ import main  # noqa: E402
from examples.experiments.detox_miniature.metrics import METRICS  # noqa: E402
from examples.experiments.detox_miniature.report import front_area, pareto_front  # noqa: E402

from background import SmokeRun  # noqa: E402

OUTPUTS = ("rows.json", "table.md", "pareto.png", "timings.json")
DETOX_SWEEPS = ("dipm_detox", "task_arithmetic", "ta_keep_mag", "shrink", "dipm_detox_b", "dora_ta_keep_mag",
                "dora_dipm_detox")
WEIGHT_LEVEL = ("dora_ta_keep_mag", "dora_dipm_detox")
TRANSFER_SWEEPS = ("dipm_transfer", "ta_transfer", "dipm_transfer_b")


@pytest.fixture(scope="module")
def detox_smoke(detox_smoke_run: SmokeRun) -> tuple[Path, Path, dict]:
    """The cold smoke run's --out, its --cache and its rows.json (both runs finished)."""
    detox_smoke_run.wait()
    first = detox_smoke_run.first
    return first, detox_smoke_run.cache, json.loads((first / "rows.json").read_text())


def rows_of(data: dict, method: str) -> list[dict]:
    return sorted((r for r in data["rows"] if r["method"] == method), key=lambda r: r["value"] or 0)


def reference(data: dict, name: str, seed: int = 0) -> dict:
    return next(r for r in data["rows"] if r["method"] == name and r["seed"] == seed)


def same_metrics(row: dict, ref: dict) -> None:
    for metric in METRICS:
        if metric == "general_nll":
            assert row[metric] == pytest.approx(ref[metric], abs=1e-5), (row["expr"], metric)
        else:
            assert row[metric] == ref[metric], (row["expr"], metric)


def test_all_outputs_written(detox_smoke):
    out, _, data = detox_smoke
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| DiPM detox |" in (out / "table.md").read_text()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["seeds"]["0"]["base_model_cached"] is False
    methods = {r["method"] for r in data["rows"]}
    assert methods >= {"base", "H", "T", "C", *DETOX_SWEEPS, *TRANSFER_SWEEPS}


def test_zero_parameter_rows_equal_the_input(detox_smoke):
    _, _, data = detox_smoke
    H, C = reference(data, "H"), reference(data, "C")
    for method in DETOX_SWEEPS:
        same_metrics(rows_of(data, method)[0], H)
    for method in TRANSFER_SWEEPS:  # the B-side readings too: t = 0 rebuilds C from its own factors
        same_metrics(rows_of(data, method)[0], C)
    assert all(rows_of(data, m)[0]["value"] == 0 for m in DETOX_SWEEPS)


def test_dipm_keeps_row_norms(detox_smoke):
    out, _, data = detox_smoke
    checked = [r for r in data["rows"] if "row_norm_rel_err" in r]
    assert {r["method"] for r in checked} >= {"dipm_detox", "dipm_transfer", *WEIGHT_LEVEL}
    assert max(r["row_norm_rel_err"] for r in checked) < 1e-5
    # and independently, from the saved PEFT adapter folders
    import dipm_lang

    folders = out / "adapters" / "seed0"
    H, T = str(folders / "H"), str(folders / "T")
    for t in (0.5, 1.0):
        kept = dipm_lang.evaluate(f"mag(recombine(shift(dir(H), reverse(dir(T)), {t}), mag(H)))", H=H, T=T)
        norms = dipm_lang.evaluate("mag(H)", H=H)
        for name, value in norms.items():
            assert float((kept[name] - value).abs().max()) <= 1e-5 * float(value.max()), name


def _slerp_rows(d: torch.Tensor, e: torch.Tensor, t: float) -> torch.Tensor:
    """SPEC §3's shift, row by row, in float64 (no row here is zero or (anti)parallel)."""
    cos = (d * e).sum(1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    assert float(torch.sin(theta).min()) > 1e-6
    return (torch.sin((1 - t) * theta) * d + torch.sin(t * theta) * e) / torch.sin(theta)


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft on transformers 5
@pytest.mark.parametrize("method, value", [("dora_ta_keep_mag", 1.5), ("dora_dipm_detox", 0.4)])
def test_weight_level_dora_adapter(detox_smoke, tmp_path, method, value):
    """The weight-level readings as the experiment computes them (dipm script, base folder, DoRA
    adapter) equal an independent float64 computation from the saved PEFT adapters' tensors and the
    base model's, once PEFT has loaded and merged the adapter; its rows keep ‖W0 + H‖."""
    import json as json_
    import transformers
    from peft import PeftModel
    from safetensors.torch import load_file

    import dipm_lang
    from examples.experiments.detox_miniature.recipes import METHODS

    out, cache, _ = detox_smoke
    base_dir = next(p for p in cache.glob("base-seed0-*") if p.is_dir())
    folders = out / "adapters" / "seed0"
    recipe = next(m for m in METHODS if m.name == method)
    script = f'save({recipe.expression}, "out")'
    program = dipm_lang.compile(script, file=str(tmp_path / "recipe.dipm"),
                                inputs={name: str(folders / name) for name in recipe.inputs})
    program.run(base=base_dir, **{recipe.param: value})
    config = json_.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["use_dora"] is True

    base = transformers.LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(tmp_path / "out")).merge_and_unload().state_dict()

    W0 = {k: v.double() for k, v in load_file(str(base_dir / "model.safetensors")).items()}

    def delta(name: str) -> dict[str, torch.Tensor]:
        tensors = load_file(str(folders / name / "adapter_model.safetensors"))
        cfg = json_.loads((folders / name / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / cfg["r"]
        return {key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"):
                scale * tensors[key.replace("lora_A", "lora_B")].double() @ tensors[key].double()
                for key in tensors if key.endswith("lora_A.weight")}

    H, T = delta("H"), delta("T")
    assert len(H) == 14
    for key in H:
        kept = (W0[key] + H[key]).norm(dim=1, keepdim=True)
        if method == "dora_ta_keep_mag":
            direction = _unit_rows(W0[key] + H[key] - value * T[key])
        else:
            direction = _slerp_rows(_unit_rows(W0[key] + H[key]), _unit_rows(W0[key] - T[key]), value)
        expected = kept * direction
        got = merged[key].double()
        assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max()), key
        assert float((got.norm(dim=1, keepdim=True) - kept).abs().max()) <= 1e-5 * float(kept.max()), key
        assert float((got - (W0[key] + H[key])).abs().max()) > 1e-3 * float(expected.abs().max()), key  # it moved


def test_H_has_the_behaviour_and_the_skill(detox_smoke):
    _, _, data = detox_smoke
    H = reference(data, "H")
    assert H["unwanted_rate"] >= 0.3
    assert H["helpful_skill"] >= 0.8
    assert reference(data, "base")["unwanted_rate"] == 0  # the base model never learnt it


def test_largest_sweep_values_lower_the_unwanted_rate(detox_smoke):
    _, _, data = detox_smoke
    H = reference(data, "H")
    for method in ("dipm_detox", "task_arithmetic", "ta_keep_mag"):
        last = rows_of(data, method)[-1]
        assert last["value"] == max(r["value"] for r in rows_of(data, method))
        assert last["unwanted_rate"] < H["unwanted_rate"], method


def test_rerun_is_byte_identical(detox_smoke, detox_smoke_run):
    out, _, _ = detox_smoke
    second = detox_smoke_run.second  # run with the first run's --cache
    assert json.loads((second / "timings.json").read_text())["seeds"]["0"]["base_model_cached"]
    assert (second / "rows.json").read_bytes() == (out / "rows.json").read_bytes()


def test_pareto_front_and_area():
    points = [(0.0, 0.9), (0.5, 0.8), (0.4, 0.5), (1.0, 0.1), (0.5, 0.7)]
    front = pareto_front(points)
    assert front == [(0.0, 0.9), (0.5, 0.8), (1.0, 0.1)]
    assert front_area(front) == pytest.approx(0.5 * 0.8 + 0.5 * 0.1)
    assert front_area([(1.0, 1.0)]) == pytest.approx(1.0)


@pytest.mark.slow
def test_full_preset(tmp_path):
    assert main(["--preset", "full", "--out", str(tmp_path / "full"), "--quiet"]) == 0
    data = json.loads((tmp_path / "full" / "rows.json").read_text())
    for seed in (0, 1, 2):
        H, C = reference(data, "H", seed), reference(data, "C", seed)
        assert H["unwanted_rate"] >= 0.5, seed
        assert H["helpful_skill"] >= 0.6, seed
        assert C["unwanted_rate"] == 0, seed
    for name in OUTPUTS:
        assert (tmp_path / "full" / name).stat().st_size > 0, name
