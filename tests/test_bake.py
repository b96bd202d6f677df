"""Bake (io/bake.py): base + adapter written as a model folder that transformers loads.

The oracle is PEFT: the baked model's logits (transformers' own `from_pretrained`) must equal the
unmerged PEFT model's, and the layout must be the base's (shards, index, copied files).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapters import folder_digest
from base_models import (make_adapter, model_logits, peft_logits, peft_merged, read_adapter, relative_error,
                         save_model, tiny_gpt2_model, tiny_llama_model)
from dipm_lang.backend import dora as D
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.bake import bake
from dipm_lang.io.base_model import open_base_model

TOKENS = torch.tensor([[1, 5, 9, 33, 2, 63, 17, 8], [0, 3, 3, 40, 41, 12, 7, 60]])
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")
F32_TOL = 1e-5


def lora_deltas(modules: dict, calls: list | None = None):
    """`deltas` for bake from an adapter's factors (read directly from its file), as LowRank stacks."""
    def deltas(names: list[str]) -> LowRank:
        if calls is not None:
            calls.append(list(names))
        B = torch.stack([modules[n]["B"] for n in names]).float()
        A = torch.stack([modules[n]["A"] for n in names]).float()
        return LowRank(B, A)

    return deltas


def kinds_of(modules: dict) -> dict[str, str]:
    return {name: module["kind"] for name, module in modules.items()}


def staging(tmp_path: Path, name: str = "staging") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bake")
    base = save_model(tiny_llama_model(0), root / "base", shard_size="20KB")
    adapter = make_adapter(tiny_llama_model(0), root / "lora", seed=21, targets=ALL)
    return {"base": base, "adapter": adapter, "modules": read_adapter(adapter)}


def test_bake_sharded_equals_peft(sharded, tmp_path):
    before = folder_digest(sharded["base"])
    base = open_base_model(sharded["base"])
    out = staging(tmp_path)
    report = bake(base, lora_deltas(sharded["modules"]), out, modules=kinds_of(sharded["modules"]))
    # The base's layout: same shards holding the same tensors, index, config; tokenizer files copied.
    assert len(base.layout.shards) >= 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == base.layout.index["weight_map"]
    assert index["metadata"] == base.layout.index["metadata"]
    assert json.loads((out / "config.json").read_text()) == base.config
    assert (out / "tokenizer_config.json").read_bytes() == (sharded["base"] / "tokenizer_config.json").read_bytes()
    assert not (out / "README.md").exists()
    assert sorted(p.name for p in out.iterdir()) == list(report.files)
    assert set(report.modules) == set(sharded["modules"]) and not report.untied
    # The baked model is the adapter's model.
    expected = peft_logits(tiny_llama_model(0), sharded["adapter"], TOKENS)
    assert relative_error(model_logits(out, TOKENS), expected) <= F32_TOL
    assert folder_digest(sharded["base"]) == before


def test_bake_is_deterministic_and_batches_by_shape(sharded, tmp_path):
    base = open_base_model(sharded["base"])
    calls_one, calls_many = [], []
    first, second = staging(tmp_path, "a"), staging(tmp_path, "b")
    bake(base, lora_deltas(sharded["modules"], calls_one), first, modules=kinds_of(sharded["modules"]),
         group_bytes=1)
    bake(base, lora_deltas(sharded["modules"], calls_many), second, modules=kinds_of(sharded["modules"]))
    assert folder_digest(first) == folder_digest(second)
    assert all(len(call) == 1 for call in calls_one)
    assert max(len(call) for call in calls_many) > 1
    for call in calls_many:  # one shape per call, all within one shard
        assert len({base.weight(n, kinds_of(sharded["modules"])[n]).shape for n in call}) == 1
        assert len({base.weight(n, kinds_of(sharded["modules"])[n]).entry.shard for n in call}) == 1


