"""The base-model reader (io/base_model.py, base_layout.py, base_modules.py) and extract support.

Base folders are written by transformers' `save_pretrained`; layouts are checked against the
models' own state dicts and against PEFT's merge of LoRA adapters, errors by breaking copies.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from base_models import (make_adapter, peft_merged, read_adapter, relative_error, save_model, tiny_gpt2_model,
                         tiny_llama_model)
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io import base_model as bm
from dipm_lang.io.base_model import check_base_folder, check_pair, open_base_model, read_pair
from dipm_lang.io.base_modules import select_modules
from dipm_lang.io.extract import extract, module_seed, rank_approximation

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "sharded": save_model(tiny_llama_model(0), root / "sharded", shard_size="20KB"),
        "single": save_model(tiny_llama_model(0), root / "single"),
        "tied": save_model(tiny_llama_model(0, tied=True), root / "tied"),
        "gpt2": save_model(tiny_gpt2_model(0), root / "gpt2"),
    }


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def index_of(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def write_index(folder: Path, index: dict) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


# --- opening and layouts ---------------------------------------------------------------------


def test_sharded_folder_matches_state_dict(folders):
    base = open_base_model(folders["sharded"])
    state = tiny_llama_model(0).state_dict()
    assert len(base.layout.shards) >= 3 and base.layout.sharded
    assert {k: list(v.shape) for k, v in state.items()} == {k: list(e.shape) for k, e in base.tensors.items()}
    assert (base.num_hidden_layers, base.tie_word_embeddings, base.dtype) == (2, False, torch.float32)
    for key in ("model.layers.1.mlp.down_proj.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(base.read_tensor(key), state[key])


def test_single_file_folder(folders):
    base = open_base_model(folders["single"])
    assert not base.layout.sharded and [s.name for s in base.layout.shards] == ["model.safetensors"]
    assert torch.equal(base.read_weights([Q0])[0], tiny_llama_model(0).state_dict()[f"{Q0}.weight"])


def test_read_weights_stacks_in_lora_layout(folders):
    """Linear: [out, in] as stored; embedding: transposed to LoRA's [dim, vocab]; float64 on request."""
    base = open_base_model(folders["sharded"])
    state = tiny_llama_model(0).state_dict()
    names = [Q0, "model.layers.1.self_attn.q_proj"]
    stack = base.read_weights(names, dtype=torch.float64)
    assert stack.dtype == torch.float64 and stack.shape == (2, 32, 32)
    assert torch.equal(stack[1], state[f"{names[1]}.weight"].double())
    embedding = base.read_weights(["model.embed_tokens"], kinds="embedding")[0]
    assert torch.equal(embedding, state["model.embed_tokens.weight"].T)
    with pytest.raises(ValueError, match="one shape"):
        base.read_weights([Q0, "model.layers.0.self_attn.v_proj"])


def test_lora_layout_equals_peft_merge(folders, tmp_path):
    """W0 (ours) + s·B·A in LoRA layout is PEFT's merged weight, for linear, embedding and lm_head."""
    base = open_base_model(folders["sharded"])
    adapter = make_adapter(tiny_llama_model(0), tmp_path / "lora", seed=5,
                           targets=("q_proj", "down_proj", "embed_tokens", "lm_head"))
    merged = peft_merged(tiny_llama_model(0), adapter)
    modules = read_adapter(adapter)
    assert {m["kind"] for m in modules.values()} == {"linear", "embedding"}
    for name, module in modules.items():
        ours = base.read_weights([name], kinds=module["kind"], dtype=torch.float64)[0] + module["B"] @ module["A"]
        stored = ours.T if module["kind"] == "embedding" else ours
        assert relative_error(merged[f"{name}.weight"], stored) <= 1e-6, name


