"""Tiny image-model LoRA files for the `dipm_lang.io.formats` tests, built locally (never a hub download).

Models: randomly initialised diffusers `UNet2DConditionModel`s with SD 1.x's and SDXL's block
structure (tiny channels), a tiny `FluxTransformer2DModel`, tiny CLIP and T5 text encoders.
Adapters are made by PEFT itself (`LoraConfig`, `LoHaConfig`, `LoKrConfig`, random factors) and
written by diffusers' own savers/converters (`save_lora_weights`, `convert_state_dict_to_diffusers`,
`convert_state_dict_to_kohya`) or, for layouts diffusers does not write (LyCORIS keys, kohya's SDXL
sgm names, kohya's fused Flux modules), by the small key rewrites below, typed from LyCORIS and
sd-scripts. Each fixture carries PEFT's own per-module ΔW (`get_delta_weight`) as the reference.

diffusers and peft are imported inside the functions: importing them costs seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

SD_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
               norm_num_groups=32, cross_attention_dim=24, attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
                 norm_num_groups=32, cross_attention_dim=40, attention_head_dim=(2, 4, 4),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 1, 2), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 16)
FLUX = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(4, 2, 2), guidance_embeds=True)
CLIP = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
            max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)

# Default fixtures adapt a representative subset (attention, feed-forward, 1×1 and 3×3 convolutions,
# samplers, shortcuts, embeddings) so the default test run stays fast; `full=True` adapts every layer.
SD_SUBSET = (r"conv_in|conv_out|time_embedding\.linear_1"
             r"|down_blocks\.0\.(attentions\.0\.(proj_in|transformer_blocks\.0\."
             r"(attn1\.to_q|attn2\.to_k|attn1\.to_out\.0|ff\.net\.0\.proj))|resnets\.0\.(conv1|time_emb_proj)|"
             r"downsamplers\.0\.conv)|down_blocks\.2\.resnets\.0\.conv_shortcut|mid_block\.(attentions\.0\."
             r"transformer_blocks\.0\.attn2\.to_v|resnets\.1\.conv2)"
             r"|up_blocks\.0\.(resnets\.2\.conv2|upsamplers\.0\.conv)"
             r"|up_blocks\.3\.attentions\.2\.(proj_out|transformer_blocks\.0\.ff\.net\.2)")
SDXL_SUBSET = (r"conv_in|time_embedding\.linear_2|add_embedding\.linear_1|down_blocks\.0\.(resnets\.1\.conv1|"
               r"downsamplers\.0\.conv)|down_blocks\.1\.(attentions\.0\.(proj_in|transformer_blocks\.0\.attn1\.to_q)|"
               r"resnets\.0\.conv_shortcut)|down_blocks\.2\.attentions\.1\.transformer_blocks\.1\.attn2\.to_k|"
               r"mid_block\.attentions\.0\.proj_out|up_blocks\.0\.(attentions\.2\.transformer_blocks\.1\.ff\.net\.2|"
               r"upsamplers\.0\.conv)|up_blocks\.1\.resnets\.2\.time_emb_proj|up_blocks\.2\.resnets\.2\.conv2|out")
TEXT_SUBSET = r"(text_model\.)?encoder\.layers\.(0\.self_attn\.(q_proj|out_proj)|0\.mlp\.fc1|1\.self_attn\.v_proj)"

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "time_emb_proj", "conv", "conv_in", "conv_out"]
UNET_LINEAR_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
FLUX_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2", "proj_mlp", "proj_out", "norm1.linear", "norm.linear"]


def sd_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD_UNET).eval()


def sdxl_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SDXL_UNET).eval()


def flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**FLUX).eval()


def clip_text(seed: int = 0, projection: bool = False):
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(**CLIP)
    model = transformers.CLIPTextModelWithProjection(config) if projection else transformers.CLIPTextModel(config)
    return model.eval()


def _unet(full: bool):
    return UNET_TARGETS if full else SD_SUBSET


def _text(full: bool):
    return TEXT_TARGETS if full else TEXT_SUBSET


@dataclass
class Built:
    """A written LoRA file and PEFT's reading of it: canonical name → ΔW (float64, m × in·kh·kw)."""

    path: Path
    deltas: dict[str, torch.Tensor]
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # canonical name → W0 (m × n), for fuse checks


