"""LoRA files of image models in the language (SPEC §7.10, issue 18): kohya, diffusers and LyCORIS files and
PEFT component folders read as adapters every operator works on, written back in their own format (or the
one `format=` names), checked against PEFT's own ΔW, float64 dense references written here from the SPEC's
formulas, and diffusers' / PEFT's own loaders; block weights against sd-webui-lora-block-weight's published
map; bad input with positions and exit codes, nothing written.

The tiny models and files come from diffusion_fixtures (PEFT's tuners and diffusers' converters)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusion_fixtures as fx
from clitools import run_main, snapshot
from dipm_lang.io.formats import names, open_lora_file
from dipm_lang.io.sources import open_source
from dipm_lang.ir.blocks import BLOCKID17, BLOCKID26, PRESETS, block_id
from test_run import values

SD1_BLOCKS = {  # canonical module → block, typed from sd-webui-lora-block-weight's map (b403cb73)
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": "BASE",
    "unet.conv_in": "IN00",
    "unet.down_blocks.0.resnets.0.conv1": "IN01",
    "unet.down_blocks.0.attentions.0.proj_in": "IN01",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "IN01",
    "unet.down_blocks.0.downsamplers.0.conv": "IN03",
    "unet.down_blocks.2.resnets.0.conv_shortcut": "IN07",
    "unet.mid_block.resnets.1.conv2": "M00",
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v": "M00",
    "unet.up_blocks.0.resnets.2.conv2": "OUT02",
    "unet.up_blocks.0.upsamplers.0.conv": "OUT02",
    "unet.up_blocks.3.attentions.2.proj_out": "OUT11",
    "unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": "OUT11",
    "unet.conv_out": None,
    "unet.time_embedding.linear_1": None,
}


@pytest.fixture(scope="module")
def files(diffusion_files, tmp_path_factory):
    """The session's image-model LoRAs (conftest.py) by short names, a PEFT-saved UNet folder and a kohya Flux file."""
    root = tmp_path_factory.mktemp("lora_files")
    shared = {"kohya": "sd_kohya_converted", "diffusers": "sd_diffusers_peft", "old": "sd_diffusers_scripts",
              "sdxl": "sdxl_kohya", "loha": "sd_loha", "lokr": "sd_lokr"}
    built = {short: diffusion_files[name] for short, name in shared.items()}
    built["peft"] = peft_unet_folder(root)
    built["flux"] = fx.Built(fx.flux_kohya(root), {})
    return built


def peft_unet_folder(root: Path) -> fx.Built:
    """An SD 1.x UNet LoRA/LoCon as PEFT itself saves it (`get_peft_model(unet).save_pretrained`)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(fx.sd_unet(), LoraConfig(r=3, lora_alpha=5, target_modules=fx.SD_SUBSET,
                                                    init_lora_weights=False, rank_pattern={"conv_in": 2}))
    fx._randomize(model, 23)
    model.save_pretrained(root / "peft_unet")
    return fx.Built(root / "peft_unet", fx.peft_deltas(model.base_model.model, "unet"))


def load_path(built: fx.Built, kind: str) -> Path:
    """What a recipe loads: the file, or the folder for diffusers and PEFT."""
    return built.path.parent if kind == "diffusers" else built.path


def close(ours: torch.Tensor, reference: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    scale = max(float(reference.abs().max()), 1e-30)
    assert float((ours.double() - reference.double()).abs().max()) / scale < rtol, what


def run(tmp_path: Path, script: str, *args: str):
    (tmp_path / "s.dipm").write_text(script)
    return run_main("run", "s.dipm", "-q", *args, cwd=tmp_path)


def deltas(path: Path, **kwargs) -> dict[str, torch.Tensor]:
    """dipm's reading of a LoRA input or output: canonical module → ΔW (float64)."""
    source = open_source(str(path), **kwargs)
    return {name: source.read([name], dtype=torch.float64)[0].dense() for name in source.modules}


# --- reading -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kohya", "diffusers", "old", "sdxl", "loha", "lokr", "peft"])
def test_every_input_format_reads_as_peft_deltas_in_a_program(files, kind):
    built = files[kind]
    extra = ', family="sd1"' if kind == "peft" else ""
    (got,) = values(f'save(load("{load_path(built, kind)}"{extra}), "o.safetensors")', {}).values()
    assert set(got) == set(built.deltas)
    for name, reference in built.deltas.items():
        close(got[name], reference, name)