def test_conv1d_is_decided_by_layer_type_as_peft_does(folders, tmp_path):
    """GPT-2's Conv1D weights are [in, out]: transposed on read even when the adapter's config says
    fan_in_fan_out=False (PEFT's dispatch_default overrides the flag by layer type)."""
    base = open_base_model(folders["gpt2"])
    adapter = make_adapter(tiny_gpt2_model(0), tmp_path / "lora", seed=6, targets=("c_attn", "c_proj"),
                           fan_in_fan_out=False)
    merged = peft_merged(tiny_gpt2_model(0), adapter)
    modules = read_adapter(adapter)
    assert len(modules) == 6  # c_attn and both c_proj (attention's and the MLP's) of two layers
    for name, module in modules.items():
        weight = base.weight(name)
        assert weight.conv1d and weight.shape == (module["B"].shape[0], module["A"].shape[1])
        ours = base.read_weights([name], dtype=torch.float64)[0] + module["B"] @ module["A"]
        assert relative_error(merged[f"{name}.weight"], ours.T) <= 1e-6, name
    assert not base.weight("lm_head").conv1d  # GPT-2's lm_head is an nn.Linear, tied to wte


def test_tied_lm_head_reads_the_embedding(folders):
    base = open_base_model(folders["tied"])
    assert base.tie_word_embeddings and "lm_head.weight" not in base.tensors
    weight = base.weight("lm_head")
    assert weight.tied and weight.key == "model.embed_tokens.weight" and not weight.transpose
    embedding = tiny_llama_model(0, tied=True).state_dict()["model.embed_tokens.weight"]
    assert torch.equal(base.read_weights(["lm_head"])[0], embedding)
    assert torch.equal(base.read_weights(["model.embed_tokens"], kinds="embedding")[0], embedding.T)


def test_keys_saved_from_the_bare_model_map_to_peft_names(folders, tmp_path):
    """The Hub's gpt2 stores `h.0.attn.c_attn.weight` where PEFT names `transformer.h.0.attn.c_attn`."""
    folder = tmp_path / "old_gpt2"
    folder.mkdir()
    state = tiny_gpt2_model(0).state_dict()
    save_file({k.removeprefix("transformer."): v.contiguous() for k, v in state.items() if k != "lm_head.weight"},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(folders["gpt2"] / "config.json", folder / "config.json")
    base = open_base_model(folder)
    weight = base.weight("transformer.h.0.attn.c_attn")
    assert weight.key == "h.0.attn.c_attn.weight" and weight.conv1d
    assert base.weight("lm_head").key == "wte.weight"
    assert torch.equal(base.read_weights(["transformer.h.1.mlp.c_fc"])[0], state["transformer.h.1.mlp.c_fc.weight"].T)


# --- errors ----------------------------------------------------------------------------------


def _shards(folder: Path) -> list[str]:
    return sorted(set(index_of(folder)["weight_map"].values()))


def _missing_shard(folder):
    (folder / _shards(folder)[1]).unlink()
    return _shards(folder)[1], "is missing"


def _index_names_absent_tensor(folder):
    index = index_of(folder)
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = _shards(folder)[0]
    write_index(folder, index)
    return "model.safetensors.index.json", "lists tensor 'model.layers.0.mlp.extra.weight'.*no shard holds it"


def _index_wrong_shard(folder):
    index = index_of(folder)
    key = next(k for k, v in index["weight_map"].items() if v == _shards(folder)[0])
    index["weight_map"][key] = _shards(folder)[1]
    write_index(folder, index)
    return "model.safetensors.index.json", f"lists tensor '{key}'.*but it is in"


def _unlisted_tensor(folder):
    index = index_of(folder)
    del index["weight_map"]["model.norm.weight"]
    write_index(folder, index)
    return "model.safetensors.index.json", "'model.norm.weight'.*missing from the index"


def _duplicate_across_shards(folder):
    first, second = _shards(folder)[:2]
    from safetensors.torch import load_file

    one, two = load_file(str(folder / first)), load_file(str(folder / second))
    key = sorted(one)[0]
    two[key] = one[key]
    save_file(two, str(folder / second), metadata={"format": "pt"})
    return second, f"'{key}' is stored twice"


def _duplicate_in_header(folder):
    shard = folder / _shards(folder)[0]
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length].decode().rstrip()
    first_key = next(k for k in json.loads(header) if k != "__metadata__")
    entry = json.dumps(json.loads(header)[first_key], separators=(",", ":"))
    text = (header[:-1] + f',"{first_key}":{entry}' + "}").encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return shard.name, f"names tensor '{first_key}' twice"