def _randomize(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if any(tag in name for tag in ("lora_", "hada_", "lokr_")):
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype) * 0.3)


def add_adapter(model, config, seed: int):
    """Inject `config` (a PEFT tuner config) into `model` with random factors; returns the model."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(config, model)
    _randomize(model, seed)
    return model


def peft_deltas(model, component: str) -> dict[str, torch.Tensor]:
    """PEFT's own ΔW per adapted module (`get_delta_weight`), as float64 matrices, canonical names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and "default" in module.active_adapters:
            with torch.no_grad():
                delta = module.get_delta_weight("default").double()
            path = name
            if component.startswith("text_encoder") and path.startswith("encoder.layers."):
                path = "text_model." + path
            out[f"{component}.{path}"] = delta.reshape(delta.shape[0], -1)
    return out


def base_weights(model, component: str) -> dict[str, torch.Tensor]:
    """Weight matrices (m × in·kh·kw, float64) of every Linear/Conv2d by canonical name; under a
    PEFT LoRA layer that is its `base_layer` (which `fuse_lora` updates in place)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and ".lora_" not in name:
            path = name.removesuffix(".base_layer")
            if component.startswith("text_encoder") and path.startswith("encoder.layers."):
                path = "text_model." + path
            out[f"{component}.{path}"] = module.weight.detach().double().reshape(module.weight.shape[0], -1).clone()
    return out


def peft_state_dict(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


# --- diffusers-written files ---------------------------------------------------------------------

def sd_diffusers_peft(root: Path, seed: int = 1, full: bool = False) -> Built:
    """SD 1.x LoRA+LoCon on UNet and text encoder, saved by diffusers' `save_lora_weights` with the
    LoraConfig as `lora_adapter_metadata` (alpha ≠ rank, a rank_pattern, so scales matter)."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as StableDiffusionPipeline
    from peft import LoraConfig

    unet = sd_unet()
    text = clip_text()
    base = base_weights(unet, "unet") | base_weights(text, "text_encoder")
    unet_config = LoraConfig(r=4, lora_alpha=6, target_modules=_unet(full), init_lora_weights=False,
                             rank_pattern={"conv_shortcut": 2}, alpha_pattern={"to_k": 3})
    text_config = LoraConfig(r=2, lora_alpha=8, target_modules=_text(full), init_lora_weights=False)
    add_adapter(unet, unet_config, seed)
    add_adapter(text, text_config, seed + 1)
    folder = root / "sd_diffusers_peft"
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=peft_state_dict(unet), text_encoder_lora_layers=peft_state_dict(text),
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=text_config.to_dict())
    deltas = peft_deltas(unet, "unet") | peft_deltas(text, "text_encoder")
    return Built(folder / "pytorch_lora_weights.safetensors", deltas, base)


