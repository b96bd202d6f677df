"""Exact factors of LoRA, LoCon, LoHa and LoKr modules against dense float64 references written here
from SPEC §7.10 and LyCORIS' own formulas (`lycoris/functional/loha.py`, `lokr.py::make_kron`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dipm_lang.io.formats import open_lora_file

U = "lora_unet_"
SD1 = {"ss_base_model_version": "sd_v1"}


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _save(path, tensors, metadata=SD1):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _delta(adapter, name):
    lr = adapter.read([name], dtype=torch.float64)
    return lr.B[0] @ lr.A[0]


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """Linear and convolution LoRAs with the alpha cases kohya distinguishes."""
    path = tmp_path_factory.mktemp("f") / "lora.safetensors"
    t = {}
    q = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t |= {q + ".lora_down.weight": _rand(4, 32, seed=1), q + ".lora_up.weight": _rand(32, 4, seed=2),
          q + ".alpha": torch.tensor(2.0)}
    c = U + "down_blocks_0_resnets_0_conv1"  # 3×3 LoCon
    t |= {c + ".lora_down.weight": _rand(3, 32, 3, 3, seed=3), c + ".lora_up.weight": _rand(32, 3, 1, 1, seed=4),
          c + ".alpha": torch.tensor(6.0)}
    p = U + "down_blocks_0_attentions_0_proj_in"  # 1×1 conv, no alpha → alpha = rank
    t[p + ".lora_down.weight"], t[p + ".lora_up.weight"] = _rand(5, 32, 1, 1, seed=5), _rand(32, 5, 1, 1, seed=6)
    z = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"  # alpha 0 reads as rank (kohya)
    t |= {z + ".lora_down.weight": _rand(2, 32, seed=7), z + ".lora_up.weight": _rand(32, 2, seed=8),
          z + ".alpha": torch.tensor(0.0)}
    return _save(path, t), t


def test_lora_and_locon_are_up_times_down_with_alpha_over_rank(lora_file):
    path, t = lora_file
    adapter = open_lora_file(path)
    assert (adapter.format, adapter.family) == ("kohya", "sd1")
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    spec = adapter.modules[q]
    assert (spec.m, spec.n, spec.rank, spec.kind, spec.kernel, spec.scale) == (32, 32, 4, "linear", None, 0.5)
    key = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.testing.assert_close(_delta(adapter, q), 2.0 / 4 * t[key + ".lora_up.weight"] @ t[key + ".lora_down.weight"],
                               rtol=1e-12, atol=0)
    conv = "unet.down_blocks.0.resnets.0.conv1"
    spec = adapter.modules[conv]
    assert (spec.m, spec.n, spec.rank, spec.kind, spec.kernel, spec.scale) == (32, 32 * 9, 3, "conv", (3, 3), 2.0)
    key = U + "down_blocks_0_resnets_0_conv1"
    reference = 6.0 / 3 * t[key + ".lora_up.weight"][:, :, 0, 0] @ t[key + ".lora_down.weight"].reshape(3, -1)
    torch.testing.assert_close(_delta(adapter, conv), reference, rtol=1e-12, atol=0)
    assert adapter.modules["unet.down_blocks.0.attentions.0.proj_in"].scale == 1.0  # no alpha
    assert adapter.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"].scale == 1.0  # alpha 0


def test_locon_matrix_is_the_convolution_update(lora_file):
    """The matrix B[:, :, 0, 0]·A.reshape(r, in·kh·kw), reshaped to [out, in, kh, kw], convolves like
    the LoCon's two convolutions (down with the kernel, then up 1×1)."""
    path, t = lora_file
    adapter = open_lora_file(path)
    key = U + "down_blocks_0_resnets_0_conv1"
    x = _rand(2, 32, 7, 7, seed=9)
    two_step = F.conv2d(F.conv2d(x, t[key + ".lora_down.weight"], padding=1), t[key + ".lora_up.weight"]) * 2.0
    as_matrix = _delta(adapter, "unet.down_blocks.0.resnets.0.conv1").reshape(32, 32, 3, 3)
    torch.testing.assert_close(F.conv2d(x, as_matrix, padding=1), two_step, rtol=1e-10, atol=1e-10)


def _loha_reference(w1a, w1b, w2a, w2b, scale):
    """SPEC: ΔW = s·(W1a W1b) ⊙ (W2a W2b), convolution factors flattened to in·kh·kw."""
    return scale * (w1a @ w1b.reshape(w1b.shape[0], -1)) * (w2a @ w2b.reshape(w2b.shape[0], -1))