def _escaping_shard_name(folder):
    index = index_of(folder)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../elsewhere.safetensors"
    write_index(folder, index)
    return "model.safetensors.index.json", "not a file name in this folder"


def _truncated_shard(folder):
    shard = folder / _shards(folder)[2]
    shard.write_bytes(shard.read_bytes()[:-4])
    return shard.name, "truncated or padded"


def _quantization_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json", "quantized.*bitsandbytes"


def _quantized_tensors(folder):
    shard = _shards(folder)[0]
    from safetensors.torch import load_file

    tensors = load_file(str(folder / shard))
    tensors[f"{Q0}.qweight"] = torch.zeros(4, 32, dtype=torch.int32)
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    index = index_of(folder)
    index["weight_map"][f"{Q0}.qweight"] = shard
    write_index(folder, index)
    return shard, "quantized.*qweight"


def _missing_config(folder):
    (folder / "config.json").unlink()
    return "config.json", "missing config.json"


BREAKERS = [_missing_shard, _index_names_absent_tensor, _index_wrong_shard, _unlisted_tensor,
            _duplicate_across_shards, _duplicate_in_header, _escaping_shard_name, _truncated_shard,
            _quantization_config, _quantized_tensors, _missing_config]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
def test_broken_folders_are_refused_naming_the_file(folders, tmp_path, breaker):
    folder = copy(folders["sharded"], tmp_path)
    file, message = breaker(folder)
    with pytest.raises(AdapterError, match=message) as caught:
        open_base_model(folder)
    assert caught.value.path.endswith(file)


def test_check_reads_only_config_and_index(folders, tmp_path):
    """`check --base` validates config and index; a shard's broken header is found by open only."""
    folder = copy(folders["sharded"], tmp_path)
    _truncated_shard(folder)
    assert check_base_folder(folder)["num_hidden_layers"] == 2
    with pytest.raises(AdapterError, match="truncated"):
        open_base_model(folder)
    _missing_shard(folder)
    with pytest.raises(AdapterError, match="is missing"):
        check_base_folder(folder)
    _quantization_config(folder)
    (folder / _shards(folder)[1]).write_bytes(b"")  # back in place, so only the config is wrong
    with pytest.raises(AdapterError, match="quantized"):
        check_base_folder(folder)


class _Marker:
    """A pickle that would create a file if unpickled with code execution."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickled_base_is_refused_never_unpickled(folders, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(folders["single"] / "config.json", folder)
    marker = tmp_path / "code_ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Marker(marker)}))
    with pytest.raises(AdapterError, match="pickled") as caught:
        open_base_model(folder)
    assert caught.value.path.endswith("pytorch_model.bin") and "save_pretrained" in caught.value.hint
    assert not marker.exists()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        open_base_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no model.safetensors"):
        open_base_model(tmp_path / "empty")


def test_nan_is_found_on_read_not_on_open(folders, tmp_path):
    """Opening reads headers only; the NaN written into a tensor's data surfaces when it is read."""
    folder = copy(folders["sharded"], tmp_path)
    base = open_base_model(folder)
    entry = base.tensors[f"{Q0}.weight"]
    with open(folder / entry.shard, "r+b") as handle:
        handle.seek(entry.start + 4 * 7)
        handle.write(struct.pack("<f", math.nan))
    base = open_base_model(folder)  # still fine: no data read
    assert torch.isfinite(base.read_weights(["model.layers.0.self_attn.k_proj"])).all()
    with pytest.raises(AdapterError, match=f"'{Q0}'.*NaN") as caught:
        base.read_weights([Q0])
    assert caught.value.path.endswith(entry.shard)


