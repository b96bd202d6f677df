"""Every output's README.md is a model card in the Hub's convention (issue 14): `hf upload` of the folder
publishes a page that says what the adapter is. Read back with huggingface_hub's own card parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from adapters import make_peft_adapter, peft_deltas
from clitools import run_main


def adapter(path: Path, seed: int, *, base: str | None, task: str | None = None, license: str | None = None) -> Path:
    make_peft_adapter(path, seed=seed, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(base_model_name_or_path=base, task_type=task)
    (path / "adapter_config.json").write_text(json.dumps(config))
    card = f"---\nlicense: {license}\nlibrary_name: peft\n---\n# an input\n" if license else "# an input\n"
    (path / "README.md").write_text(card)
    return path


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cards")
    adapter(root / "H", 71, base="org/tiny-llama", task="CAUSAL_LM", license="apache-2.0")
    adapter(root / "T", 72, base="org/tiny-llama", task="CAUSAL_LM", license="apache-2.0")
    return root


def card_of(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def test_the_card_has_the_hubs_front_matter_and_says_how_it_was_made(hub_like):
    (hub_like / "s.dipm").write_text('H = load("H")\nT = load("T")\nsave(H + T, "out", energy=0.9)\n')
    result = run_main("run", "s.dipm", cwd=hub_like)
    assert result.code == 0, result
    card = card_of(hub_like / "out")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == "org/tiny-llama"
    assert data["pipeline_tag"] == "text-generation" and data["license"] == "apache-2.0"
    assert {"base_model:adapter:org/tiny-llama", "lora", "peft", "dipm_lang"} <= set(data["tags"])
    text = card.text
    assert 'save(H + T, "out", energy=0.9)' in text  # the recipe
    ranks = {m: r for m, (_, _, r, _) in peft_deltas(hub_like / "out").items()}
    rows = dict(re.findall(r"^\| `([^`]+)` \| (\d+) \| \d\.\d\de[+-]\d\d \|$", text, re.M))
    assert {m: int(r) for m, r in rows.items()} == ranks  # per-module ranks as PEFT reads them, with errors
    inputs = re.findall(r"^- `(\w+)`: `(\w+)`, sha256 `([0-9a-f]{64})`$", text, re.M)
    assert [(name, source) for name, source, _ in inputs] == [("H", "H"), ("T", "T")]


def test_only_what_is_known_and_public_goes_in(tmp_path):
    """A local base-model folder is not a Hub id (and nobody's business): no base_model; inputs whose
    cards disagree on the license give none; no task type, no pipeline tag."""
    private = str(tmp_path / "home" / "someone" / "models" / "llama")
    adapter(tmp_path / "H", 73, base=private, license="apache-2.0")
    adapter(tmp_path / "T", 74, base=private, license="mit")
    (tmp_path / "s.dipm").write_text('H = load("H")\nT = load("T")\nsave(0.5 * H + 0.5 * T, "out")\n')
    assert run_main("run", "s.dipm", cwd=tmp_path).code == 0
    raw = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in raw and "someone" not in raw
    front = yaml.safe_load(raw.split("\n---\n", 1)[0].removeprefix("---\n"))
    assert front["library_name"] == "peft"
    assert "base_model" not in front and "license" not in front and "pipeline_tag" not in front
    assert card_of(tmp_path / "out").data.library_name == "peft"