def sd_diffusers_scripts(root: Path, seed: int = 3, full: bool = False) -> Built:
    """The keys diffusers' training scripts write (`convert_state_dict_to_diffusers` of PEFT's state
    dict: `….to_q.lora.down.weight` next to `….proj_in.lora_A.weight`), no metadata: scale 1."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig

    unet = sd_unet()
    text = clip_text()
    config = LoraConfig(r=4, lora_alpha=4, target_modules=_unet(full), init_lora_weights=False)
    add_adapter(unet, config, seed)
    add_adapter(text, LoraConfig(r=4, lora_alpha=4, target_modules=_text(full), init_lora_weights=False), seed + 1)
    folder = root / "sd_diffusers_scripts"
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(peft_state_dict(unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(peft_state_dict(text)))
    deltas = peft_deltas(unet, "unet") | peft_deltas(text, "text_encoder")
    return Built(folder / "pytorch_lora_weights.safetensors", deltas)


def sd_kohya_converted(root: Path, seed: int = 5, full: bool = False) -> Built:
    """An SD 1.x kohya file made by diffusers' `convert_state_dict_to_kohya` (`lora_unet_`,
    `lora_te1_`, alpha = rank as an int64 tensor) plus kohya's metadata naming the base model."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig

    unet = sd_unet()
    text = clip_text()
    add_adapter(unet, LoraConfig(r=3, lora_alpha=3, target_modules=_unet(full), init_lora_weights=False), seed)
    add_adapter(text, LoraConfig(r=3, lora_alpha=3, target_modules=_text(full), init_lora_weights=False), seed + 1)
    state = {f"unet.{k}": v for k, v in peft_state_dict(unet).items()}
    state |= {f"text_encoder.{k}": v for k, v in peft_state_dict(text).items()}
    path = _save(root / "sd_kohya_converted.safetensors", convert_state_dict_to_kohya(state),
                 {"ss_base_model_version": "sd_v1", "ss_network_dim": "3", "ss_network_alpha": "3",
                  "sshs_model_hash": "deadbeef", "ss_network_module": "networks.lora",
                  "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.hash_sha256": "0xabc",
                  "modelspec.title": "tiny"})
    deltas = peft_deltas(unet, "unet") | peft_deltas(text, "text_encoder")
    return Built(path, deltas)


# --- kohya layouts diffusers does not write ------------------------------------------------------