def test_open_reads_no_tensor_data(folders, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tensor data read while opening")

    monkeypatch.setattr(bm, "read_into", refuse)
    assert open_base_model(folders["sharded"]).num_hidden_layers == 2


def test_changed_shard_is_refused(folders, tmp_path):
    folder = copy(folders["single"], tmp_path)
    base = open_base_model(folder)
    with open(folder / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(AdapterError, match="changed since"):
        base.read_weights([Q0])


def test_unknown_module_names_module_and_tensor(folders):
    base = open_base_model(folders["sharded"])
    with pytest.raises(AdapterError, match=r"'model.layers.0.self_attn.qproj'.*'model.layers.0.self_attn.qproj.weight'") \
            as caught:
        base.weight("model.layers.0.self_attn.qproj")
    assert Q0 in caught.value.hint


def test_shape_mismatch_names_module_and_both_shapes(folders):
    base = open_base_model(folders["sharded"])
    assert set(base.check_modules({Q0: (32, 32), "model.embed_tokens": _Spec((32, 64), "embedding")})) == \
        {Q0, "model.embed_tokens"}
    with pytest.raises(AdapterError, match=r"'model.layers.0.self_attn.v_proj'.*32×32.*\[16, 32\]"):
        base.check_modules({"model.layers.0.self_attn.v_proj": (32, 32)})
    with pytest.raises(AdapterError, match=r"'model.embed_tokens'.*64×32.*\[64, 32\] \(as ΔW: 32×64\)"):
        base.check_modules({"model.embed_tokens": _Spec((64, 32), "embedding")})


class _Spec:
    def __init__(self, shape, kind):
        self.shape, self.kind = shape, kind


# --- pairs, selection and extract ------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(folders, tmp_path_factory) -> dict:
    """A 'fine-tuned' model: the base merged with a rank-4 PEFT LoRA on q/v/down and the embedding."""
    root = tmp_path_factory.mktemp("tuned")
    adapter = make_adapter(tiny_llama_model(0), root / "lora", seed=7,
                           targets=("q_proj", "v_proj", "down_proj", "embed_tokens"))
    import peft

    model = peft.PeftModel.from_pretrained(tiny_llama_model(0), str(adapter)).merge_and_unload()
    return {"folder": save_model(model, root / "tuned", shard_size="30KB"), "adapter": read_adapter(adapter)}


def test_read_pair_is_the_difference(folders, tuned):
    base, model = open_base_model(folders["sharded"]), open_base_model(tuned["folder"])
    check_pair(model, base)
    names = [Q0, "model.layers.1.self_attn.q_proj"]
    difference = read_pair(model, base, names, dtype=torch.float64)
    for i, name in enumerate(names):
        module = tuned["adapter"][name]
        assert relative_error(difference[i], module["B"] @ module["A"]) <= 1e-6
    embedding = read_pair(model, base, ["model.embed_tokens"], kinds="embedding", dtype=torch.float64)[0]
    module = tuned["adapter"]["model.embed_tokens"]
    assert relative_error(embedding, module["B"] @ module["A"]) <= 1e-6
    assert read_pair(model, base, ["model.layers.0.self_attn.k_proj"]).abs().max() == 0


def test_pair_mismatches_are_refused(folders, tmp_path):
    base = open_base_model(folders["sharded"])
    half = open_base_model(save_model(tiny_llama_model(0), tmp_path / "bf16", dtype=torch.bfloat16))
    with pytest.raises(AdapterError, match=r"tensor '.*' is \[.*\] BF16 here but \[.*\] F32"):
        check_pair(half, base)
    with pytest.raises(AdapterError, match=f"'{Q0}'.*BF16.*F32"):
        read_pair(half, base, [Q0])
    model = tiny_llama_model(0)
    model.resize_token_embeddings(72)
    bigger = open_base_model(save_model(model, tmp_path / "bigger"))
    with pytest.raises(AdapterError, match="model.embed_tokens.weight"):
        check_pair(bigger, base)


def test_select_modules_follows_peft_rules(folders):
    llama = open_base_model(folders["sharded"])
    selection = select_modules(llama)  # "all-linear": every Linear but the output layer
    assert selection.exact and len(selection.modules) == 14 and "lm_head" not in selection.modules
    assert set(selection.modules.values()) == {"linear"}
    explicit = select_modules(llama, ["q_proj", "embed_tokens", "lm_head", "norm"])
    assert explicit.modules == {"model.embed_tokens": "embedding", Q0: "linear",
                                "model.layers.1.self_attn.q_proj": "linear", "lm_head": "linear"}
    assert list(explicit.refused) == ["model.norm"] and "norm" in explicit.refused["model.norm"]
    regex = select_modules(llama, r".*layers\.1\.mlp\.(up|down)_proj", exclude_modules=["down_proj"])
    assert regex.modules == {"model.layers.1.mlp.up_proj": "linear"}
    with pytest.raises(AdapterError, match="match no module"):
        select_modules(llama, ["nothing_like_this"])
    gpt2 = open_base_model(folders["gpt2"])
    chosen = select_modules(gpt2)
    assert len(chosen.modules) == 8 and all(gpt2.weight(n).conv1d for n in chosen.modules)


def test_select_modules_without_the_architecture(folders, tmp_path):
    """An architecture transformers cannot build: names and shapes decide, and the selection says so."""
    folder = copy(folders["sharded"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="someone-elses-llama", architectures=["SomeonesLlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    base = open_base_model(folder)
    assert base.module_types() is None
    selection = select_modules(base)
    assert not selection.exact and len(selection.modules) == 14 and "lm_head" not in selection.modules
    explicit = select_modules(base, ["embed_tokens", "input_layernorm"])
    assert explicit.modules == {"model.embed_tokens": "embedding"}
    assert set(explicit.refused) == {"model.layers.0.input_layernorm", "model.layers.1.input_layernorm"}


def svd_lowrank(W: torch.Tensor, rank: int, *, seed: int, tolerance: float, exact: bool):
    """The agreed signature of the randomized low-rank helper, made with torch.linalg.svd."""
    seen.append(seed)
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    approx = LowRank((U[:, :rank] * S[:rank]).to(W.dtype), Vh[:rank].to(W.dtype))
    return approx, torch.linalg.vector_norm(S[rank:]) / torch.linalg.vector_norm(S)


seen: list[int] = []


def test_extract_recovers_the_lora(folders, tuned):
    base, model = open_base_model(folders["sharded"]), open_base_model(tuned["folder"])
    targets = {name: module["kind"] for name, module in tuned["adapter"].items()}
    seen.clear()
    results = list(extract(model, base, targets, rank_approximation(svd_lowrank, 4, seed=11)))
    assert [r.name for r in results] == list(targets)
    assert seen == [module_seed(11, name) for name in targets] and len(set(seen)) == len(seen)
    for result in results:
        module = tuned["adapter"][result.name]
        assert relative_error(result.delta.dense(), module["B"] @ module["A"]) <= 1e-5
        assert result.error <= 1e-5
    # At rank 2 the error is the optimal one (Eckart–Young), computed here from the singular values.
    for result in extract(model, base, {Q0: "linear"}, rank_approximation(svd_lowrank, 2)):
        module = tuned["adapter"][Q0]
        S = torch.linalg.svdvals(module["B"] @ module["A"])
        assert math.isclose(result.error, float(S[2:].norm() / S.norm()), rel_tol=1e-4)