def _lokr_reference(w1, w2, scale):
    """LyCORIS `make_kron`: kron(W1 (unsqueezed to W2's dims), W2), then as an [out, in·kh·kw] matrix."""
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    full = torch.kron(w1, w2) * scale
    return full.reshape(full.shape[0], -1)


@pytest.fixture(scope="module")
def lycoris_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("f") / "lycoris.safetensors"
    t = {}
    # LoHa, Linear 32×32, r1 = 3, r2 = 2 (unequal on purpose), alpha 6 → scale 6 / 3.
    a = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t |= {a + ".hada_w1_a": _rand(32, 3, seed=11), a + ".hada_w1_b": _rand(3, 32, seed=12),
          a + ".hada_w2_a": _rand(32, 2, seed=13), a + ".hada_w2_b": _rand(2, 32, seed=14),
          a + ".alpha": torch.tensor(6.0)}
    # LoHa on a 3×3 conv, flattened factors (LyCORIS' non-Tucker conv), no alpha → scale 1.
    c = U + "down_blocks_0_resnets_0_conv1"
    t |= {c + ".hada_w1_a": _rand(32, 2, seed=15), c + ".hada_w1_b": _rand(2, 32 * 9, seed=16),
          c + ".hada_w2_a": _rand(32, 2, seed=17), c + ".hada_w2_b": _rand(2, 32 * 9, seed=18)}
    # LoKr: W1 full [4, 8], W2 = w2a·w2b [8, 2]·[2, 4] → 32×32; dim 2, alpha 3.
    k = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    t |= {k + ".lokr_w1": _rand(4, 8, seed=19), k + ".lokr_w2_a": _rand(8, 2, seed=20),
          k + ".lokr_w2_b": _rand(2, 4, seed=21), k + ".alpha": torch.tensor(3.0)}
    # LoKr: W1 = w1a·w1b, W2 full; dim = w1a's columns (1), alpha 0.5.
    v = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"
    t |= {v + ".lokr_w1_a": _rand(2, 1, seed=22), v + ".lokr_w1_b": _rand(1, 4, seed=23),
          v + ".lokr_w2": _rand(16, 8, seed=24), v + ".alpha": torch.tensor(0.5)}
    # LoKr, both full: scale 1 whatever the alpha says.
    o = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    t |= {o + ".lokr_w1": _rand(4, 2, seed=25), o + ".lokr_w2": _rand(8, 16, seed=26), o + ".alpha": torch.tensor(7.0)}
    # LoKr on a 3×3 conv: W1 [4, 4], W2 = w2a [8, 2] · w2b [2, 8, 3, 3] (4-D, kernel shown).
    d = U + "down_blocks_0_resnets_0_conv2"
    t |= {d + ".lokr_w1": _rand(4, 4, seed=27), d + ".lokr_w2_a": _rand(8, 2, seed=28),
          d + ".lokr_w2_b": _rand(2, 8, 3, 3, seed=29), d + ".alpha": torch.tensor(1.0)}
    # LoKr on a 3×3 conv with W2 full and 4-D.
    s = U + "down_blocks_0_downsamplers_0_conv"
    t |= {s + ".lokr_w1_a": _rand(4, 1, seed=30), s + ".lokr_w1_b": _rand(1, 2, seed=31),
          s + ".lokr_w2": _rand(8, 16, 3, 3, seed=32), s + ".alpha": torch.tensor(2.0)}
    return _save(path, t), t


