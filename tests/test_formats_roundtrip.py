"""read → write → read: lossless per format, exact across formats, deterministic, metadata kept or
rewritten as SPEC §7.10 says. Hand-built files (torch + safetensors only); diffusers' own loader is
checked in test_formats_diffusers.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io.formats import open_lora_file, weights_file, write_lora_file, writable_format

META = {"ss_base_model_version": "sd_v1", "ss_network_dim": "4", "ss_network_alpha": "2.0",
        "ss_network_module": "networks.lora", "ss_network_args": json.dumps({"conv_dim": "3", "conv_alpha": "6.0"}),
        "ss_tag_frequency": "{\"x\": 1}", "sshs_model_hash": "abc", "sshs_legacy_hash": "def",
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.hash_sha256": "0x12", "modelspec.date": "2024",
        "modelspec.title": "tiny", "training_comment": "unknown key"}


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _save(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _lora(t, name, down, up, alpha=None):
    t[f"{name}.lora_down.weight"], t[f"{name}.lora_up.weight"] = down, up
    if alpha is not None:
        t[f"{name}.alpha"] = torch.tensor(alpha)


@pytest.fixture(scope="module")
def sd_kohya(tmp_path_factory):
    t = {}
    _lora(t, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", _rand(4, 32, seed=1),
          _rand(32, 4, seed=2), 2.0)
    _lora(t, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", _rand(4, 24, seed=3),
          _rand(32, 4, seed=4), 2.0)
    _lora(t, "lora_unet_down_blocks_0_resnets_0_conv1", _rand(3, 32, 3, 3, seed=5), _rand(32, 3, 1, 1, seed=6), 6.0)
    _lora(t, "lora_unet_down_blocks_0_attentions_0_proj_in", _rand(4, 32, 1, 1, seed=7), _rand(32, 4, 1, 1, seed=8),
          4.0)
    _lora(t, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", _rand(4, 16, seed=9), _rand(16, 4, seed=10), 1.0)
    return _save(tmp_path_factory.mktemp("rt") / "sd.safetensors", t, META)


def _keys(path):
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys()), handle.metadata()


def _same_factors(a, b):
    one, two = a.read_modules(dtype=torch.float32), b.read_modules(dtype=torch.float32)
    assert set(one) == set(two)
    for name in one:
        assert torch.equal(one[name].B, two[name].B), name
        assert torch.equal(one[name].A, two[name].A), name


def _same_deltas(a, b, names=None):
    one, two = a.read_modules(names, dtype=torch.float64), b.read_modules(names, dtype=torch.float64)
    assert set(one) == set(two)
    for name in one:
        torch.testing.assert_close(one[name].dense(), two[name].dense(), rtol=1e-12, atol=1e-14, msg=name)


def test_kohya_roundtrip_is_lossless_and_keeps_names(sd_kohya, tmp_path):
    source = open_lora_file(sd_kohya)
    out = write_lora_file(tmp_path / "out.safetensors", source.read_modules(), format="kohya", family="sd1",
                          template=source, metadata_extra={"dipm.recipe": "h = load(x)", "dipm.inputs": "sha256:1"})
    back = open_lora_file(out)
    assert (back.format, back.family) == ("kohya", "sd1")
    _same_factors(source, back)
    keys, metadata = _keys(out)
    source_keys, _ = _keys(sd_kohya)
    assert {k.split(".")[0] for k in keys} == {k.split(".")[0] for k in source_keys}
    for name, spec in back.modules.items():
        assert spec.scale == 1.0 and spec.alpha == spec.rank  # alpha = rank: the written factors are the value
        assert (spec.kind, spec.kernel) == (source.modules[name].kind, source.modules[name].kernel)
    # metadata: training context kept, what no longer holds dropped or rewritten, the recipe recorded
    assert metadata["ss_tag_frequency"] == META["ss_tag_frequency"] and metadata["modelspec.title"] == "tiny"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    for stale in ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256", "modelspec.date", "training_comment"):
        assert stale not in metadata
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4"  # Linear modules: rank 4, alpha 4
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "3"}
    assert metadata["dipm.recipe"] == "h = load(x)" and metadata["dipm.inputs"] == "sha256:1"


def test_writing_is_deterministic(sd_kohya, tmp_path):
    source = open_lora_file(sd_kohya)
    modules = source.read_modules()
    first = write_lora_file(tmp_path / "a.safetensors", modules, format="kohya", family="sd1", template=source)
    reordered = dict(reversed(list(modules.items())))
    second = write_lora_file(tmp_path / "b.safetensors", reordered, format="kohya", family="sd1", template=source)
    assert first.read_bytes() == second.read_bytes()


def test_ranks_that_vary_drop_ss_network_dim(sd_kohya, tmp_path):
    source = open_lora_file(sd_kohya)
    modules = source.read_modules()
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    modules[q] = LowRank(modules[q].B[:, :2], modules[q].A[:2])
    out = write_lora_file(tmp_path / "o.safetensors", modules, format="kohya", family="sd1", template=source)
    _, metadata = _keys(out)
    assert "ss_network_dim" not in metadata and "ss_network_alpha" not in metadata
    assert open_lora_file(out).modules[q].rank == 2


def test_kohya_to_diffusers_and_back_is_exact(sd_kohya, tmp_path):
    source = open_lora_file(sd_kohya)
    assert writable_format(source.format) == "kohya"
    folder = tmp_path / "diffusers"
    folder.mkdir()
    out = write_lora_file(folder / "pytorch_lora_weights.safetensors", source.read_modules(), format="diffusers",
                          family="sd1", template=source)
    keys, metadata = _keys(out)
    assert "unet.down_blocks.0.resnets.0.conv1.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert metadata["format"] == "pt" and metadata["ss_base_model_version"] == "sd_v1"
    middle = open_lora_file(out)
    assert (middle.format, middle.family) == ("diffusers", "sd1")
    assert writable_format(middle.format) == "diffusers"
    _same_factors(source, middle)
    again = write_lora_file(tmp_path / "again.safetensors", middle.read_modules(), format="kohya", family="sd1",
                            template=middle)
    _same_factors(source, open_lora_file(again))


@pytest.fixture(scope="module")
def loha_file(tmp_path_factory):
    t = {}
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t |= {q + ".hada_w1_a": _rand(32, 2, seed=20), q + ".hada_w1_b": _rand(2, 32, seed=21),
          q + ".hada_w2_a": _rand(32, 2, seed=22), q + ".hada_w2_b": _rand(2, 32, seed=23),
          q + ".alpha": torch.tensor(1.0)}
    c = "lora_unet_down_blocks_0_resnets_0_conv1"
    t |= {c + ".hada_w1_a": _rand(32, 2, seed=24), c + ".hada_w1_b": _rand(2, 288, seed=25),
          c + ".hada_w2_a": _rand(32, 2, seed=26), c + ".hada_w2_b": _rand(2, 288, seed=27)}
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    t |= {k + ".lokr_w1": _rand(4, 4, seed=28), k + ".lokr_w2_a": _rand(8, 2, seed=29),
          k + ".lokr_w2_b": _rand(2, 8, seed=30)}
    meta = {"ss_base_model_version": "sd_v1", "ss_network_module": "lycoris.kohya",
            "ss_network_args": json.dumps({"algo": "loha"}), "modelspec.architecture": "stable-diffusion-v1/lycoris"}
    return _save(tmp_path_factory.mktemp("rt") / "loha.safetensors", t, meta)


def test_lycoris_is_written_as_exact_lora_and_locon(loha_file, tmp_path):
    source = open_lora_file(loha_file)
    assert source.format == "lycoris" and writable_format(source.format) == "kohya"
    out = write_lora_file(tmp_path / "o.safetensors", source.read_modules(), format="kohya", family="sd1",
                          template=source)
    back = open_lora_file(out)
    assert back.format == "kohya"
    _same_factors(source, back)
    conv = back.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert (conv.kind, conv.kernel, conv.rank, conv.n) == ("conv", (3, 3), 4, 288)  # written as a 3×3 LoCon
    keys, metadata = _keys(out)
    with safe_open(str(out), framework="pt") as handle:
        conv1 = "lora_unet_down_blocks_0_resnets_0_conv1"
        assert list(handle.get_slice(conv1 + ".lora_down.weight").get_shape()) == [4, 32, 3, 3]
        assert list(handle.get_slice(conv1 + ".lora_up.weight").get_shape()) == [32, 4, 1, 1]
    assert metadata["ss_network_module"] == "networks.lora" and "ss_network_args" not in metadata
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"


# --- Flux: fused modules ----------------------------------------------------------------------------

H, MLP = 16, 64


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory):
    t = {}
    _lora(t, "lora_unet_double_blocks_0_img_attn_qkv", _rand(4, H, seed=40), _rand(3 * H, 4, seed=41), 2.0)
    _lora(t, "lora_unet_double_blocks_0_txt_attn_proj", _rand(4, H, seed=42), _rand(H, 4, seed=43), 2.0)
    _lora(t, "lora_unet_single_blocks_1_linear1", _rand(4, H, seed=44), _rand(3 * H + MLP, 4, seed=45), 8.0)
    _lora(t, "lora_unet_final_layer_adaLN_modulation_1", _rand(2, H, seed=46), _rand(2 * H, 2, seed=47))
    _lora(t, "lora_te1_text_model_encoder_layers_0_mlp_fc1", _rand(2, 32, seed=48), _rand(64, 2, seed=49), 1.0)
    return _save(tmp_path_factory.mktemp("rt") / "flux.safetensors", t, {"ss_base_model_version": "flux1"}), t


def test_flux_fused_modules_read_as_diffusers_modules(flux_file):
    path, t = flux_file
    source = open_lora_file(path)
    assert source.family == "flux"
    linear1 = "lora_unet_single_blocks_1_linear1"
    up, down = t[linear1 + ".lora_up.weight"].double(), t[linear1 + ".lora_down.weight"].double()
    rows = {"attn.to_q": (0, H), "attn.to_k": (H, 2 * H), "attn.to_v": (2 * H, 3 * H), "proj_mlp": (3 * H, 3 * H + MLP)}
    for part, (start, stop) in rows.items():
        name = f"transformer.single_transformer_blocks.1.{part}"
        spec = source.modules[name]
        assert (spec.m, spec.n, spec.rank, spec.scale) == (stop - start, H, 4, 2.0)
        delta = source.read([name], dtype=torch.float64)
        torch.testing.assert_close(delta.B[0] @ delta.A[0], 2.0 * up[start:stop] @ down, rtol=1e-12, atol=0)
    # BFL (shift, scale) → diffusers (scale, shift): diffusers' swap_scale_shift on the up weight
    final = "lora_unet_final_layer_adaLN_modulation_1"
    up, down = t[final + ".lora_up.weight"].double(), t[final + ".lora_down.weight"].double()
    shift, scale = up.chunk(2, dim=0)
    delta = source.read(["transformer.norm_out.linear"], dtype=torch.float64)
    torch.testing.assert_close(delta.B[0] @ delta.A[0], torch.cat([scale, shift]) @ down, rtol=1e-12, atol=0)


def test_flux_kohya_roundtrip_keeps_the_fusing(flux_file, tmp_path):
    path, _ = flux_file
    source = open_lora_file(path)
    out = write_lora_file(tmp_path / "o.safetensors", source.read_modules(), format="kohya", family="flux",
                          template=source)
    keys, _ = _keys(out)
    assert {k.split(".")[0] for k in keys} == {k.split(".")[0] for k in _keys(path)[0]}
    back = open_lora_file(out)
    _same_factors(source, back)
    assert back.modules["transformer.single_transformer_blocks.1.attn.to_q"].rank == 4  # one shared A: rank kept


def test_flux_parts_with_different_factors_fuse_block_diagonally(flux_file, tmp_path):
    path, _ = flux_file
    source = open_lora_file(path)
    modules = source.read_modules(dtype=torch.float64)
    q, k, v = (f"transformer.transformer_blocks.0.attn.to_{x}" for x in "qkv")
    modules[q] = LowRank(modules[q].B[:, :3] * 2, modules[q].A[:3] + 1)  # another A, another rank
    del modules[v]  # a missing part is zero rows
    out = write_lora_file(tmp_path / "o.safetensors", modules, format="kohya", family="flux", template=source,
                          dtype=torch.float64)
    back = open_lora_file(out)
    assert back.modules[q].rank == 3 + 4
    read = back.read_modules([q, k, v], dtype=torch.float64)
    torch.testing.assert_close(read[q].dense(), modules[q].dense(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(read[k].dense(), modules[k].dense(), rtol=1e-12, atol=1e-14)
    assert torch.equal(read[v].dense(), torch.zeros(H, H, dtype=torch.float64))


def test_flux_kohya_to_diffusers_to_kohya(flux_file, tmp_path):
    path, _ = flux_file
    source = open_lora_file(path)
    folder = tmp_path / "d"
    folder.mkdir()
    out = write_lora_file(folder / "pytorch_lora_weights.safetensors", source.read_modules(), format="diffusers",
                          family="flux", template=source)
    keys, _ = _keys(out)
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight" in keys
    assert not any("linear1" in key for key in keys)  # diffusers' layout cannot hold the fusing
    middle = open_lora_file(out)
    assert middle.family == "flux"
    _same_deltas(source, middle)
    again = open_lora_file(write_lora_file(tmp_path / "k.safetensors", middle.read_modules(), format="kohya",
                                           family="flux", template=middle))
    _same_deltas(source, again)
    keys, _ = _keys(again.path)
    assert "lora_unet_single_blocks_1_linear1.lora_down.weight" in keys
    # a template-less write uses the family's default kohya names
    fresh = write_lora_file(tmp_path / "f.safetensors", middle.read_modules(), format="kohya", family="flux")
    assert {k.split(".")[0] for k in _keys(fresh)[0]} == {k.split(".")[0] for k in _keys(again.path)[0]}
    assert _keys(fresh)[1]["ss_base_model_version"] == "flux1"


def test_float16_output_keeps_small_updates(tmp_path):
    """kohya's alpha ≪ rank gives small scaled B; stored times a power of two (alpha divided by it),
    float16 keeps their precision, and read-back equals the value up to float16 rounding."""
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    value = LowRank(_rand(32, 8, seed=60) * 1e-6, _rand(8, 32, seed=61))
    out = write_lora_file(tmp_path / "h.safetensors", {name: value}, format="kohya", family="sd1",
                          dtype=torch.float16)
    back = open_lora_file(out)
    spec = back.modules[name]
    assert spec.dtype == torch.float16
    ratio = spec.rank / spec.alpha
    assert ratio == 2.0 ** round(torch.log2(torch.tensor(ratio)).item()) and ratio > 1  # a power of two
    read = back.read([name], dtype=torch.float64)
    error = (read.B[0] @ read.A[0] - value.dense().double()).norm() / value.dense().double().norm()
    assert error < 2e-3


def test_rank_zero_modules_are_left_out(sd_kohya, tmp_path):
    source = open_lora_file(sd_kohya)
    modules = source.read_modules()
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    modules[q] = LowRank(torch.zeros(32, 0), torch.zeros(0, 32))
    back = open_lora_file(write_lora_file(tmp_path / "o.safetensors", modules, format="kohya", family="sd1",
                                          template=source))
    assert q not in back.modules and len(back.modules) == len(source.modules) - 1


def test_weights_file_for_an_output_path(tmp_path):
    assert weights_file(tmp_path / "a.safetensors", "kohya") == tmp_path / "a.safetensors"
    assert weights_file(tmp_path / "out", "diffusers") == tmp_path / "out" / "pytorch_lora_weights.safetensors"
    with pytest.raises(AdapterError, match="one .safetensors file"):
        weights_file(tmp_path / "out", "kohya")