# --- read → save → read: lossless, in the input's own format ----------------------------------------

ROUNDTRIP = {  # input kind → (output path, the output's format)
    "kohya": ("o.safetensors", "kohya"), "sdxl": ("o.safetensors", "kohya"), "diffusers": ("o", "diffusers"),
    "old": ("o.safetensors", "diffusers"), "loha": ("o.safetensors", "kohya"), "lokr": ("o.safetensors", "kohya"),
    "peft": ("o", "peft"), "flux": ("o.safetensors", "kohya"),
}


@pytest.mark.parametrize("kind", sorted(ROUNDTRIP))
def test_save_of_a_load_is_lossless_in_the_inputs_format(files, tmp_path, kind):
    built = files[kind]
    out, fmt = ROUNDTRIP[kind]
    source = load_path(built, kind)
    extra = ', family="sd1"' if kind == "peft" else ""
    assert run(tmp_path, f'save(load("{source}"{extra}), "{out}")').code == 0
    back = open_source(str(tmp_path / out))
    first = open_source(str(source), **({"family": "sd1"} if kind == "peft" else {}))
    assert (back.format, back.family) == (fmt, first.family)
    assert set(back.modules) == set(first.modules)
    for name in first.modules:  # the same factors (scale folded into B), bit for bit
        a, b = first.read([name])[0], back.read([name])[0]
        assert torch.equal(a.B, b.B) and torch.equal(a.A, b.A), name
    if kind in ("kohya", "sdxl", "diffusers", "flux"):  # the input's own names: sgm, te1/te2, fused qkv, …
        with safe_open(str(first.adapter.path), "pt") as one, safe_open(str(back.adapter.path), "pt") as two:
            written = set(two.keys())
            assert {k for k in one.keys() if not k.endswith(".alpha")} == {k for k in written if not k.endswith(".alpha")}
        if fmt == "kohya":  # an alpha per module (written where the input left it out: alpha = rank there)
            assert {k.rsplit(".", 1)[0] for k in written if k.endswith(".alpha")} == {
                k.rsplit(".", 2)[0] for k in written if k.endswith(".lora_down.weight")}


