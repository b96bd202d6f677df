"""Files made by PEFT and diffusers read as PEFT's own ΔW; files dipm writes load in diffusers' own
loader and fuse to W0 + ΔW. Tiny randomly initialised models, built once per module (no hub)."""

from __future__ import annotations

import pytest
import torch

import diffusion_fixtures as fx
from dipm_lang.io.formats import block_of, names, open_lora_file, write_lora_file
from dipm_lang.io.formats.kohya import flux_fused_group, module_name, to_parts


@pytest.fixture(scope="module")
def built(diffusion_files):
    return diffusion_files  # conftest.py: built once per session, shared with test_lora_files.py


EXPECTED = {
    "sd_diffusers_peft": ("diffusers", "sd1"), "sd_diffusers_scripts": ("diffusers", "sd1"),
    "sd_kohya_converted": ("kohya", "sd1"), "sdxl_kohya": ("kohya", "sdxl"), "sd_loha": ("loha", "sd1"),
    "sd_lokr": ("lokr", "sd1"), "flux_diffusers": ("diffusers", "flux"),
}


def _close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    # PEFT's get_delta_weight runs in float32; our float64 product of the stored float32 factors
    # differs by float32 rounding only.
    scale = reference.abs().max().clamp_min(1e-30)
    assert ((ours - reference).abs().max() / scale).item() < 1e-5, what


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_files_read_as_peft_deltas(built, kind):
    fixture = built[kind]
    adapter = open_lora_file(fixture.path)
    assert (adapter.format, adapter.family) == EXPECTED[kind]
    assert set(adapter.modules) == set(fixture.deltas)
    values = adapter.read_modules(dtype=torch.float64)
    for name, delta in fixture.deltas.items():
        assert (adapter.modules[name].m, adapter.modules[name].n) == tuple(delta.shape), name
        _close(values[name].dense(), delta, name)
    kinds = {spec.kind for spec in adapter.modules.values()}
    if kind.startswith("sd_lo"):
        assert kinds == {kind.removeprefix("sd_")}
    elif kind != "flux_diffusers":
        assert {"linear", "conv"} <= kinds


_PROBES: dict[int, torch.Tensor] = {}


