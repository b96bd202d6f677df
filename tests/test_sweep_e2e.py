"""End to end: `dipm sweep` computes a DiPM recipe over two adapters for the detox miniature's toy
model, the shipped evaluator (`examples/evaluate_adapter.py`) scores each point with PEFT, and
the sweep tables, plots and picks the best.

The default test uses a toy base pretrained for two steps (cheap; its metrics are those of an
untrained model) and checks what must hold for any base: a zero update scores exactly as the
base model, a non-zero one does not, and the table and best pick agree with the metrics. The
slow test sweeps five points on the smoke preset's properly pretrained base.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from adapters import write_raw_adapter
from clitools import run_main

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a package at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from examples.experiments.detox_miniature.metrics import METRICS  # noqa: E402
from examples.experiments.detox_miniature.model import ModelSettings  # noqa: E402

HIDDEN = ModelSettings().hidden_size
LAYERS = ModelSettings().num_hidden_layers
RANK = 4


RECIPE = 'H = load("H")\nT = load("T")\nsave(t * detox(H, T, t=0.3), "detoxed")\n'
"""`t` scales a DiPM recipe: t = 0 is an exactly zero update (the base model), others are not."""


def toy_inputs(root: Path) -> None:
    """Two random LoRA adapters H and T on the toy model's q/v projections, in PEFT's layout."""
    for name, seed in (("H", 1234), ("T", 99)):
        g = torch.Generator().manual_seed(seed)
        tensors = {}
        for layer in range(LAYERS):
            for proj in ("q_proj", "v_proj"):
                key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=g) / HIDDEN ** 0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(HIDDEN, RANK, generator=g)
        write_raw_adapter(root / name, tensors, {"peft_type": "LORA", "r": RANK, "lora_alpha": RANK,
                                                 "target_modules": ["q_proj", "v_proj"]})


def evaluator(cache: Path, *extra: str) -> str:
    return (f"cd {shlex.quote(str(ROOT))} && {shlex.quote(sys.executable)} -m examples.evaluate_adapter {{adapter}} "
            f"--toy-cache {shlex.quote(str(cache))} --compare-base " + " ".join(extra))


def sweep(tmp_path: Path, grid: str, command: str, jobs: int) -> tuple[int, list[dict], str]:
    toy_inputs(tmp_path)
    (tmp_path / "recipe.dipm").write_text(RECIPE)
    result = run_main("sweep", "recipe.dipm", "--grid", grid, "-o", "out", "--eval", command,
                      "--minimize", "general_nll", "--jobs", str(jobs), cwd=tmp_path)
    assert result.code in (0, 1), result.err
    return result.code, json.loads((tmp_path / "out" / "sweep.json").read_text()), result.out


def check(code: int, rows: list[dict], out: Path) -> None:
    assert code == 0, rows
    assert all(row["status"] == "ok" for row in rows)
    for row in rows:
        metrics = row["metrics"]
        assert set(metrics) == set(METRICS) | {f"base_{m}" for m in METRICS}
        if row["params"]["t"] == 0.0:  # a zero update is the base model, exactly
            assert all(metrics[m] == metrics[f"base_{m}"] for m in METRICS)
        else:
            assert metrics["general_nll"] != metrics["base_general_nll"]
        assert metrics["base_general_nll"] == rows[0]["metrics"]["base_general_nll"]  # one base for all
        assert (out / row["path"] / "adapter_config.json").is_file()
    nll = [row["metrics"]["general_nll"] for row in rows]
    assert [row["best"] for row in rows] == [i == nll.index(min(nll)) for i in range(len(rows))]
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sweep_with_the_shipped_evaluator_on_the_toy_model(tmp_path):
    command = evaluator(tmp_path / "cache", "--toy-steps 2 --n 8")
    code, rows, text = sweep(tmp_path, "t=0,4", command, jobs=2)
    check(code, rows, tmp_path / "out")
    assert [row["path"] for row in rows] == ["t=0.0", "t=4.0"]
    assert "best (minimize general_nll)" in text


@pytest.mark.slow
def test_sweep_with_the_shipped_evaluator_on_the_pretrained_toy_base(tmp_path):
    command = evaluator(tmp_path / "cache")  # the smoke preset's base (500 steps) and 96 prompts per set
    code, rows, _ = sweep(tmp_path, "t=0:2:0.5", command, jobs=2)
    check(code, rows, tmp_path / "out")
    assert [row["path"] for row in rows] == ["t=0.0", "t=0.5", "t=1.0", "t=1.5", "t=2.0"]
    assert rows[0]["metrics"]["base_general_skill"] > 0.5  # the base did learn its tasks