def test_loha_reads_as_rank_r1_r2_exact_factors(lycoris_file):
    path, t = lycoris_file
    adapter = open_lora_file(path)
    assert adapter.format == "lycoris"  # LoHa and LoKr modules in one kohya-layout file
    a = U + "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    spec = adapter.modules[name]
    assert (spec.kind, spec.rank, spec.scale, spec.m, spec.n) == ("loha", 6, 2.0, 32, 32)
    lr = adapter.read([name], dtype=torch.float64)
    assert lr.B.shape == (1, 32, 6) and lr.A.shape == (1, 6, 32)  # never m×n
    reference = _loha_reference(t[a + ".hada_w1_a"], t[a + ".hada_w1_b"], t[a + ".hada_w2_a"], t[a + ".hada_w2_b"], 2.0)
    torch.testing.assert_close(lr.B[0] @ lr.A[0], reference, rtol=1e-10, atol=1e-12)
    # The SPEC's index formula, entry by entry: B[i, p·r2+q] = s·W1a[i,p]·W2a[i,q].
    assert torch.allclose(lr.B[0, 5, 1 * 2 + 0], 2.0 * t[a + ".hada_w1_a"][5, 1] * t[a + ".hada_w2_a"][5, 0])
    assert torch.allclose(lr.A[0, 2 * 2 + 1, 7], t[a + ".hada_w1_b"][2, 7] * t[a + ".hada_w2_b"][1, 7])

    c = U + "down_blocks_0_resnets_0_conv1"
    spec = adapter.modules["unet.down_blocks.0.resnets.0.conv1"]
    assert (spec.kind, spec.kernel, spec.n, spec.rank, spec.scale) == ("loha", (3, 3), 288, 4, 1.0)
    reference = _loha_reference(t[c + ".hada_w1_a"], t[c + ".hada_w1_b"], t[c + ".hada_w2_a"], t[c + ".hada_w2_b"], 1.0)
    torch.testing.assert_close(_delta(adapter, "unet.down_blocks.0.resnets.0.conv1"), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("module, key, scale, rank", [
    ("transformer_blocks.0.attn1.to_k", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k", 1.5, 8 * 2),
    ("transformer_blocks.0.attn1.to_v", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v", 0.5, 1 * 8),
    ("transformer_blocks.0.attn1.to_out.0", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
     1.0, 2 * 16),
])
def test_lokr_is_the_kronecker_product_of_factors(lycoris_file, module, key, scale, rank):
    path, t = lycoris_file
    adapter = open_lora_file(path)
    name = f"unet.down_blocks.0.attentions.0.{module}"
    spec = adapter.modules[name]
    assert (spec.kind, spec.m, spec.n, spec.rank, spec.scale) == ("lokr", 32, 32, rank, scale)
    k = U + key
    w1 = t[k + ".lokr_w1"] if k + ".lokr_w1" in t else t[k + ".lokr_w1_a"] @ t[k + ".lokr_w1_b"]
    w2 = t[k + ".lokr_w2"] if k + ".lokr_w2" in t else t[k + ".lokr_w2_a"] @ t[k + ".lokr_w2_b"]
    torch.testing.assert_close(_delta(adapter, name), _lokr_reference(w1, w2, scale), rtol=1e-10, atol=1e-12)


def test_lokr_convolutions_follow_lycoris_make_kron(lycoris_file):
    path, t = lycoris_file
    adapter = open_lora_file(path)
    d = U + "down_blocks_0_resnets_0_conv2"
    spec = adapter.modules["unet.down_blocks.0.resnets.0.conv2"]
    assert (spec.kernel, spec.n, spec.rank, spec.scale) == ((3, 3), 32 * 9, 4 * 2, 0.5)
    w2 = (t[d + ".lokr_w2_a"] @ t[d + ".lokr_w2_b"].reshape(2, -1)).reshape(8, 8, 3, 3)
    torch.testing.assert_close(_delta(adapter, "unet.down_blocks.0.resnets.0.conv2"),
                               _lokr_reference(t[d + ".lokr_w1"], w2, 0.5), rtol=1e-10, atol=1e-12)
    s = U + "down_blocks_0_downsamplers_0_conv"
    spec = adapter.modules["unet.down_blocks.0.downsamplers.0.conv"]
    assert (spec.kernel, spec.rank, spec.scale) == ((3, 3), 1 * 16 * 9, 2.0)
    torch.testing.assert_close(_delta(adapter, "unet.down_blocks.0.downsamplers.0.conv"),
                               _lokr_reference(t[s + ".lokr_w1_a"] @ t[s + ".lokr_w1_b"], t[s + ".lokr_w2"], 2.0),
                               rtol=1e-10, atol=1e-12)
    # and it convolves as LyCORIS' 4-D weight does
    x = _rand(1, 32, 5, 5, seed=40)
    weight4d = torch.kron(t[d + ".lokr_w1"][:, :, None, None], w2) * 0.5
    ours = _delta(adapter, "unet.down_blocks.0.resnets.0.conv2").reshape(32, 32, 3, 3)
    torch.testing.assert_close(F.conv2d(x, ours, padding=1), F.conv2d(x, weight4d, padding=1), rtol=1e-10, atol=1e-10)


def test_read_stacks_modules_and_casts(lycoris_file):
    path, _ = lycoris_file
    adapter = open_lora_file(path)
    names = ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"] * 2
    stacked = adapter.read(names, dtype=torch.float32)
    assert stacked.B.shape == (2, 32, 16) and stacked.B.dtype == torch.float32
    assert torch.equal(stacked.B[0], stacked.B[1])
    with pytest.raises(ValueError, match="one shape"):
        adapter.read(["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"])
    every = adapter.read_modules(dtype=torch.float64)
    assert set(every) == set(adapter.modules)
    for name, value in every.items():
        assert value.rank == adapter.modules[name].rank
        assert math.isfinite(float(value.B.abs().sum()))
