"""Every bad input to `dipm_lang.io.formats` is an AdapterError naming the file and saying what it is."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError, UsageError
from dipm_lang.io.formats import block_vector, check_same_family, open_lora_file, write_lora_file

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
SD1 = {"ss_base_model_version": "sd_v1"}


def _file(tmp_path, tensors, metadata=None, name="x.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _lora(prefix, m=8, n=8, r=2, conv=False):
    down = torch.randn(r, n, 3, 3) if conv else torch.randn(r, n)
    up = torch.randn(m, r, 1, 1) if conv else torch.randn(m, r)
    return {f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up}


def _fails(path, *fragments, **kwargs):
    with pytest.raises(AdapterError) as info:
        open_lora_file(path, **kwargs)
    text = str(info.value)
    assert info.value.path == str(path)
    for fragment in fragments:
        assert fragment in text, text
    return info.value


def test_not_a_safetensors_file(tmp_path):
    _fails(tmp_path / "missing.safetensors", "no such file")
    _fails(tmp_path, "folder")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    _fails(garbage, "not a readable safetensors file")


def test_full_checkpoint_and_peft_file(tmp_path):
    ckpt = _file(tmp_path, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
                            "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(4)})
    _fails(ckpt, "full model checkpoint", "not a LoRA")
    peft = _file(tmp_path, {"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 4),
                            "base_model.model.q_proj.lora_B.weight": torch.zeros(4, 2)}, name="p.safetensors")
    _fails(peft, "PEFT adapter", "adapter_config.json")
    other = _file(tmp_path, {"foo": torch.zeros(2), "bar.baz": torch.zeros(1)}, name="o.safetensors")
    _fails(other, "no LoRA keys")


def test_mixed_layouts_and_unknown_keys(tmp_path):
    mixed = _file(tmp_path, _lora(Q) | {"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3),
                                        "unet.conv_in.lora_B.weight": torch.zeros(8, 2, 1, 1)}, SD1)
    _fails(mixed, "mixes key layouts", "kohya", "diffusers")
    unknown = _file(tmp_path, _lora(Q) | {"something_else": torch.zeros(1)}, SD1, name="u.safetensors")
    _fails(unknown, "keys outside", "something_else")
    bad_tensor = _file(tmp_path, _lora(Q) | {Q + ".lora_side.weight": torch.zeros(2)}, SD1, name="t.safetensors")
    _fails(bad_tensor, "lora_side.weight", "no supported format")


@pytest.mark.parametrize("extra, words", [
    ({Q + ".lora_mid.weight": torch.zeros(2, 2, 3, 3)}, ("Tucker", "lora_mid")),
    ({Q + ".dora_scale": torch.ones(8, 1)}, ("DoRA", "base model")),
])
def test_refused_lora_variants(tmp_path, extra, words):
    _fails(_file(tmp_path, _lora(Q) | extra, SD1), Q, *words)


@pytest.mark.parametrize("tensors, words", [
    ({Q + ".hada_w1_a": torch.zeros(8, 2), Q + ".hada_w1_b": torch.zeros(2, 8), Q + ".hada_w2_a": torch.zeros(8, 2),
      Q + ".hada_w2_b": torch.zeros(2, 8), Q + ".hada_t1": torch.zeros(2, 2, 3, 3)}, ("Tucker", "hada_t1")),
    ({Q + ".lokr_w1": torch.zeros(2, 2), Q + ".lokr_w2_a": torch.zeros(4, 2), Q + ".lokr_w2_b": torch.zeros(2, 4),
      Q + ".lokr_t2": torch.zeros(2, 2, 3, 3)}, ("Tucker", "lokr_t")),
    ({Q + ".oft_blocks": torch.zeros(2, 4, 4)}, ("OFT",)),
    ({Q + ".diff": torch.zeros(8, 8)}, ("full-weight",)),
    ({Q + ".w_norm": torch.zeros(8)}, ("norm module",)),
    ({Q + ".a1.weight": torch.zeros(2, 8), Q + ".a2.weight": torch.zeros(8, 2)}, ("GLoRA",)),
    ({Q + ".on_input": torch.zeros(1), Q + ".weight": torch.zeros(8)}, ("(IA)",)),
    ({"bundle_emb.foo.string_to_param.*": torch.zeros(1, 8)} | _lora(Q), ("textual-inversion",)),
])
def test_refused_lycoris_algorithms(tmp_path, tensors, words):
    _fails(_file(tmp_path, tensors, SD1), *words)


def test_diffusers_dora_bias_and_embeddings(tmp_path):
    base = {"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3),
            "unet.conv_in.lora_B.weight": torch.zeros(8, 2, 1, 1)}
    _fails(_file(tmp_path, base | {"unet.conv_in.lora_magnitude_vector": torch.ones(8)}), "DoRA")
    _fails(_file(tmp_path, base | {"unet.conv_in.lora_B.bias": torch.ones(8)}, name="b.safetensors"), "bias")


@pytest.mark.parametrize("tensors, words", [
    (_lora(Q, r=2) | {Q + ".lora_up.weight": torch.zeros(8, 3)}, ("ranks differ",)),
    ({Q + ".lora_down.weight": torch.zeros(2, 8)}, ("lacks", "up")),
    ({Q + ".lora_down.weight": torch.zeros(2, 8, 3, 3), Q + ".lora_up.weight": torch.zeros(8, 2, 3, 3)},
     ("3×3 kernel", "1×1")),
    ({Q + ".lora_down.weight": torch.zeros(2, 8, 3, 3), Q + ".lora_up.weight": torch.zeros(8, 2)}, ("both be 2-D",)),
    ({Q + ".hada_w1_a": torch.zeros(8, 2), Q + ".hada_w1_b": torch.zeros(2, 8), Q + ".hada_w2_a": torch.zeros(6, 2),
      Q + ".hada_w2_b": torch.zeros(2, 8)}, ("different shapes",)),
    ({Q + ".lokr_w1": torch.zeros(2, 2), Q + ".lokr_w2_a": torch.zeros(4, 2)}, ("lokr_w2",)),
    ({Q + ".lora_down.weight": torch.zeros(2, 8, dtype=torch.int32),
      Q + ".lora_up.weight": torch.zeros(8, 2, dtype=torch.int32)}, ("floating-point",)),
    ({Q + ".lora_down.weight": torch.zeros(2, 8, dtype=torch.float16), Q + ".lora_up.weight": torch.zeros(8, 2)},
     ("share one",)),
    (_lora(Q) | {Q + ".alpha": torch.tensor([1.0, 2.0])}, ("one number",)),
    (_lora(Q) | {Q + ".alpha": torch.tensor(float("nan"))}, ("alpha nan",)),
])
def test_bad_shapes_dtypes_alphas(tmp_path, tensors, words):
    _fails(_file(tmp_path, tensors, SD1), *words)


def test_nan_in_a_factor_is_found_when_read_and_names_the_module(tmp_path):
    tensors = _lora(Q)
    tensors[Q + ".lora_up.weight"][3, 1] = float("inf")
    path = _file(tmp_path, tensors, SD1)
    adapter = open_lora_file(path)  # the header is fine
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    with pytest.raises(AdapterError, match="NaN or Inf") as info:
        adapter.read([name])
    assert name in str(info.value) and info.value.path == str(path)
    with pytest.raises(AdapterError, match="has no module"):
        adapter.read(["unet.conv_in"])


def test_unknown_modules_and_families(tmp_path):
    _fails(_file(tmp_path, _lora("lora_unet_down_blocks_0_flux_capacitor")), "no supported model", "flux_capacitor")
    mixed = _file(tmp_path, _lora(Q) | _lora("lora_unet_double_blocks_0_img_attn_proj"), name="m.safetensors")
    _fails(mixed, "different model families")
    # A 1×1-conv proj_in (SD 1.x) and a Linear proj_in (SD 2.x / SDXL): two families' layers.
    kinds = _file(tmp_path, _lora("lora_unet_down_blocks_0_attentions_0_proj_in", conv=True)
                  | _lora("lora_unet_down_blocks_1_attentions_0_proj_out"), name="k.safetensors")
    _fails(kinds, "different model families")


def test_ambiguous_family_needs_metadata_or_family_argument(tmp_path):
    te1 = _file(tmp_path, _lora("lora_te1_text_model_encoder_layers_0_self_attn_q_proj"))
    error = _fails(te1, "more than one model family")
    assert "family=" in error.hint
    assert open_lora_file(te1, family="sdxl").family == "sdxl"
    assert open_lora_file(te1, family="sd1").family == "sd1"
    _fails(te1, "unknown model family", family="sd9")
    _fails(_file(tmp_path, _lora(Q), name="q.safetensors"), "does not fit", family="sdxl")


def test_metadata_conflicts_and_unsupported_models(tmp_path):
    _fails(_file(tmp_path, _lora(Q), {"ss_base_model_version": "sdxl_base_v1-0"}), "metadata naming SDXL")
    sd3 = {"modelspec.architecture": "stable-diffusion-3-medium/lora"}
    _fails(_file(tmp_path, _lora(Q), sd3, name="s.safetensors"), "stable-diffusion-3-medium")
    _fails(_file(tmp_path, _lora(Q), {"ss_base_model_version": "sd_v1", "modelspec.architecture": "flux-1-dev/lora"},
                 name="t.safetensors"), "two model families")


def test_transformer_names_shared_with_other_dits_need_evidence(tmp_path):
    tensors = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 24),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(24, 2)}
    path = _file(tmp_path, tensors)
    error = _fails(path, "other DiTs")
    assert "family='flux'" in error.hint
    assert open_lora_file(path, family="flux").family == "flux"


def test_files_of_different_families_do_not_combine(tmp_path):
    sd = open_lora_file(_file(tmp_path, _lora(Q), SD1, name="a.safetensors"))
    xl = open_lora_file(_file(tmp_path, _lora("lora_te2_text_model_encoder_layers_0_mlp_fc1"), name="b.safetensors"))
    check_same_family(sd, sd)
    with pytest.raises(AdapterError, match="different model families") as info:
        check_same_family(sd, xl)
    assert "SDXL" in str(info.value) and "Stable Diffusion 1.x" in str(info.value)


def test_write_refusals(tmp_path):
    value = LowRank(torch.randn(8, 2), torch.randn(2, 8))
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    out = tmp_path / "o.safetensors"
    with pytest.raises(AdapterError, match="unknown LoRA file format"):
        write_lora_file(out, {name: value}, format="comfy", family="sd1")
    with pytest.raises(AdapterError, match="not a module of SDXL"):
        elsewhere = name.replace("down_blocks.0", "down_blocks.1").replace("attentions.0", "attentions.5")
        write_lora_file(out, {elsewhere: value}, format="kohya", family="sdxl")
    with pytest.raises(AdapterError, match="NaN or Inf"):
        write_lora_file(out, {name: LowRank(torch.full((8, 2), float("nan")), torch.randn(2, 8))}, format="kohya",
                        family="sd1")
    template = open_lora_file(_file(tmp_path, _lora(Q), SD1))
    with pytest.raises(AdapterError, match="template's is 8×8"):
        write_lora_file(out, {name: LowRank(torch.randn(8, 2), torch.randn(2, 9))}, format="kohya", family="sd1",
                        template=template)
    with pytest.raises(AdapterError, match="not SDXL"):
        write_lora_file(out, {name: value}, format="kohya", family="sdxl", template=template)
    with pytest.raises(AdapterError, match="nonzero rank"):
        write_lora_file(out, {name: LowRank(torch.zeros(8, 0), torch.zeros(0, 8))}, format="kohya", family="sd1")
    assert not out.exists()


def test_block_vector_errors():
    with pytest.raises(UsageError, match="17 or 26|12 or 17 or 20 or 26") as info:
        block_vector([1.0] * 5, "sd1")
    assert "got 5" in str(info.value)
    with pytest.raises(UsageError, match="61 values, got 17"):
        block_vector("ALL", "flux")
    with pytest.raises(UsageError, match="unknown block-weight preset"):
        block_vector("EVERYTHING", "sd1")
    with pytest.raises(UsageError, match="not a number"):
        block_vector(",".join(["1"] * 16 + ["R"]), "sd1")