# sgm names of the SDXL UNet blocks, typed from the structure `_maybe_map_sgm_blocks_to_diffusers`
# derives (layers_per_block 2): (diffusers prefix, sgm prefix).
SDXL_SGM = [
    ("down_blocks.0.resnets.0", "input_blocks.1.0"), ("down_blocks.0.resnets.1", "input_blocks.2.0"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0", "input_blocks.4.0"), ("down_blocks.1.attentions.0", "input_blocks.4.1"),
    ("down_blocks.1.resnets.1", "input_blocks.5.0"), ("down_blocks.1.attentions.1", "input_blocks.5.1"),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    ("down_blocks.2.resnets.0", "input_blocks.7.0"), ("down_blocks.2.attentions.0", "input_blocks.7.1"),
    ("down_blocks.2.resnets.1", "input_blocks.8.0"), ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    ("mid_block.resnets.0", "middle_block.0"), ("mid_block.attentions.0", "middle_block.1"),
    ("mid_block.resnets.1", "middle_block.2"),
    ("up_blocks.0.resnets.0", "output_blocks.0.0"), ("up_blocks.0.attentions.0", "output_blocks.0.1"),
    ("up_blocks.0.resnets.1", "output_blocks.1.0"), ("up_blocks.0.attentions.1", "output_blocks.1.1"),
    ("up_blocks.0.resnets.2", "output_blocks.2.0"), ("up_blocks.0.attentions.2", "output_blocks.2.1"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.resnets.0", "output_blocks.3.0"), ("up_blocks.1.attentions.0", "output_blocks.3.1"),
    ("up_blocks.1.resnets.1", "output_blocks.4.0"), ("up_blocks.1.attentions.1", "output_blocks.4.1"),
    ("up_blocks.1.resnets.2", "output_blocks.5.0"), ("up_blocks.1.attentions.2", "output_blocks.5.1"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.0", "output_blocks.6.0"), ("up_blocks.2.resnets.1", "output_blocks.7.0"),
    ("up_blocks.2.resnets.2", "output_blocks.8.0"),
    ("conv_in", "input_blocks.0.0"), ("conv_out", "out.2"), ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"), ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
]
RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


def sdxl_sgm_path(path: str) -> str:
    for diffusers, sgm in sorted(SDXL_SGM, key=lambda p: -len(p[0])):
        if path == diffusers:
            return sgm
        if path.startswith(diffusers + "."):
            rest = path[len(diffusers) + 1:]
            return f"{sgm}.{RESNET_SGM.get(rest, rest) if '.resnets.' in diffusers else rest}"
    raise KeyError(path)


def lycoris_keys(state: dict[str, torch.Tensor], prefix: str, alpha: float | None, sgm: bool = False) -> dict:
    """PEFT LoRA/LoHa/LoKr state-dict keys (`path.hada_w1_a`, `path.lora_A.weight`) → kohya/LyCORIS keys."""
    out = {}
    names = set()
    for key, value in state.items():
        for tag, kohya_tag in (("lora_A.weight", "lora_down.weight"), ("lora_B.weight", "lora_up.weight"),
                               ("hada_w1_a", "hada_w1_a"), ("hada_w1_b", "hada_w1_b"), ("hada_w2_a", "hada_w2_a"),
                               ("hada_w2_b", "hada_w2_b"), ("lokr_w1_a", "lokr_w1_a"), ("lokr_w1_b", "lokr_w1_b"),
                               ("lokr_w2_a", "lokr_w2_a"), ("lokr_w2_b", "lokr_w2_b"), ("lokr_w1", "lokr_w1"),
                               ("lokr_w2", "lokr_w2")):
            if key.endswith("." + tag):
                path = key[: -len(tag) - 1]
                if sgm:
                    path = sdxl_sgm_path(path)
                name = f"{prefix}_{path.replace('.', '_')}"
                out[f"{name}.{kohya_tag}"] = value
                names.add(name)
                break
        else:
            raise KeyError(key)
    if alpha is not None:
        for name in names:
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def sdxl_kohya(root: Path, seed: int = 7, full: bool = False) -> Built:
    """An SDXL LoRA/LoCon in kohya's own layout: sgm UNet names, `lora_te1_`/`lora_te2_`, alpha ≠ rank."""
    from peft import LoraConfig

    unet = sdxl_unet()
    te1, te2 = clip_text(1), clip_text(2, projection=True)
    base = base_weights(unet, "unet") | base_weights(te1, "text_encoder") | base_weights(te2, "text_encoder_2")
    rank, alpha = 4, 2.0
    for model, offset, targets in ((unet, 0, UNET_TARGETS if full else SDXL_SUBSET), (te1, 1, _text(full)),
                                   (te2, 2, _text(full))):
        add_adapter(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False),
                    seed + offset)
    tensors = lycoris_keys(peft_state_dict(unet), "lora_unet", alpha, sgm=True)
    tensors |= lycoris_keys(peft_state_dict(te1), "lora_te1", alpha)
    tensors |= lycoris_keys(peft_state_dict(te2), "lora_te2", alpha)
    path = _save(root / "sdxl_kohya.safetensors", tensors,
                 {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4", "ss_network_alpha": "2.0",
                  "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "2.0"})})
    deltas = peft_deltas(unet, "unet") | peft_deltas(te1, "text_encoder") | peft_deltas(te2, "text_encoder_2")
    return Built(path, deltas, base)


def sd_lycoris(root: Path, algo: str, seed: int = 11, full: bool = False) -> Built:
    """A LyCORIS LoHa or LoKr of the SD 1.x UNet (Linear and convolution modules) in kohya keys,
    from PEFT's LoHa/LoKr tuners (scale alpha / r, LyCORIS' alpha / dim)."""
    from peft import LoHaConfig, LoKrConfig

    unet = sd_unet()
    targets = _unet(full)
    if algo == "loha":
        config = LoHaConfig(r=3, alpha=5, target_modules=targets, init_weights=False)
        alpha = 5
    else:
        config = LoKrConfig(r=2, alpha=3, target_modules=targets, init_weights=False, decompose_both=True,
                            decompose_factor=4)
        alpha = 3
    add_adapter(unet, config, seed)
    tensors = lycoris_keys(peft_state_dict(unet), "lora_unet", alpha)
    path = _save(root / f"sd_{algo}.safetensors", tensors,
                 {"ss_base_model_version": "sd_v1", "ss_network_module": "lycoris.kohya",
                  "ss_network_args": json.dumps({"algo": algo, "conv_dim": "3"})})
    return Built(path, peft_deltas(unet, "unet"))


def flux_kohya(root: Path, seed: int = 13, hidden: int = 16, mlp: int = 64, blocks: tuple[int, int] = (2, 2)) -> Path:
    """A Flux LoRA in sd-scripts' layout (`lora_unet_double_blocks_0_img_attn_qkv`, fused single-block
    `linear1`, `final_layer_adaLN_modulation_1`, `lora_te1_`), random factors, alpha ≠ rank.
    diffusers' converter assumes Flux.1's widths (hidden 3072, MLP 12288); pass them to compare."""
    gen = torch.Generator().manual_seed(seed)
    rank = 4
    shapes = {}
    for i in range(blocks[0]):
        for side in ("img", "txt"):
            shapes[f"double_blocks_{i}_{side}_attn_qkv"] = (3 * hidden, hidden)
            shapes[f"double_blocks_{i}_{side}_attn_proj"] = (hidden, hidden)
            shapes[f"double_blocks_{i}_{side}_mlp_0"] = (mlp, hidden)
            shapes[f"double_blocks_{i}_{side}_mlp_2"] = (hidden, mlp)
            shapes[f"double_blocks_{i}_{side}_mod_lin"] = (6 * hidden, hidden)
    for i in range(blocks[1]):
        shapes[f"single_blocks_{i}_linear1"] = (3 * hidden + mlp, hidden)
        shapes[f"single_blocks_{i}_linear2"] = (hidden, hidden + mlp)
        shapes[f"single_blocks_{i}_modulation_lin"] = (3 * hidden, hidden)
    shapes["img_in"] = (hidden, 64 if hidden == 3072 else 4)
    shapes["txt_in"] = (hidden, 16)
    shapes["final_layer_adaLN_modulation_1"] = (2 * hidden, hidden)
    shapes["final_layer_linear"] = (4, hidden)
    tensors = {}
    for body, (m, n) in sorted(shapes.items()):
        name = f"lora_unet_{body}"
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, n, generator=gen)
        tensors[f"{name}.lora_up.weight"] = torch.randn(m, rank, generator=gen)
        if not body.startswith("final_layer"):  # diffusers' converter ignores final-layer alphas ("TODO: alphas")
            tensors[f"{name}.alpha"] = torch.tensor(2.0)
    for layer in range(CLIP["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            name = f"lora_te1_text_model_encoder_layers_{layer}_self_attn_{proj}"
            tensors[f"{name}.lora_down.weight"] = torch.randn(rank, 32, generator=gen)
            tensors[f"{name}.lora_up.weight"] = torch.randn(32, rank, generator=gen)
            tensors[f"{name}.alpha"] = torch.tensor(8.0)
    return _save(root / "flux_kohya.safetensors", tensors, {"ss_base_model_version": "flux1"})


def flux_diffusers_peft(root: Path, seed: int = 17) -> Built:
    """A Flux LoRA by PEFT on the tiny transformer, saved by diffusers' `FluxPipeline.save_lora_weights`."""
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin as FluxPipeline
    from peft import LoraConfig

    model = flux_transformer()
    base = base_weights(model, "transformer")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=FLUX_TARGETS, init_lora_weights=False)
    add_adapter(model, config, seed)
    folder = root / "flux_diffusers"
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=peft_state_dict(model),
                                   transformer_lora_adapter_metadata=config.to_dict())
    return Built(folder / "pytorch_lora_weights.safetensors", peft_deltas(model, "transformer"), base)
