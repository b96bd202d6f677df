"""Bake of adapters that carry whole tensors (SPEC §7.4 `modules_to_save`, trained biases; §7.8 bake).

A whole tensor replaces the base's tensor of the same name: the oracle is PEFT's own (unmerged)
model, whose logits the baked folder — loaded by transformers alone — must give. The adapters'
whole tensors are redrawn at random after PEFT saved them (PEFT saves an untrained copy of the
base's), so a bake that kept the base's tensor fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from base_models import make_adapter, model_logits, peft_logits, relative_error, save_model, tiny_gpt2_model, \
    tiny_llama_model
from clitools import run_main

TOKENS = torch.tensor([[1, 5, 9, 33, 2, 63, 17, 8], [0, 3, 3, 40, 41, 12, 7, 60]])
F32_TOL = 1e-5
WEIGHTS = "adapter_model.safetensors"


def redraw_whole_tensors(adapter: Path, seed: int, *, marker: str) -> dict[str, torch.Tensor]:
    """Replace every tensor of the adapter file whose key contains `marker` by random values; returns them."""
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(str(adapter / WEIGHTS))
    changed = {key: torch.randn(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
               for key, value in tensors.items() if marker in key}
    assert changed, f"no tensor of {adapter} has {marker!r} in its key"
    save_file({**tensors, **changed}, str(adapter / WEIGHTS), metadata={"format": "pt"})
    return changed


def baked_state(folder: Path) -> dict[str, torch.Tensor]:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_in_modules_to_save_is_baked(tmp_path, tied):
    """LoRA on q/v plus a whole lm_head: the baked model gives PEFT's logits, its lm_head is the
    adapter's bit for bit, and a base tying lm_head to the embedding is untied (PEFT's forward uses
    the adapter's lm_head and the base's embedding)."""
    save_model(tiny_llama_model(0, tied=tied), tmp_path / "base")
    adapter = make_adapter(tiny_llama_model(0, tied=tied), tmp_path / "a", seed=3, targets=("q_proj", "v_proj"),
                           modules_to_save=["lm_head"])
    (head,) = redraw_whole_tensors(adapter, 5, marker="lm_head").values()
    result = run_main("bake", "a", "--base", "base", "-o", "baked", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "5 modules changed" in result.out, result.out  # q, v in two layers and lm_head
    want = peft_logits(tiny_llama_model(0, tied=tied), adapter, TOKENS)
    assert relative_error(model_logits(tmp_path / "baked", TOKENS), want) <= F32_TOL
    state = baked_state(tmp_path / "baked")
    assert torch.equal(state["lm_head.weight"], head)
    assert torch.equal(state["model.embed_tokens.weight"], tiny_llama_model(0, tied=tied).model.embed_tokens.weight)
    assert json.loads((tmp_path / "baked" / "config.json").read_text())["tie_word_embeddings"] is False


def test_an_average_of_whole_tensors_is_baked_rounded_once(tmp_path):
    """bake(0.5*H + 0.5*T): the affine recipe's whole lm_head (Σ cᵢ·tensorᵢ in float64, rounded
    once), next to the averaged LoRA updates."""
    save_model(tiny_llama_model(0), tmp_path / "base")
    heads = []
    for index, name in enumerate(("H", "T")):
        make_adapter(tiny_llama_model(0), tmp_path / name, seed=7 + index, targets=("q_proj",),
                     modules_to_save=["lm_head"])
        heads += redraw_whole_tensors(tmp_path / name, 11 + index, marker="lm_head").values()
    (tmp_path / "mix.dipm").write_text('bake(0.5 * load("H") + 0.5 * load("T"), "baked")\n')
    result = run_main("run", "mix.dipm", "--base", "base", cwd=tmp_path)
    assert result.code == 0, result.err
    expected = (0.5 * heads[0].double() + 0.5 * heads[1].double()).float()
    assert torch.equal(baked_state(tmp_path / "baked")["lm_head.weight"], expected)


def test_trained_biases_are_baked_on_a_conv1d_model(tmp_path):
    """bias="all" on GPT-2 (Conv1D, tied lm_head): every bias the adapter trained replaces the base's,
    and the baked model gives PEFT's logits."""
    save_model(tiny_gpt2_model(0), tmp_path / "base")
    adapter = make_adapter(tiny_gpt2_model(0), tmp_path / "a", seed=4, targets=("c_attn",), bias="all",
                           fan_in_fan_out=True)
    biases = redraw_whole_tensors(adapter, 6, marker=".bias")
    result = run_main("bake", "a", "--base", "base", "-o", "baked", cwd=tmp_path)
    assert result.code == 0, result.err
    import transformers

    state = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "baked")).state_dict()
    for key, value in biases.items():
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")  # a LoRA layer's own bias
        assert torch.equal(state[name], value), name
    want = peft_logits(tiny_gpt2_model(0), adapter, TOKENS)
    assert relative_error(model_logits(tmp_path / "baked", TOKENS), want) <= F32_TOL


def test_a_head_the_base_lacks_is_refused_and_nothing_written(tmp_path):
    """A sequence-classification adapter's `score` head on a causal-LM base: exit 1 naming the tensor."""
    import transformers

    save_model(tiny_llama_model(0), tmp_path / "base")
    config = tiny_llama_model(0).config
    config.num_labels, config.pad_token_id = 3, 0
    torch.manual_seed(0)
    make_adapter(transformers.LlamaForSequenceClassification(config).eval(), tmp_path / "cls", seed=2,
                 targets=("q_proj",), task_type="SEQ_CLS")
    result = run_main("bake", "cls", "--base", "base", "-o", "baked", cwd=tmp_path)
    assert result.code == 1 and "score.weight" in result.err and "base" in result.err, result.err
    (tmp_path / "b.dipm").write_text('bake(load("cls"), "baked")\n')  # refused when planning: also a dry run
    result = run_main("run", "b.dipm", "--base", "base", "--dry-run", cwd=tmp_path)
    assert result.code == 1 and "score.weight" in result.err and "b.dipm:1:1" in result.err, result.err
    assert not (tmp_path / "baked").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".baked")]