def _probe_close(value, B: torch.Tensor, A: torch.Tensor, what: str) -> None:
    """B_ours(A_ours X) against B(A X) for a random X: Flux.1-sized modules without m×n products."""
    n = A.shape[1]
    if n not in _PROBES:
        _PROBES[n] = torch.randn(n, 6, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    probe = _PROBES[n]
    _close(value.B @ (value.A @ probe), B @ (A @ probe), what)


def _diffusers_flux_reading(path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers' `_convert_kohya_flux_lora_to_diffusers` (scale baked into its factors) by canonical name."""
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    theirs = FluxLoraLoaderMixin.lora_state_dict(str(path))
    out = {}
    for key in theirs:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            name = module if module.startswith("transformer.") else f"transformer.{module}"
            out[name] = (theirs[module + ".lora_B.weight"].double(), theirs[key].double())
        elif key.startswith("text_encoder.") and key.endswith(".down.weight"):  # kept in diffusers' old spelling
            module = key.removesuffix(".down.weight").removesuffix(".lora_linear_layer")
            for old, new in (("to_q_lora", "q_proj"), ("to_k_lora", "k_proj"), ("to_v_lora", "v_proj"),
                             ("to_out_lora", "out_proj")):
                module = module.removesuffix(old) + new if module.endswith(old) else module
            out[module] = (theirs[key.replace(".down.", ".up.")].double(), theirs[key].double())
    return out


def test_kohya_flux_reads_and_writes_as_diffusers_converts_it(tmp_path):
    """diffusers' converter is the reference for the fused qkv / linear1 splits, the final-layer swap
    and the text encoder; it assumes Flux.1's widths, so the file has them (rank 4, one block of each kind)."""
    path = fx.flux_kohya(tmp_path, hidden=3072, mlp=12288, blocks=(1, 1))
    adapter = open_lora_file(path)
    values = adapter.read_modules(dtype=torch.float64)
    reference = _diffusers_flux_reading(path)
    assert {k for k in values if k.startswith("transformer.")} == {k for k in reference if k.startswith("transformer.")}
    for name, (B, A) in reference.items():
        _probe_close(values[name], B, A, name)
    # what dipm writes back, with the fusing kept (one shared A) and with parts of different factors
    # (block-diagonal), reads the same in diffusers
    q = "transformer.single_transformer_blocks.0.attn.to_q"
    changed = dict(values)
    changed[q] = type(values[q])(values[q].B[:, :2] * 3, values[q].A[:2] - 1)
    for modules in (values, changed):
        out = write_lora_file(tmp_path / "o.safetensors", modules, format="kohya", family="flux", template=adapter,
                              dtype=torch.float32)
        for name, (B, A) in _diffusers_flux_reading(out).items():
            _probe_close(modules[name].to(torch.float64), B, A, name)


# --- diffusers' loader on what dipm writes ---------------------------------------------------------

def _holder(mixin, **parts):
    """A stand-in pipeline: diffusers' LoRA loader mixin over the given components."""

    class Holder(mixin):
        hf_device_map = None

        def __init__(self):
            self.__dict__.update(parts)

        @property
        def components(self):
            return dict(parts)

    return Holder()


def _fused(path, family):
    from diffusers.loaders.lora_pipeline import (FluxLoraLoaderMixin, StableDiffusionLoraLoaderMixin,
                                                 StableDiffusionXLLoraLoaderMixin)

    if family == "sd1":
        unet, text = fx.sd_unet(), fx.clip_text()
        holder = _holder(StableDiffusionLoraLoaderMixin, unet=unet, text_encoder=text)
        models = {"unet": unet, "text_encoder": text}
    elif family == "sdxl":
        unet, te1, te2 = fx.sdxl_unet(), fx.clip_text(1), fx.clip_text(2, projection=True)
        holder = _holder(StableDiffusionXLLoraLoaderMixin, unet=unet, text_encoder=te1, text_encoder_2=te2)
        models = {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}
    else:
        transformer = fx.flux_transformer()
        holder = _holder(FluxLoraLoaderMixin, transformer=transformer, text_encoder=fx.clip_text())
        models = {"transformer": transformer}
    holder.load_lora_weights(str(path))
    holder.fuse_lora()
    weights = {}
    for component, model in models.items():
        weights |= fx.base_weights(model, component)
    return weights


def _check_fused(path, family, fixture, base):
    fused = _fused(path, family)
    for name, delta in fixture.deltas.items():
        _close(fused[name] - base[name], delta, name)
    untouched = [n for n in base if n not in fixture.deltas and n in fused]
    assert untouched and all(torch.equal(fused[n], base[n]) for n in untouched)


@pytest.mark.parametrize("kind, family, fmt", [
    ("sdxl_kohya", "sdxl", "kohya"), ("sd_loha", "sd1", "kohya"), ("flux_diffusers", "flux", "diffusers"),
    pytest.param("sd_diffusers_peft", "sd1", "kohya", marks=pytest.mark.slow),
    pytest.param("sd_diffusers_peft", "sd1", "diffusers", marks=pytest.mark.slow),
    pytest.param("sdxl_kohya", "sdxl", "diffusers", marks=pytest.mark.slow),
    pytest.param("sd_lokr", "sd1", "kohya", marks=pytest.mark.slow),
])
def test_written_files_load_in_diffusers_and_fuse_to_w0_plus_delta(built, tmp_path, kind, family, fmt):
    fixture = built[kind]
    source = open_lora_file(fixture.path)
    folder = tmp_path / "out"
    folder.mkdir()
    out = write_lora_file(folder / "pytorch_lora_weights.safetensors", source.read_modules(), format=fmt,
                          family=family, template=source, metadata_extra={"dipm.recipe": "x"})
    base = fx.base_weights({"sd1": fx.sd_unet, "sdxl": fx.sdxl_unet, "flux": fx.flux_transformer}[family](),
                           "transformer" if family == "flux" else "unet")
    if family == "sd1":
        base |= fx.base_weights(fx.clip_text(), "text_encoder")
    if family == "sdxl":
        base |= fx.base_weights(fx.clip_text(1), "text_encoder") | fx.base_weights(fx.clip_text(2, projection=True),
                                                                                  "text_encoder_2")
    _check_fused(out, family, fixture, base)
    if kind == "sdxl_kohya" and fmt == "kohya":  # kohya's own SDXL spelling: sgm UNet names
        assert any(spec.key.startswith("lora_unet_input_blocks_") for spec in open_lora_file(out).modules.values())


# --- the module trees of the models ----------------------------------------------------------------

def _module_tree(model, component):
    tree = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            if component.startswith("text_encoder") and name.startswith("encoder.layers."):
                name = "text_model." + name
            tree[f"{component}.{name}"] = tuple(module.kernel_size) if isinstance(module, torch.nn.Conv2d) else None
    return tree


def _check_tree(tree, family):
    for name, kernel in tree.items():
        assert names.fits(name, family), name
        assert names.module_kernel(name, family) == kernel, name
        group = flux_fused_group(name) if family == "flux" and name.startswith("transformer.") else None
        if group is None:
            assert [p.name for p in to_parts(module_name(name, family), family, 8, 8)] == [name]
        if names.component_of(name) in ("unet", "text_encoder", "text_encoder_2") and family != "flux":
            block = block_of(name, family)
            assert block is not None or name.split(".", 1)[1] in (
                "conv_out", "time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_1",
                "add_embedding.linear_2"), name


def test_tiny_module_trees_fit_their_families():
    import transformers

    _check_tree(_module_tree(fx.sd_unet(), "unet") | _module_tree(fx.clip_text(), "text_encoder"), "sd1")
    _check_tree(_module_tree(fx.sdxl_unet(), "unet") | _module_tree(fx.clip_text(2, projection=True), "text_encoder_2"),
                "sdxl")
    t5 = transformers.T5EncoderModel(transformers.T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                                                           vocab_size=50, feed_forward_proj="gated-gelu"))
    tree = _module_tree(fx.flux_transformer(), "transformer") | _module_tree(t5, "text_encoder_2")
    _check_tree(tree, "flux")


@pytest.mark.slow
@pytest.mark.parametrize("family, config", [
    ("sd1", dict(cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280))),
    ("sd2", dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 block_out_channels=(320, 640, 1280, 1280))),
    ("sdxl", dict(cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                  block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)),
])
def test_full_size_unet_trees_fit(family, config):
    """The real block structures (on the meta device: names only, no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    _check_tree(_module_tree(unet, "unet"), family)


@pytest.mark.slow
def test_full_size_flux_tree_fits_and_has_the_lbw_blocks():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        flux = FluxTransformer2DModel(guidance_embeds=True)
    tree = _module_tree(flux, "transformer")
    _check_tree(tree, "flux")
    assert {block_of(name, "flux") for name in tree} == {"IN", "OUT"} | {f"D{i:02}" for i in range(19)} | {
        f"S{i:02}" for i in range(38)}


@pytest.mark.slow
@pytest.mark.parametrize("builder, family", [
    (fx.sd_diffusers_peft, "sd1"), (fx.sdxl_kohya, "sdxl"),
    (lambda root, full: fx.sd_lycoris(root, "loha", full=full), "sd1"),
    (lambda root, full: fx.sd_lycoris(root, "lokr", full=full), "sd1"),
])
def test_every_layer_adapted_reads_writes_and_loads(tmp_path, builder, family):
    fixture = builder(tmp_path, full=True)
    source = open_lora_file(fixture.path)
    values = source.read_modules(dtype=torch.float64)
    for name, delta in fixture.deltas.items():
        _close(values[name].dense(), delta, name)
    out = write_lora_file(tmp_path / "o.safetensors", source.read_modules(), format="kohya", family=family,
                          template=source)
    base_fixture = {"sd1": (fx.sd_unet, fx.clip_text), "sdxl": (fx.sdxl_unet, None)}[family]
    base = fx.base_weights(base_fixture[0](), "unet")
    if family == "sd1":
        base |= fx.base_weights(fx.clip_text(), "text_encoder")
    else:
        base |= fx.base_weights(fx.clip_text(1), "text_encoder") | fx.base_weights(fx.clip_text(2, projection=True),
                                                                                  "text_encoder_2")
    _check_fused(out, family, fixture, base)