def test_float16_kohya_copies_keep_their_stored_bits(files, tmp_path):
    """A float16 file with alpha ≠ rank: B·(alpha/rank) is computed in float32; writing it back stores the
    input's scale as the alpha again, so every tensor is the input's own."""
    tensors = {k: (v.half() if not k.endswith(".alpha") else torch.tensor(1.0))
               for k, v in load_file(str(files["kohya"].path)).items()}
    save_file(tensors, str(tmp_path / "half.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    assert run(tmp_path, 'save(load("half.safetensors"), "o.safetensors")').code == 0
    written = load_file(str(tmp_path / "o.safetensors"))
    assert set(written) == set(tensors)
    for key, value in tensors.items():
        assert written[key].dtype == value.dtype and torch.equal(written[key].float(), value.float()), key


def test_conversions_between_kohya_diffusers_and_peft_are_exact(files, tmp_path):
    """kohya → diffusers → PEFT (the UNet) → kohya, and SDXL kohya → diffusers → kohya: the same ΔW."""
    kohya, sdxl = files["kohya"].path, files["sdxl"].path
    assert run(tmp_path, f'save(load("{kohya}"), "d", format="diffusers")\n').code == 0
    assert run(tmp_path, f'save(load("{sdxl}"), "xl.safetensors", format="diffusers")\n').code == 0
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").is_file()
    assert run(tmp_path, 'save(component(load("d"), "unet"), "p", format="peft")\n').code == 0
    assert run(tmp_path, 'save(load("xl.safetensors"), "xl2.safetensors", format="kohya")\n').code == 0
    assert run(tmp_path, 'save(load("p"), "k.safetensors", format="kohya")\n').code == 0
    original, xl = deltas(kohya), deltas(sdxl)
    for out, reference in (("d", original), ("k.safetensors", original), ("xl.safetensors", xl),
                           ("xl2.safetensors", xl)):
        got = deltas(tmp_path / out)
        expected = {k: v for k, v in reference.items() if out != "k.safetensors" or k.startswith("unet.")}
        assert set(got) == set(expected), out
        for name, value in expected.items():
            close(got[name], value, f"{out}: {name}", rtol=1e-12)
    assert open_source(str(tmp_path / "xl2.safetensors")).format == "kohya"


# --- what diffusers and PEFT load ---------------------------------------------------------------------

def _rows(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = W.norm(dim=1, keepdim=True)
    return torch.where(norms > 1e-12, W / norms.clamp_min(1e-300), torch.zeros_like(W)), norms


def shift_reference(d: torch.Tensor, e: torch.Tensor, t: float) -> torch.Tensor:
    """SPEC §3's shift, row by row, in float64."""
    out = torch.empty_like(d)
    for i in range(d.shape[0]):
        u, v = d[i], e[i]
        theta = math.acos(max(-1.0, min(1.0, float(u @ v))))
        if math.sin(theta) < 1e-6 or float(u.norm()) == 0 or float(v.norm()) == 0:
            w = (1 - t) * u + t * v
            out[i] = w / w.norm() if float(w.norm()) > 1e-12 else w
        else:
            out[i] = (math.sin((1 - t) * theta) * u + math.sin(t * theta) * v) / math.sin(theta)
    return out


def transfer_reference(src: torch.Tensor, tgt: torch.Tensor, t: float) -> torch.Tensor:
    d, norms = _rows(src)
    return norms * shift_reference(d, _rows(tgt)[0], t)


def test_merges_and_dipm_recipes_load_in_diffusers_as_the_dense_reference(files, tmp_path):
    """A linear merge (kohya file) and a DiPM transfer (diffusers folder) of an SD 1.x LoRA/LoCon pair,
    loaded by diffusers' own `load_lora_weights` into a tiny pipeline and fused: W0 + the float64 reference
    built from PEFT's own ΔW of the inputs."""
    from test_formats_diffusers import _fused

    K, D = files["kohya"], files["diffusers"]
    script = (f'K = load("{K.path}")\nD = load("{D.path.parent}")\n'
              'save(0.6 * K + 0.4 * D, "linear.safetensors")\n'
              'save(transfer(K, D, t=0.3), "transfer", format="diffusers")\n'
              'save(0.4 * D + 0.6 * K, "first_d")\n')
    assert run(tmp_path, script).code == 0
    assert open_lora_file(tmp_path / "linear.safetensors").format == "kohya"
    assert open_source(str(tmp_path / "first_d")).format == "diffusers"  # the first input the expression reaches
    base = fx.base_weights(fx.sd_unet(), "unet") | fx.base_weights(fx.clip_text(), "text_encoder")
    references = {
        "linear.safetensors": {n: 0.6 * K.deltas[n] + 0.4 * D.deltas[n] for n in K.deltas},
        "transfer/pytorch_lora_weights.safetensors": {n: transfer_reference(K.deltas[n], D.deltas[n], 0.3)
                                                      for n in K.deltas},
    }
    assert {names.module_kernel(n, "sd1") for n in K.deltas} >= {(3, 3), (1, 1), None}  # LoCon 3×3 and 1×1
    for out, reference in references.items():
        fused = _fused(tmp_path / out, "sd1")
        for name, delta in reference.items():
            close(fused[name] - base[name], delta, f"{out}: {name}")


def test_peft_output_loads_in_peft_as_the_dense_reference(files, tmp_path):
    """format="peft": PEFT's own `PeftModel.from_pretrained(unet, folder)` gives each module the reference ΔW
    (a LoCon UNet merged with a PEFT-made UNet adapter; convolutions as PEFT's Conv2d LoRA)."""
    from peft import PeftModel

    K, P = files["kohya"], files["peft"]
    script = f'save(component(0.5 * load("{K.path}") - load("{P.path}", family="sd1"), "unet"), "p", format="peft")\n'
    assert run(tmp_path, script).code == 0
    model = PeftModel.from_pretrained(fx.sd_unet(), str(tmp_path / "p"))
    got = fx.peft_deltas(model.base_model.model, "unet")
    unet = {n for n in K.deltas if n.startswith("unet.")} | set(P.deltas)
    assert set(got) == unet
    for name in unet:
        reference = 0.5 * K.deltas.get(name, 0) - P.deltas.get(name, 0)
        close(got[name], reference, name)


# --- LoHa / LoKr: exact factors, recipes factored ≡ dense ----------------------------------------------

def best_rank(W: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def test_recipes_on_loha_and_lokr_equal_the_dense_reference(files, tmp_path):
    """Recipes on LoHa and LoKr inputs (convolutions included) run on their exact factors; read back,
    every module equals the float64 reference from PEFT's own LoHa/LoKr ΔW. rank= truncates per module
    (kohya's resize_lora with a fixed rank) with `.alpha` = rank, so the scale stays 1."""
    L, R = files["loha"], files["lokr"]
    script = (f'L = load("{L.path}")\nR = load("{R.path}")\n'
              'save(transfer(L, R, t=0.4), "t.safetensors")\n'
              'save(recombine(reverse(dir(R, by="in")), 0.5 * mag(R, by="in")), "u.safetensors")\n'
              'save(L - 0.5 * R, "r.safetensors", rank=where("conv", 2, 3))\n')
    assert run(tmp_path, script).code == 0
    for out, reference in {
        "t.safetensors": {n: transfer_reference(L.deltas[n], R.deltas[n], 0.4) for n in L.deltas},
        "u.safetensors": {n: -0.5 * R.deltas[n] for n in R.deltas},
        "r.safetensors": {n: best_rank(L.deltas[n] - 0.5 * R.deltas[n], 2 if "conv" in n else 3) for n in L.deltas},
    }.items():
        got = deltas(tmp_path / out)
        assert set(got) == set(reference)
        for name, value in reference.items():
            close(got[name], value, f"{out}: {name}")
    written = open_lora_file(tmp_path / "r.safetensors")
    assert {(n, spec.rank) for n, spec in written.modules.items()} == {
        (n, 2 if "conv" in n else 3) for n in L.deltas}
    assert all(spec.alpha == spec.rank for spec in written.modules.values())
    assert "ss_network_dim" not in written.metadata  # ranks vary by module


# --- Flux: fused projections ---------------------------------------------------------------------------

def test_flux_keeps_kohyas_fused_projections(files, tmp_path):
    """kohya's Flux files fuse q, k, v (and the single blocks' MLP input) in one module; outputs keep that
    fusing — one shared A when the parts share it, block-diagonal factors when a recipe made them
    differ — while diffusers' layout gets the parts."""
    F = files["flux"].path
    G = fx.flux_kohya(tmp_path, seed=31)
    G = G.rename(tmp_path / "g.safetensors")
    script = (f'F = load("{F}")\nG = load("{G}")\n'
              'save(transfer(F, G, t=0.5), "t.safetensors")\n'
              'save(0.5 * F, "d", format="diffusers")\n'
              'save(F + G, "r.safetensors", rank=2)\n')
    assert run(tmp_path, script).code == 0
    f, g = deltas(F), deltas(G)
    with safe_open(str(F), "pt") as handle:
        fused_keys = set(handle.keys())
    transferred = open_lora_file(tmp_path / "t.safetensors")
    with safe_open(str(transferred.path), "pt") as handle:
        assert set(handle.keys()) - fused_keys == {"lora_unet_final_layer_linear.alpha",
                                                   "lora_unet_final_layer_adaLN_modulation_1.alpha"}  # alpha = rank
        assert fused_keys <= set(handle.keys())
        qkv = handle.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight")
    assert qkv.shape[0] == 4 + 4  # transfer keeps each part's A ([A_F; A_G]): still one shared A
    for name, value in deltas(tmp_path / "t.safetensors").items():
        close(value, transfer_reference(f[name], g[name], 0.5), name)
    with safe_open(str(tmp_path / "r.safetensors"), "pt") as handle:
        qkv = handle.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight")
        up = handle.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
    assert qkv.shape[0] == 3 * 2  # rank=2 truncates each part on its own: A differs, block-diagonal B
    width = up.shape[0] // 3
    assert all(not up[i * width:(i + 1) * width, j * 2:(j + 1) * 2].any() for i in range(3) for j in range(3) if i != j)
    for name, value in deltas(tmp_path / "r.safetensors").items():
        close(value, best_rank(f[name] + g[name], 2), name)
    with safe_open(str(tmp_path / "d" / "pytorch_lora_weights.safetensors"), "pt") as handle:
        split = set(handle.keys())
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in split
    assert not any("qkv" in key for key in split)
    for name, value in deltas(tmp_path / "d").items():
        close(value, 0.5 * f[name], name, rtol=1e-12)


# --- block weights and components ----------------------------------------------------------------------

def by_name(script: str) -> dict[str, dict[str, torch.Tensor]]:
    """The program's results (nothing written) by the file name of each save."""
    return {Path(path).name: modules for path, modules in values(script, {}).items()}


def _schedule(text: str):
    from dipm_lang.frontend.lower import Lowerer
    from dipm_lang.frontend.parser import parse_expression
    from dipm_lang.ir.numbers import const_eval

    lowerer = Lowerer()
    return const_eval(lowerer.expr(parse_expression(text, "<n>"), lowerer.module("<n>", text)))


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if len(PRESETS[p]) == 17))
def test_lbw_presets_follow_the_published_block_map(preset):
    from dipm_lang.ir.schedules import value_at

    schedule = _schedule(f'lbw("{preset}")')
    for module, block in SD1_BLOCKS.items():
        if block is None:
            want = 1.0  # outside every block: LBW leaves it alone
        elif block in BLOCKID17:
            want = PRESETS[preset][BLOCKID17.index(block)]
        else:
            want = 0.0  # a LoCon block the 17-value form does not name (LBW's to26)
        assert value_at(schedule, module, 1) == want, (preset, module)
    full = _schedule("lbw([" + ", ".join(str(i) for i in range(26)) + "])")
    for module, block in SD1_BLOCKS.items():
        assert value_at(full, module, 1) == (1.0 if block is None else float(BLOCKID26.index(block))), module


def test_block_map_equals_the_sgm_numbering_for_every_unet_module():
    """The block of every UNet module equals the one its original (sgm) name gives, `input_blocks.N` →
    INnn, `middle_block` → M00, `output_blocks.N` → OUTnn — derived here from diffusers' sgm tables."""
    checked = 0
    for family in ("sd1", "sd2", "sdxl"):
        for sgm, diffusers_path in names._SGM_TABLES[family].items():
            found = re.match(r"(input_blocks|middle_block|output_blocks)\.?(\d+)?", sgm)
            want = {"input_blocks": "IN", "output_blocks": "OUT"}.get(found[1], "M") + (
                f"{int(found[2]):02}" if found[1] != "middle_block" else "00")
            module = f"unet.{diffusers_path}" + ("" if diffusers_path.endswith(".conv") else ".conv1")
            assert block_id(module) == want, (family, sgm, diffusers_path)
            checked += 1
    assert checked > 60


def test_block_weights_and_component_strengths_in_a_recipe(files, tmp_path):
    """lbw(…) and strengths(…) stand wherever a number does: each module's ΔW is its number times the
    input's; component(…) keeps one part; SDXL takes its 12-value form."""
    K, X = files["kohya"], files["sdxl"]
    xl = [0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    got = by_name(f'K = load("{K.path}")\n'
                  'save(lbw("MIDD") * K, "a.safetensors")\n'
                  'save(strengths(model=0.75, clip=0.25) * K, "b.safetensors")\n'
                  'save(component(K, "clip"), "c.safetensors")\n')
    got |= by_name(f'X = load("{X.path}")\n'
                   f'save(lbw({xl}) * X, "d.safetensors")\n'
                   'save(component(X, "text_encoder_2"), "e.safetensors")\n')
    for name, delta in K.deltas.items():
        block = block_id(name)
        midd = 1.0 if block is None else PRESETS["MIDD"][BLOCKID17.index(block)] if block in BLOCKID17 else 0.0
        close(got["a.safetensors"][name], midd * delta, name)
        clip = name.startswith("text_encoder")
        close(got["b.safetensors"][name], (0.25 if clip else 0.75) * delta, name)
        close(got["c.safetensors"][name], delta if clip else 0 * delta, name)
    xl_blocks = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")
    for name, delta in X.deltas.items():
        block = block_id(name)
        weight = 1.0 if block is None else xl[xl_blocks.index(block)] if block in xl_blocks else 0.0
        close(got["d.safetensors"][name], weight * delta, name)
        close(got["e.safetensors"][name], delta if name.startswith("text_encoder_2.") else 0 * delta, name)


# --- metadata ------------------------------------------------------------------------------------------

def test_metadata_keeps_what_holds_and_records_the_recipe_privately(files, tmp_path):
    K = files["kohya"].path
    assert run(tmp_path, f'K = load("{K}")\nsave(0.5 * K, "o.safetensors", rank=2)\n').code == 0
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.title"] == "tiny"
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "2"
    assert not any(key.startswith("sshs_") for key in meta) and "modelspec.hash_sha256" not in meta
    assert str(tmp_path) not in json.dumps(meta) and str(K.parent) not in json.dumps(meta)
    assert "0.5 * K" in meta["dipm_recipe"]
    (entry,) = json.loads(meta["dipm_inputs"]).values()
    assert entry == {"source": K.name, "sha256": hashlib.sha256(K.read_bytes()).hexdigest()}


# --- bad input -----------------------------------------------------------------------------------------

def _bad(tmp_path: Path, files) -> dict[str, Path]:
    ckpt = tmp_path / "ckpt.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(4)}, str(ckpt))
    mixed = tmp_path / "mixed.safetensors"
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{q}.lora_down.weight": torch.ones(2, 8), f"{q}.lora_up.weight": torch.ones(8, 2),
               "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(2, 8),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.ones(8, 2)}, str(mixed))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.bar.weight_a": torch.ones(2, 2)}, str(unknown))
    from adapters import make_peft_adapter

    return {"ckpt": ckpt, "mixed": mixed, "unknown": unknown, "llm": make_peft_adapter(tmp_path / "llm", seed=1),
            "sd1": files["kohya"].path, "sdxl": files["sdxl"].path}


BAD = {  # name → (script, exit code, message, line:col of the caret or None)
    "checkpoint": ('save(load("ckpt.safetensors"), "o.safetensors")', 1, "looks like a full model checkpoint", "1:6"),
    "mixed layouts": ('save(load("mixed.safetensors"), "o.safetensors")', 1, "mixes key layouts", "1:6"),
    "unknown keys": ('save(load("unknown.safetensors"), "o.safetensors")', 1, "has no LoRA keys dipm knows", "1:6"),
    "two families": ('a = load("SD1")\nb = load("SDXL")\nsave(a + b, "o.safetensors")', 1,
                     "is a SDXL LoRA, but sd_kohya_converted.safetensors is a Stable Diffusion 1.x LoRA", "2:5"),
    "language model": ('a = load("SD1")\nb = load("llm")\nsave(a + b, "o.safetensors")', 1,
                       "is not a LoRA of an image model", "2:5"),
    "wrong family": ('save(load("SD1", family="sdxl"), "o.safetensors")', 1, "does not fit SDXL", "1:6"),
    "lbw length": ('save(lbw([1, 0, 1]) * load("SD1"), "o.safetensors")', 2, "has 12 or 17 or 20 or 26 or 61 values, got 3",
                   "1:10"),
    "lbw family": ('a = load("SD1")\nsave(lbw("FLUXALL") * a, "o.safetensors")', 1,
                   "for Stable Diffusion 1.x has 12 or 17 or 20 or 26 values, got 61", "2:6"),
    "lbw preset": ('save(lbw("INSIDE") * load("SD1"), "o.safetensors")', 2, "unknown block-weight preset", "1:10"),
    "lbw on a language model": ('save(lbw("ALL") * load("llm"), "o")', 1, "block weights apply to LoRAs of image models",
                                "1:6"),
    "kohya is a file": ('save(load("SD1"), "o")', 1, "a kohya LoRA is one file", "1:1"),
    "peft is a folder": ('save(load("SD1"), "o.safetensors", format="peft")', 1, "a PEFT adapter is a folder", "1:1"),
    "format of a language model": ('save(load("llm"), "o.safetensors", format="kohya")', 1,
                                   "writes LoRA files of image models", "1:1"),
    "peft of two components": ('save(load("SD1"), "o", format="peft")', 1, "holds one model's modules", "1:1"),
    "vllm target": ('save(load("SD1"), "o.safetensors", target="vllm")', 1, "serves language-model adapters", "1:1"),
    "vllm target and format": ('save(load("SD1"), "o.safetensors", target="vllm", format="kohya")', 2,
                               "writes a PEFT adapter folder, not a kohya file", "1:COL"),
    "peft of a text encoder": ('save(component(load("SD1"), "clip"), "o", format="peft")', 1,
                               "writes UNet or transformer adapters", "1:1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_positioned_and_writes_nothing(files, tmp_path, case):
    paths = _bad(tmp_path, files)
    script, code, message, where = BAD[case]
    script = script.replace('"SD1"', f'"{paths["sd1"]}"').replace('"SDXL"', f'"{paths["sdxl"]}"')
    (tmp_path / "s.dipm").write_text(script + "\n")
    before = snapshot(tmp_path)
    result = run_main("run", "s.dipm", cwd=tmp_path)
    assert (result.code, message in result.err) == (code, True), result.err
    if where.endswith(":COL"):  # at an argument after the (long) input path: its column varies
        where = where[:-4] + f":{script.index(chr(34) + 'kohya') + 1}"
    assert result.err.startswith(f"s.dipm:{where}: error: "), result.err
    assert "Traceback" not in result.err and "^" in result.err
    assert snapshot(tmp_path) == before  # nothing written, every input as it was


def test_an_existing_output_file_needs_force(files, tmp_path):
    script = f'save(0.5 * load("{files["kohya"].path}"), "o.safetensors")'
    assert run(tmp_path, script).code == 0
    first = (tmp_path / "o.safetensors").read_bytes()
    refused = run(tmp_path, script.replace("0.5", "0.25"))
    assert refused.code == 1 and "already exists (use --force" in refused.err
    assert (tmp_path / "o.safetensors").read_bytes() == first
    assert run(tmp_path, script.replace("0.5", "0.25"), "--force").code == 0
    assert (tmp_path / "o.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors", "s.dipm"]  # no staging left behind


# --- configs, the Python API, energy ranks, what the CLI shows ----------------------------------------

def energy_reference(W: torch.Tensor, energy: float) -> tuple[int, torch.Tensor]:
    """SPEC §7.6 from a float64 SVD: the smallest rank whose singular values keep `energy` of ‖W‖², and W cut to it."""
    s = torch.linalg.svdvals(W)
    total, kept = float((s ** 2).sum()), 0.0
    for k, value in enumerate(s.tolist(), start=1):
        kept += value ** 2
        if kept >= energy * total * (1 - 1e-12):
            return k, best_rank(W, k)
    return len(s), W


def test_a_config_with_block_weights_and_energy_ranks(files, tmp_path):
    """A YAML recipe over a kohya file: `lbw` in the expression, `energy:` per output — each module keeps the
    smallest rank holding 90 % of its energy (kohya's resize_lora --dynamic_method), the run prints the
    block-weight vector per block, and the summary the ranks."""
    K = files["kohya"]
    (tmp_path / "r.yaml").write_text(f"inputs:\n  K: {K.path}\noutputs:\n  o.safetensors:\n"
                                     "    expr: lbw(\"OUTALL\") * K\n    energy: 0.9\n"
                                     "  d:\n    expr: K\n    format: diffusers\n")
    result = run_main("run", "r.yaml", cwd=tmp_path)
    assert result.code == 0, result.err
    assert open_source(str(tmp_path / "d")).format == "diffusers"  # `format:` as save's format=
    (tmp_path / "bad.yaml").write_text(f"inputs:\n  K: {K.path}\noutputs:\n  e:\n    expr: K\n    format: koyha\n")
    bad = run_main("run", "bad.yaml", cwd=tmp_path)
    assert bad.code == 2 and bad.err.startswith("bad.yaml:6:5: error: ") and "kohya" in bad.err, bad.err
    assert not (tmp_path / "e").exists()
    assert 'schedule lbw("OUTALL"), per block:' in result.out
    assert re.search(r"^\s+OUT11\s+1$", result.out, re.M) and re.search(r"^\s+IN01\s+0$", result.out, re.M)
    written = open_lora_file(tmp_path / "o.safetensors")
    got = deltas(tmp_path / "o.safetensors")
    expected = {}
    for name, delta in K.deltas.items():
        block = block_id(name)
        weight = 1.0 if block is None else PRESETS["OUTALL"][BLOCKID17.index(block)] if block in BLOCKID17 else 0.0
        if weight:
            expected[name] = energy_reference(weight * delta, 0.9)
    assert set(got) == set(expected)  # the modules weighted 0 are left out
    for name, (rank, value) in expected.items():
        assert written.modules[name].rank == rank, name
        close(got[name], value, name)


def test_the_python_api_writes_image_model_values_in_their_format(files, tmp_path):
    import dipm_lang
    from dipm_lang.errors import DipmError

    K, D = files["kohya"], files["diffusers"]
    value = dipm_lang.evaluate("0.5 * K + strengths(model=1, clip=0) * D", K=str(K.path), D=str(D.path.parent))
    value.save(tmp_path / "o.safetensors")
    value.save(tmp_path / "d", format="diffusers")
    assert open_source(str(tmp_path / "o.safetensors")).format == "kohya"  # the first input's format
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").is_file()
    for out in ("o.safetensors", "d"):
        got = deltas(tmp_path / out)
        for name in K.deltas:
            reference = 0.5 * K.deltas[name] + (0 if name.startswith("text_encoder") else D.deltas[name])
            close(got[name], reference, f"{out}: {name}")
    with pytest.raises(DipmError, match="serves language-model adapters"):
        value.save(tmp_path / "v", target="vllm")
    with pytest.raises(DipmError, match="a kohya LoRA is one file"):
        value.save(tmp_path / "k", format="kohya")
    assert not (tmp_path / "v").exists() and not (tmp_path / "k").exists()


def test_inspect_reads_a_lora_file_under_canonical_names(files, tmp_path):
    result = run_main("inspect", str(files["sdxl"].path), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "kohya LoRA of SDXL" in result.out.splitlines()[1], result.out  # the header says what was detected
    for name in files["sdxl"].deltas:
        assert name in result.out
    result = run_main("inspect", str(files["loha"].path), "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    adapter = json.loads(result.out)["adapters"][0]
    assert (adapter["format"], adapter["family"]) == ("loha", "sd1"), adapter


def test_the_repl_loads_and_saves_lora_files(files, tmp_path, monkeypatch):
    import io

    from dipm_lang.repl.session import Session

    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    session = Session(out=out, err=err)
    for line in (f'K = load("{files["lokr"].path}")', 'save(lbw("OUTS") * K, "r.safetensors")'):
        session.handle(line)
    assert err.getvalue() == "" and "wrote 1 adapter" in out.getvalue()
    got = deltas(tmp_path / "r.safetensors")
    for name, delta in files["lokr"].deltas.items():
        block = block_id(name)
        weight = 1.0 if block is None else PRESETS["OUTS"][BLOCKID17.index(block)] if block in BLOCKID17 else 0.0
        if weight:
            close(got[name], weight * delta, name)
        else:
            assert name not in got, name


def lycoris_delta(tensors: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    """ΔW of one module of a LoHa/LoKr file from LyCORIS' formulas (`functional/loha.py`, `lokr.py::make_kron`),
    flattened to out × in·kh·kw, in float64: scale alpha / dim, dim = hada_w1_b's rows / lokr_w2_a's columns."""
    t = {key[len(module) + 1:]: value.double() for key, value in tensors.items() if key.startswith(module + ".")}
    if "hada_w1_a" in t:
        W = (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
        dim = t["hada_w1_b"].shape[0]
    else:
        W = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1))
        dim = t["lokr_w2_a"].shape[1]
    return float(t["alpha"]) / dim * W


@pytest.mark.parametrize("fmt", ["loha", "lokr"])
def test_lycoris_outputs_hold_the_result_exactly(files, tmp_path, fmt):
    """format="loha" / "lokr": a DiPM recipe over a LoCon and a LoHa input written as LyCORIS; each module,
    computed from the file with LyCORIS' own formulas (and read back by dipm), is the float64 reference."""
    K, L = files["kohya"], files["loha"]
    script = f'save(transfer(load("{K.path}"), load("{L.path}"), t=0.6), "o.safetensors", format="{fmt}")\n'
    assert run(tmp_path, script).code == 0
    tensors = load_file(str(tmp_path / "o.safetensors"))
    written = open_lora_file(tmp_path / "o.safetensors")
    assert written.format == fmt
    with safe_open(str(tmp_path / "o.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["ss_network_args"]) == {"algo": fmt} and meta["ss_network_module"] == "lycoris.kohya"
    got = deltas(tmp_path / "o.safetensors")
    assert set(L.deltas) <= set(K.deltas) and {names.module_kernel(n, "sd1") for n in L.deltas} >= {(3, 3), None}
    for name, delta in L.deltas.items():  # the UNet modules both have (the LoHa file has no text encoder)
        reference = transfer_reference(K.deltas[name], delta, 0.6)
        close(lycoris_delta(tensors, written.modules[name].key), reference, name)
        close(got[name], reference, name)