def test_bf16_base_is_within_bf16_rounding(tmp_path):
    folder = save_model(tiny_llama_model(0), tmp_path / "base", shard_size="12KB", dtype=torch.bfloat16)
    adapter = make_adapter(tiny_llama_model(0).to(torch.bfloat16), tmp_path / "lora", seed=22,
                           targets=("q_proj", "down_proj", "embed_tokens"))
    modules = read_adapter(adapter)
    base = open_base_model(folder)
    assert base.dtype == torch.bfloat16
    out = staging(tmp_path)
    bake(base, lora_deltas(modules), out, modules=kinds_of(modules))
    merged = peft_merged(tiny_llama_model(0).to(torch.bfloat16), adapter)
    baked = open_base_model(out)
    for key in base.tensors:
        ours = baked.read_tensor(key)
        assert ours.dtype == torch.bfloat16
        name = key.removesuffix(".weight")
        if name not in modules:
            assert torch.equal(ours, base.read_tensor(key)), key
            continue
        module = modules[name]
        W0 = base.read_weights([name], kinds=module["kind"], dtype=torch.float64)[0]
        delta = module["B"] @ module["A"]
        exact, terms = W0 + delta, W0.abs() + delta.abs()
        if module["kind"] == "embedding":
            exact, terms = exact.T, terms.T
        # summed in float32 (error ~2^-24 of the terms), cast once: within bf16's unit roundoff 2^-8
        assert ((ours.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + terms * 2.0 ** -20).all(), key
        # PEFT rounds ΔW to bf16 before adding: one more rounding, of the terms
        assert ((merged[key].double() - exact).abs() <= (exact.abs() + terms) * 2.0 ** -8).all(), key


@pytest.mark.parametrize("targets", [("lm_head", "q_proj"), ("embed_tokens",)], ids=["lm_head", "embedding"])
def test_tied_lm_head_is_untied(tmp_path, targets):
    """A change to a tied lm_head, or to the embedding it shares, unties them (PEFT's forward does)."""
    folder = save_model(tiny_llama_model(0, tied=True), tmp_path / "base")
    adapter = make_adapter(tiny_llama_model(0, tied=True), tmp_path / "lora", seed=23, targets=targets)
    modules = read_adapter(adapter)
    base = open_base_model(folder)
    out = staging(tmp_path)
    report = bake(base, lora_deltas(modules), out, modules=kinds_of(modules))
    assert report.untied
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" in handle.keys()
        if "lm_head" not in targets:  # lm_head keeps the old embedding
            assert torch.equal(handle.get_tensor("lm_head.weight"), base.read_tensor("model.embed_tokens.weight"))
    expected = peft_logits(tiny_llama_model(0, tied=True), adapter, TOKENS)
    assert relative_error(model_logits(out, TOKENS), expected) <= F32_TOL


def test_dora_adapter_bakes_to_peft(sharded, tmp_path):
    adapter = make_adapter(tiny_llama_model(0), tmp_path / "dora", seed=24,
                           targets=("q_proj", "v_proj", "gate_proj", "embed_tokens"), use_dora=True)
    modules = read_adapter(adapter)
    base = open_base_model(sharded["base"])

    def deltas(names: list[str]) -> list[D.DoraForm]:
        out = []
        for name in names:  # the caller evaluates a DoRA update with the base weights it reads itself
            module = modules[name]
            W0 = base.read_weights([name], kinds=module["kind"])[0]
            lora = LowRank(module["B"].float(), module["A"].float())
            out.append(D.dora_update(W0, lora, module["magnitude"].float()))
        return out

    out = staging(tmp_path)
    bake(base, deltas, out, modules=kinds_of(modules))
    expected = peft_logits(tiny_llama_model(0), adapter, TOKENS)
    assert relative_error(model_logits(out, TOKENS), expected) <= F32_TOL


def test_dtype_override(sharded, tmp_path):
    base = open_base_model(sharded["base"])
    out = staging(tmp_path)
    report = bake(base, lora_deltas(sharded["modules"]), out, modules=kinds_of(sharded["modules"]),
                  dtype=torch.bfloat16)
    assert report.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    baked = open_base_model(out)
    assert baked.dtype == torch.bfloat16 and all(e.code == "BF16" for e in baked.tensors.values())
    module = sharded["modules"]["model.layers.1.mlp.up_proj"]
    exact = base.read_weights(["model.layers.1.mlp.up_proj"], dtype=torch.float64)[0] + module["B"] @ module["A"]
    assert torch.equal(baked.read_tensor("model.layers.1.mlp.up_proj.weight"), exact.float().to(torch.bfloat16))
    assert torch.equal(baked.read_tensor("model.norm.weight"), base.read_tensor("model.norm.weight").bfloat16())


@pytest.mark.slow  # the transposed write path is also covered by the embedding in the default run
def test_gpt2_conv1d_bakes_transposed(tmp_path):
    folder = save_model(tiny_gpt2_model(0), tmp_path / "base", shard_size="30KB")
    adapter = make_adapter(tiny_gpt2_model(0), tmp_path / "lora", seed=25, targets=("c_attn", "c_fc"),
                           fan_in_fan_out=True)
    modules = read_adapter(adapter)
    out = staging(tmp_path)
    bake(open_base_model(folder), lora_deltas(modules), out, modules=kinds_of(modules))
    expected = peft_logits(tiny_gpt2_model(0), adapter, TOKENS)
    assert relative_error(model_logits(out, TOKENS), expected) <= F32_TOL


def test_refusals(sharded, tmp_path):
    base = open_base_model(sharded["base"])
    deltas = lora_deltas(sharded["modules"])
    busy = staging(tmp_path, "busy")
    (busy / "x").write_text("")
    with pytest.raises(AdapterError, match="not empty"):
        bake(base, deltas, busy, modules=["model.layers.0.self_attn.q_proj"])
    with pytest.raises(AdapterError, match="existing, empty folder"):
        bake(base, deltas, tmp_path / "absent", modules=["model.layers.0.self_attn.q_proj"])
    with pytest.raises(AdapterError, match="'model.layers.0.self_attn.x_proj'"):
        bake(base, deltas, staging(tmp_path, "unknown"), modules=["model.layers.0.self_attn.x_proj"])
    wrong = lambda names: [torch.zeros(3, 3) for _ in names]  # noqa: E731
    with pytest.raises(AdapterError, match="'model.layers.0.self_attn.q_proj'.*\\[3, 3\\]"):
        bake(base, wrong, staging(tmp_path, "wrong"), modules=["model.layers.0.self_attn.q_proj"])
    nan = lambda names: [torch.full((32, 32), float("nan")) for _ in names]  # noqa: E731
    with pytest.raises(AdapterError, match="'model.layers.0.self_attn.q_proj'.*NaN"):
        bake(base, nan, staging(tmp_path, "nan"), modules=["model.layers.0.self_attn.q_proj"])
    inside = sharded["base"] / "baked"
    inside.mkdir()
    try:
        with pytest.raises(AdapterError, match="inside the base"):
            bake(base, deltas, inside, modules=["model.layers.0.self_attn.q_proj"])
    finally:
        inside.rmdir()




def test_nan_in_base_weight_names_the_tensor(sharded, tmp_path):
    import shutil
    import struct

    folder = Path(shutil.copytree(sharded["base"], tmp_path / "base"))
    base = open_base_model(folder)
    entry = base.tensors["model.layers.1.mlp.gate_proj.weight"]
    with open(folder / entry.shard, "r+b") as handle:
        handle.seek(entry.start + 8)
        handle.write(struct.pack("<f", float("inf")))
    base = open_base_model(folder)
    modules = {"model.layers.1.mlp.gate_proj": "linear"}
    with pytest.raises(AdapterError, match="'model.layers.1.mlp.gate_proj.weight' has NaN or Inf") as caught:
        bake(base, lora_deltas(sharded["modules"]), staging(tmp_path), modules=modules)
    assert caught.value.path.endswith(entry.shard)
