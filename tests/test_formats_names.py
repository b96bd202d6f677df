"""Canonical names, kohya names, sgm block numbering and sd-webui-lora-block-weight's tables,
against tables typed here from the sources (diffusers 0.42.1 converters; LBW at commit
b403cb7300f288360023c2a1978b86a361934e24, scripts/lora_block_weight.py)."""

from __future__ import annotations

import pytest

from diffusion_fixtures import SDXL_SGM, sdxl_sgm_path
from dipm_lang.io.formats import block_of, block_vector, block_weights, component_of, component_weights, role_of
from dipm_lang.io.formats import blocks, kohya, names

# --- sgm ↔ diffusers ------------------------------------------------------------------------------

# SD 1.x/2.x (original LDM UNet, `layers_per_block` 2): up block 0 has no attention, so its
# upsampler sits at output_blocks.2.1 (an entry diffusers' generic `_maybe_map_sgm_blocks_to_diffusers`
# would send to `attentions`).
SD_SGM = [
    ("conv_in", "input_blocks.0.0"),
    ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
    ("down_blocks.0.attentions.0.proj_in", "input_blocks.1.1.proj_in"),
    ("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", "input_blocks.2.1.transformer_blocks.0.attn2.to_k"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
    ("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    ("down_blocks.3.resnets.1.time_emb_proj", "input_blocks.11.0.emb_layers.1"),
    ("mid_block.resnets.0.conv2", "middle_block.0.out_layers.3"),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "middle_block.1.transformer_blocks.0.ff.net.0.proj"),
    ("mid_block.resnets.1.conv1", "middle_block.2.in_layers.2"),
    ("up_blocks.0.resnets.0.conv1", "output_blocks.0.0.in_layers.2"),
    ("up_blocks.0.resnets.2.conv_shortcut", "output_blocks.2.0.skip_connection"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
    ("up_blocks.1.attentions.0.proj_in", "output_blocks.3.1.proj_in"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
     "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0"),
    ("conv_out", "out.2"),
    ("time_embedding.linear_1", "time_embed.0"),
]

SDXL_MODULE_EXAMPLES = [
    "down_blocks.0.resnets.1.conv2", "down_blocks.0.downsamplers.0.conv", "down_blocks.1.attentions.0.proj_in",
    "down_blocks.1.resnets.0.conv_shortcut", "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_v",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2", "mid_block.resnets.1.time_emb_proj",
    "up_blocks.0.attentions.2.transformer_blocks.3.attn1.to_q", "up_blocks.0.upsamplers.0.conv",
    "up_blocks.1.resnets.2.conv1", "up_blocks.2.resnets.2.conv_shortcut", "conv_in", "conv_out",
    "time_embedding.linear_2", "add_embedding.linear_1",
]


@pytest.mark.parametrize("diffusers, sgm", SD_SGM)
def test_sd_sgm_names_both_ways(diffusers, sgm):
    for family in ("sd1", "sd2"):
        assert names.sgm_to_diffusers(sgm, family) == diffusers
        assert names.diffusers_to_sgm(diffusers, family) == sgm


@pytest.mark.parametrize("path", SDXL_MODULE_EXAMPLES)
def test_sdxl_sgm_names_match_the_typed_block_table(path):
    sgm = sdxl_sgm_path(path)  # from the table typed in diffusion_fixtures.SDXL_SGM
    assert names.diffusers_to_sgm(path, "sdxl") == sgm
    assert names.sgm_to_diffusers(sgm, "sdxl") == path
    assert names.fits(f"unet.{path}", "sdxl")


def test_sdxl_block_table_is_complete():
    for diffusers, sgm in SDXL_SGM:
        if diffusers.endswith(("conv", "conv_in", "conv_out")) or "linear" in diffusers:
            assert names.sgm_to_diffusers(sgm, "sdxl") == diffusers


@pytest.mark.parametrize("name, fits_in", [
    ("unet.down_blocks.0.attentions.0.proj_in", {"sd1", "sd2"}),
    ("unet.up_blocks.0.attentions.0.proj_in", {"sdxl"}),
    ("unet.down_blocks.3.resnets.0.conv1", {"sd1", "sd2"}),
    ("unet.down_blocks.2.downsamplers.0.conv", {"sd1", "sd2"}),
    ("unet.down_blocks.2.attentions.1.transformer_blocks.1.attn1.to_q", {"sdxl"}),
    ("unet.add_embedding.linear_2", {"sdxl"}),
    ("unet.up_blocks.0.resnets.2.conv1", {"sd1", "sd2", "sdxl"}),
    ("unet.up_blocks.0.resnets.3.conv1", set()),
    ("unet.mid_block.attentions.1.proj_in", set()),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn3.to_q", set()),
    ("text_encoder.text_model.encoder.layers.11.mlp.fc2", {"sd1", "sd2", "sdxl", "flux"}),
    ("text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj", {"sdxl"}),
    ("text_encoder_2.text_projection", {"sdxl"}),
    ("text_encoder_2.encoder.block.3.layer.1.DenseReluDense.wi_0", {"flux"}),
    ("transformer.single_transformer_blocks.37.proj_mlp", {"flux"}),
    ("transformer.transformer_blocks.18.attn.to_add_out", {"flux"}),
    ("transformer.time_text_embed.guidance_embedder.linear_1", {"flux"}),
    ("transformer.pos_embed.proj", set()),
])
def test_fits(name, fits_in):
    assert {family for family in names.FAMILIES if names.fits(name, family)} == fits_in


@pytest.mark.parametrize("name, family, kernel", [
    ("unet.conv_in", "sd1", (3, 3)), ("unet.down_blocks.0.resnets.0.conv1", "sdxl", (3, 3)),
    ("unet.down_blocks.1.resnets.0.conv_shortcut", "sdxl", (1, 1)),
    ("unet.up_blocks.1.upsamplers.0.conv", "sd2", (3, 3)),
    ("unet.down_blocks.0.attentions.0.proj_in", "sd1", (1, 1)),
    ("unet.down_blocks.0.attentions.0.proj_in", "sd2", None),
    ("unet.down_blocks.1.attentions.0.proj_out", "sdxl", None),
    ("unet.down_blocks.0.resnets.0.time_emb_proj", "sd1", None),
    ("transformer.proj_out", "flux", None), ("text_encoder.text_model.encoder.layers.0.mlp.fc1", "sd1", None),
])
def test_module_kernels(name, family, kernel):
    assert names.module_kernel(name, family) == kernel


# --- kohya names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family, kohya_name, canonical", [
    ("sd1", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("sd1", "lora_unet_up_blocks_1_resnets_2_conv_shortcut", "unet.up_blocks.1.resnets.2.conv_shortcut"),
    ("sd1", "lora_unet_time_embedding_linear_1", "unet.time_embedding.linear_1"),
    ("sd1", "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
    ("sd2", "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
     "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    ("sdxl", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("sdxl", "lora_unet_output_blocks_2_2_conv", "unet.up_blocks.0.upsamplers.0.conv"),
    ("sdxl", "lora_unet_input_blocks_0_0", "unet.conv_in"),
    ("sdxl", "lora_unet_out_2", "unet.conv_out"),
    ("sdxl", "lora_unet_label_emb_0_0", "unet.add_embedding.linear_1"),
    ("sdxl", "lora_unet_middle_block_0_emb_layers_1", "unet.mid_block.resnets.0.time_emb_proj"),
    ("sdxl", "lora_te2_text_model_encoder_layers_31_mlp_fc2", "text_encoder_2.text_model.encoder.layers.31.mlp.fc2"),
    ("flux", "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_1",
     "text_encoder_2.encoder.block.0.layer.1.DenseReluDense.wi_1"),
    ("flux", "lora_transformer_single_transformer_blocks_3_attn_to_k",
     "transformer.single_transformer_blocks.3.attn.to_k"),
])
def test_kohya_names(family, kohya_name, canonical):
    parts = kohya.to_parts(kohya_name, family, 8, 8)
    assert [p.name for p in parts] == [canonical]
    if not kohya_name.startswith(("lora_te1_", "lora_transformer_")):
        prefix_family_default = kohya.module_name(canonical, family)
        assert prefix_family_default == kohya_name


def test_kohya_accepts_diffusers_spelled_sdxl_unets_and_flattened_clip():
    """diffusers' `convert_state_dict_to_kohya` spells SDXL UNets the diffusers way and, with
    transformers ≥ 5, CLIP without `text_model.`."""
    assert kohya.to_parts("lora_unet_up_blocks_0_attentions_1_proj_in", "sdxl", 8, 8)[0].name == \
        "unet.up_blocks.0.attentions.1.proj_in"
    assert kohya.to_parts("lora_te1_encoder_layers_3_mlp_fc1", "sd1", 8, 8)[0].name == \
        "text_encoder.text_model.encoder.layers.3.mlp.fc1"


# diffusers' `_convert_kohya_flux_lora_to_diffusers`, typed: BFL body → diffusers modules (row order).
FLUX_BFL = {
    "double_blocks_{i}_img_attn_qkv": ["transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.attn.to_k",
                                       "transformer_blocks.{i}.attn.to_v"],
    "double_blocks_{i}_img_attn_proj": ["transformer_blocks.{i}.attn.to_out.0"],
    "double_blocks_{i}_img_mlp_0": ["transformer_blocks.{i}.ff.net.0.proj"],
    "double_blocks_{i}_img_mlp_2": ["transformer_blocks.{i}.ff.net.2"],
    "double_blocks_{i}_img_mod_lin": ["transformer_blocks.{i}.norm1.linear"],
    "double_blocks_{i}_txt_attn_qkv": ["transformer_blocks.{i}.attn.add_q_proj",
                                       "transformer_blocks.{i}.attn.add_k_proj",
                                       "transformer_blocks.{i}.attn.add_v_proj"],
    "double_blocks_{i}_txt_attn_proj": ["transformer_blocks.{i}.attn.to_add_out"],
    "double_blocks_{i}_txt_mlp_0": ["transformer_blocks.{i}.ff_context.net.0.proj"],
    "double_blocks_{i}_txt_mlp_2": ["transformer_blocks.{i}.ff_context.net.2"],
    "double_blocks_{i}_txt_mod_lin": ["transformer_blocks.{i}.norm1_context.linear"],
    "single_blocks_{i}_linear1": ["single_transformer_blocks.{i}.attn.to_q", "single_transformer_blocks.{i}.attn.to_k",
                                  "single_transformer_blocks.{i}.attn.to_v", "single_transformer_blocks.{i}.proj_mlp"],
    "single_blocks_{i}_linear2": ["single_transformer_blocks.{i}.proj_out"],
    "single_blocks_{i}_modulation_lin": ["single_transformer_blocks.{i}.norm.linear"],
    "img_in": ["x_embedder"], "txt_in": ["context_embedder"],
    "time_in_in_layer": ["time_text_embed.timestep_embedder.linear_1"],
    "time_in_out_layer": ["time_text_embed.timestep_embedder.linear_2"],
    "vector_in_in_layer": ["time_text_embed.text_embedder.linear_1"],
    "vector_in_out_layer": ["time_text_embed.text_embedder.linear_2"],
    "guidance_in_in_layer": ["time_text_embed.guidance_embedder.linear_1"],
    "guidance_in_out_layer": ["time_text_embed.guidance_embedder.linear_2"],
    "final_layer_linear": ["proj_out"], "final_layer_adaLN_modulation_1": ["norm_out.linear"],
}


@pytest.mark.parametrize("body", sorted(FLUX_BFL))
def test_flux_bfl_names_and_splits(body):
    hidden = 3072
    for i in (0, 18, 37) if body.startswith("single") else (0, 18) if body.startswith("double") else (0,):
        expected = [f"transformer.{p.format(i=i)}" for p in FLUX_BFL[body]]
        m = {1: hidden, 3: 3 * hidden, 4: 3 * hidden + 4 * hidden}[len(expected)]
        parts = kohya.to_parts(f"lora_unet_{body.format(i=i)}", "flux", m, hidden)
        assert [p.name for p in parts] == expected
        if len(expected) == 3:
            assert [p.rows for p in parts] == [(0, hidden), (hidden, 2 * hidden), (2 * hidden, 3 * hidden)]
        if len(expected) == 4:  # diffusers' dims=[3072, 3072, 3072, 12288]
            assert [p.rows for p in parts] == [(0, 3072), (3072, 6144), (6144, 9216), (9216, 21504)]
        assert [p.swap_halves for p in parts] == [body == "final_layer_adaLN_modulation_1"] * len(expected)
        for index, name in enumerate(expected):
            assert kohya.flux_fused_group(name) == (body.format(i=i), index, len(expected))


# --- sd-webui-lora-block-weight ---------------------------------------------------------------------

def test_lbw_tables_as_published():
    # Typed from scripts/lora_block_weight.py at b403cb7300f288360023c2a1978b86a361934e24.
    assert blocks.LBW_COMMIT == "b403cb7300f288360023c2a1978b86a361934e24"
    assert list(blocks.BLOCKID26) == ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08",
                                      "IN09", "IN10", "IN11", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04",
                                      "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
    assert list(blocks.BLOCKID17) == ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04",
                                      "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
    assert list(blocks.BLOCKID12) == ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02",
                                      "OUT03", "OUT04", "OUT05"]
    assert list(blocks.BLOCKID20) == ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08",
                                      "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07",
                                      "OUT08"]
    flux = blocks.BLOCKIDFLUX
    assert len(flux) == 61 and flux[:4] == ("CLIP", "T5", "IN", "D00") and flux[21:23] == ("D18", "S00")
    assert flux[-2:] == ("S37", "OUT")
    presets = {
        "NONE": [0] * 17, "ALL": [1] * 17,
        "INS": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "IND": [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "INALL": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "MIDD": [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        "OUTD": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        "OUTS": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        "OUTALL": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "ALL0.5": [0.5] * 17, "FLUXALL": [1] * 61,
    }
    assert {k: list(v) for k, v in blocks.PRESETS.items()} == presets


@pytest.mark.parametrize("family, name, block", [
    ("sd1", "text_encoder.text_model.encoder.layers.5.mlp.fc1", "BASE"),
    ("sd1", "unet.conv_in", "IN00"),
    ("sd1", "unet.down_blocks.0.attentions.0.proj_in", "IN01"),
    ("sd1", "unet.down_blocks.0.resnets.1.conv2", "IN02"),
    ("sd1", "unet.down_blocks.0.downsamplers.0.conv", "IN03"),
    ("sd1", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "IN04"),
    ("sd1", "unet.down_blocks.2.attentions.1.proj_out", "IN08"),
    ("sd1", "unet.down_blocks.3.resnets.1.conv1", "IN11"),
    ("sd1", "unet.mid_block.resnets.1.conv2", "M00"),
    ("sd1", "unet.up_blocks.0.resnets.0.conv1", "OUT00"),
    ("sd1", "unet.up_blocks.0.upsamplers.0.conv", "OUT02"),
    ("sd1", "unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", "OUT03"),
    ("sd1", "unet.up_blocks.3.attentions.2.proj_out", "OUT11"),
    ("sd1", "unet.conv_out", None),
    ("sd1", "unet.time_embedding.linear_1", None),
    ("sd2", "unet.down_blocks.1.attentions.1.proj_in", "IN05"),
    ("sdxl", "text_encoder_2.text_model.encoder.layers.30.mlp.fc2", "BASE"),
    ("sdxl", "unet.down_blocks.0.resnets.0.conv1", "IN01"),
    ("sdxl", "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q", "IN04"),
    ("sdxl", "unet.down_blocks.2.attentions.1.proj_in", "IN08"),
    ("sdxl", "unet.up_blocks.0.attentions.0.proj_out", "OUT00"),
    ("sdxl", "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v", "OUT05"),
    ("sdxl", "unet.up_blocks.2.resnets.2.conv2", "OUT08"),
    ("sdxl", "unet.add_embedding.linear_1", None),
    ("flux", "text_encoder.text_model.encoder.layers.0.mlp.fc1", "CLIP"),
    ("flux", "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q", "T5"),
    ("flux", "transformer.x_embedder", "IN"),
    ("flux", "transformer.time_text_embed.guidance_embedder.linear_2", "IN"),
    ("flux", "transformer.transformer_blocks.7.attn.add_k_proj", "D07"),
    ("flux", "transformer.single_transformer_blocks.37.proj_out", "S37"),
    ("flux", "transformer.norm_out.linear", "OUT"),
    ("flux", "transformer.proj_out", "OUT"),
])
def test_block_of(family, name, block):
    assert block_of(name, family) == block


def test_block_vectors_follow_to26():
    vector = block_vector("IND", "sd1")
    assert set(vector) == set(blocks.BLOCKID26)
    assert [vector[b] for b in blocks.BLOCKID17] == list(blocks.PRESETS["IND"])
    # blocks outside the 17-value form get 0 (LBW's to26) …
    assert all(vector[b] == 0.0 for b in ("IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"))
    # … which the 26-value form reaches
    full = block_vector([float(i) for i in range(26)], "sd1")
    assert [full[b] for b in blocks.BLOCKID26] == [float(i) for i in range(26)]
    xl = block_vector(",".join(str(i) for i in range(12)), "sdxl")
    assert xl["IN04"] == 1.0 and xl["OUT05"] == 11.0 and xl["IN00"] == 0.0
    assert [block_vector([2.0] * 20, "sdxl")[b] for b in blocks.BLOCKID20] == [2.0] * 20
    assert set(block_vector("FLUXALL", "flux").values()) == {1.0}


def test_block_and_component_weights():
    modules = ["unet.down_blocks.0.attentions.0.proj_in", "unet.down_blocks.0.downsamplers.0.conv",
               "unet.time_embedding.linear_1", "text_encoder.text_model.encoder.layers.0.mlp.fc1"]
    weights = block_weights(modules, [0.5] + [0.25] * 16, "sd1")
    assert weights == {modules[0]: 0.25, modules[1]: 0.0, modules[2]: 1.0, modules[3]: 0.5}
    assert component_weights(modules, model=0.75, clip=2.0) == {modules[0]: 0.75, modules[1]: 0.75, modules[2]: 0.75,
                                                                modules[3]: 2.0}
    assert component_of("text_encoder_2.text_model.encoder.layers.0.mlp.fc1") == "text_encoder_2"
    assert component_of("transformer.proj_out") == "transformer"
    assert role_of("transformer.proj_out") == "model" and role_of("text_encoder_2.text_projection") == "clip"
