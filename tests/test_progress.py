"""The progress line of a run never wraps (issue 12): a 224-module run on an 80-column terminal."""

from __future__ import annotations

import json
import re

import torch

from adapters import PREFIX, write_raw_adapter
from clitools import cli_env, dipm

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_the_progress_line_fits_an_80_column_terminal(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(32):
        for kind in PROJECTIONS:
            name = f"{PREFIX}model.layers.{layer}.self_attn.{kind}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(2, 8, generator=g)
            tensors[f"{name}.lora_B.weight"] = torch.randn(8, 2, generator=g)
    write_raw_adapter(tmp_path / "H", tensors, {"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                 "target_modules": list(PROJECTIONS)})
    (tmp_path / "s.dipm").write_text('h = load("H")\nsave(detox(h, h, t=0.2), "out")\n')
    result = dipm("run", "s.dipm", "--progress", "--threads", "1", cwd=tmp_path, env=cli_env(COLUMNS="80"))
    assert result.code == 0, result.err
    drawn = [line for line in re.split(r"[\r\n]", result.err) if line.strip()]
    assert any("224" in line and "modules" in line for line in drawn), result.err  # the bar counted modules
    assert max(len(line) for line in drawn) <= 79, max(drawn, key=len)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["peft_type"] == "LORA"
