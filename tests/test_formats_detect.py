"""Layouts, model families and scales decided from the header: old diffusers spellings, diffusers'
alphas and saved LoraConfig, SD 1.x vs SD 2.x vs SDXL from block structure, layer kinds and widths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from dipm_lang.errors import AdapterError
from dipm_lang.io.formats import open_lora_file


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _file(tmp_path, tensors, metadata=None, name="x.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _kohya(name, n, m=8, r=2, conv=False, seed=0):
    down = _rand(r, n, 1, 1, seed=seed) if conv else _rand(r, n, seed=seed)
    up = _rand(m, r, 1, 1, seed=seed + 1) if conv else _rand(m, r, seed=seed + 1)
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}


# Keys typed from diffusers' DIFFUSERS_OLD_TO_PEFT / UNET_TO_DIFFUSERS (utils/state_dict_utils.py).
OLD = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora":
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora":
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "unet.down_blocks.0.resnets.0.conv1.lora": "unet.down_blocks.0.resnets.0.conv1",
    "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora":
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora":
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
    "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer":
        "text_encoder.text_model.encoder.layers.0.mlp.fc1",
}


def test_old_diffusers_spellings(tmp_path):
    tensors, expected = {}, {}
    for i, (prefix, canonical) in enumerate(OLD.items()):
        conv = prefix.endswith("conv1.lora")
        down = _rand(2, 8, 3, 3, seed=i) if conv else _rand(2, 8, seed=i)
        up = _rand(8, 2, 1, 1, seed=i + 50) if conv else _rand(8, 2, seed=i + 50)
        tensors[f"{prefix}.down.weight"], tensors[f"{prefix}.up.weight"] = down, up
        expected[canonical] = up.reshape(8, 2).double() @ down.reshape(2, -1).double()
    adapter = open_lora_file(_file(tmp_path, tensors), family="sd1")
    assert adapter.format == "diffusers-old" and set(adapter.modules) == set(expected)
    for name, value in adapter.read_modules(dtype=torch.float64).items():
        torch.testing.assert_close(value.dense(), expected[name], rtol=1e-12, atol=0)
    # `unet.save_attn_procs` files have no component prefix: the UNet
    bare = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
    assert set(open_lora_file(_file(tmp_path, bare, name="b.safetensors"), family="sd1").modules) == {
        name for name in expected if name.startswith("unet.")}


def test_diffusers_network_alphas_and_saved_config(tmp_path):
    tensors = {"unet.conv_in.lora_A.weight": _rand(4, 4, 3, 3, seed=1),
               "unet.conv_in.lora_B.weight": _rand(8, 4, 1, 1, seed=2), "unet.conv_in.alpha": torch.tensor(2.0)}
    assert open_lora_file(_file(tmp_path, tensors), family="sd1").modules["unet.conv_in"].scale == 0.5
    del tensors["unet.conv_in.alpha"]
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors |= {f"{q}.lora_A.weight": _rand(2, 8, seed=3), f"{q}.lora_B.weight": _rand(8, 2, seed=4)}
    config = {"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": True, "unet.rank_pattern": {"to_q": 2},
              "unet.alpha_pattern": {"to_q": 3}, "unet.target_modules": ["conv_in", "to_q"]}
    path = _file(tmp_path, tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(config)}, name="c.safetensors")
    adapter = open_lora_file(path, family="sd1")
    assert adapter.modules["unet.conv_in"].scale == pytest.approx(8 / math.sqrt(4))  # PEFT: alpha / √r with rsLoRA
    assert adapter.modules[q].scale == pytest.approx(3 / math.sqrt(2))  # rank_pattern / alpha_pattern
    config["unet.rank_pattern"] = {}
    bad = _file(tmp_path, tensors, {"lora_adapter_metadata": json.dumps(config)}, name="d.safetensors")
    with pytest.raises(AdapterError, match="rank 2, but its lora_adapter_metadata says 4"):
        open_lora_file(bad, family="sd1")
    garbage = _file(tmp_path, tensors, {"lora_adapter_metadata": "{not json"}, name="e.safetensors")
    with pytest.raises(AdapterError, match="not JSON"):
        open_lora_file(garbage, family="sd1")


ATTN2_K = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"


@pytest.mark.parametrize("tensors, family", [
    (_kohya(ATTN2_K, 768), "sd1"),
    (_kohya(ATTN2_K, 1024), "sd2"),
    (_kohya(ATTN2_K, 2048), "sdxl"),
    (_kohya("lora_unet_down_blocks_0_attentions_0_proj_in", 8, conv=True), "sd1"),  # 1×1 conv: SD 1.x
    (_kohya("lora_unet_down_blocks_0_attentions_0_proj_in", 8), "sd2"),  # Linear; SDXL has no attention there
    (_kohya("lora_unet_up_blocks_0_attentions_1_proj_out", 8), "sdxl"),  # SD 1.x/2.x up block 0 has none
    (_kohya("lora_unet_output_blocks_0_1_proj_in", 8), "sdxl"),  # sgm: output block 0 holds an attention
    (_kohya("lora_unet_input_blocks_10_0_emb_layers_1", 8), None),  # SD 1.x/2.x: ask
    (_kohya("lora_te_text_model_encoder_layers_20_mlp_fc1", 1024), "sd2"),
    (_kohya("lora_te_text_model_encoder_layers_0_mlp_fc1", 768), "sd1"),
    (_kohya("lora_te2_text_model_encoder_layers_0_mlp_fc1", 1280)
     | _kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1", 768), "sdxl"),
    (_kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1", 768), None),  # SD 1.x, SDXL and Flux all have CLIP-L
    (_kohya("lora_unet_double_blocks_3_img_mlp_2", 8), "flux"),
    (_kohya("lora_te3_encoder_block_0_layer_1_DenseReluDense_wo", 8), "flux"),
])
def test_family_from_structure_and_widths(tmp_path, tensors, family):
    path = _file(tmp_path, tensors)
    if family is None:
        with pytest.raises(AdapterError, match="more than one model family"):
            open_lora_file(path)
    else:
        assert open_lora_file(path).family == family


@pytest.mark.parametrize("metadata, family", [
    ({"ss_base_model_version": "sd_v2"}, "sd2"), ({"ss_base_model_version": "sd_v1_v"}, "sd1"),
    ({"ss_v2": "True"}, "sd2"), ({"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}, "sd2"),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd1"),
])
def test_family_from_metadata(tmp_path, metadata, family):
    path = _file(tmp_path, _kohya("lora_unet_input_blocks_10_0_emb_layers_1", 8), metadata)
    assert open_lora_file(path).family == family


def test_header_is_enough(tmp_path):
    """Shapes, ranks, dtypes, kinds and scales come without reading any factor."""
    tensors = _kohya("lora_unet_double_blocks_0_txt_attn_qkv", 16, m=48, r=3) | {
        "lora_unet_double_blocks_0_txt_attn_qkv.alpha": torch.tensor(1.5)}
    tensors = {k: v.to(torch.bfloat16) if "alpha" not in k else v for k, v in tensors.items()}
    adapter = open_lora_file(_file(tmp_path, tensors))
    spec = adapter.modules["transformer.transformer_blocks.0.attn.add_v_proj"]
    assert (spec.m, spec.n, spec.rank, spec.scale, spec.dtype, spec.kind, spec.rows) == (
        16, 16, 3, 0.5, torch.bfloat16, "linear", (32, 48))
    assert spec.key == "lora_unet_double_blocks_0_txt_attn_qkv" and spec.alpha == 1.5
    assert adapter.metadata == {} and adapter.layout == "kohya"
