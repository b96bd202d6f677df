"""DoRA's algebra (backend/dora.py) against PEFT itself and a dense float64 reference (SPEC §7.8).

The reference is the SPEC's formula written out densely here:
ΔW = m ⊙ normalize_rows(W0 + s·B·A) − W0, with W0 in the LoRA layout (embedding and Conv1D
weights transposed). PEFT's `merge_and_unload` is the other, independent oracle.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from base_models import (make_adapter, peft_merged, read_adapter, relative_error, save_model, tiny_gpt2_model,
                         tiny_llama_model, write_dora_adapter)
from dipm_lang.backend import dense
from dipm_lang.backend import dora as D
from dipm_lang.backend.lowrank import LowRank, lowrank
from dipm_lang.errors import RuntimeDipmError
from dipm_lang.io.base_model import open_base_model

TARGETS = ("q_proj", "v_proj", "embed_tokens", "lm_head")
F32_TOL = 1e-5


def reference_update(W0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """SPEC §7.8 verbatim, float64: m ⊙ normalize_rows(W0 + s·B·A) − W0 (s folded into B)."""
    V = W0.double() + B.double() @ A.double()
    return m.double()[:, None] * V / torch.linalg.vector_norm(V, dim=1, keepdim=True) - W0.double()


def stored(module: str, kind: str, conv1d: bool, layout_value: torch.Tensor) -> torch.Tensor:
    """A LoRA-layout matrix in the base model's storage layout."""
    return layout_value.T if kind == "embedding" or conv1d else layout_value


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dora")
    base = save_model(tiny_llama_model(0), root / "base")
    adapters = {seed: make_adapter(tiny_llama_model(0), root / f"dora{seed}", seed=seed, targets=TARGETS,
                                   use_dora=True) for seed in (1, 2)}
    return {"root": root, "base": open_base_model(base), "adapters": adapters,
            "modules": {seed: read_adapter(path) for seed, path in adapters.items()}}


def values(llama: dict, seed: int, dtype=torch.float32) -> dict[str, tuple[D.DoraForm, torch.Tensor]]:
    """Each module's DoraForm (from our reader + the file's factors) and its W0, in `dtype`."""
    out = {}
    for name, module in llama["modules"][seed].items():
        W0 = llama["base"].read_weights([name], kinds=module["kind"], dtype=dtype)[0]
        lora = LowRank(module["B"].to(dtype), module["A"].to(dtype))
        out[name] = (D.dora_update(W0, lora, module["magnitude"].to(dtype), names=[name]), W0)
    return out


def test_update_equals_peft_merge(llama):
    """The effective ΔW of a DoRA adapter equals PEFT's merge_and_unload() − W0 and the SPEC formula."""
    merged = peft_merged(tiny_llama_model(0), llama["adapters"][1])
    base_state = tiny_llama_model(0).state_dict()
    checked = set()
    for name, (form, W0) in values(llama, 1).items():
        module = llama["modules"][1][name]
        assert form.c.abs().max() > 1e-3  # non-trivial magnitudes: c ≠ 0
        ours = stored(name, module["kind"], False, form.dense(W0))
        peft_delta = merged[f"{name}.weight"] - base_state[f"{name}.weight"]
        assert relative_error(ours, peft_delta) <= F32_TOL, name
        ref = reference_update(W0, module["B"], module["A"], module["magnitude"])
        assert relative_error(form.dense(W0), ref) <= F32_TOL, name
        checked.add(module["kind"])
    assert checked == {"linear", "embedding"}


def test_magnitude_axis_is_the_output_row(llama):
    """PEFT's magnitude vector has one entry per row of the LoRA layout (out features; embedding dim)."""
    for name, module in llama["modules"][1].items():
        assert module["magnitude"].shape == (module["B"].shape[0],), name


def test_conv1d_fan_in_fan_out_equals_peft(tmp_path):
    """GPT-2 Conv1D stores W as [in, out]; DoRA's norm is still per output feature."""
    base = open_base_model(save_model(tiny_gpt2_model(0), tmp_path / "gpt2"))
    adapter = make_adapter(tiny_gpt2_model(0), tmp_path / "dora", seed=3, targets=("c_attn", "c_fc"),
                           use_dora=True, fan_in_fan_out=True)
    merged = peft_merged(tiny_gpt2_model(0), adapter)
    base_state = tiny_gpt2_model(0).state_dict()
    modules = read_adapter(adapter)
    assert len(modules) == 4
    for name, module in modules.items():
        weight = base.weight(name)
        assert weight.conv1d and weight.transpose
        W0 = base.read_weights([name])[0]
        form = D.dora_update(W0, LowRank(module["B"].float(), module["A"].float()), module["magnitude"].float())
        peft_delta = merged[f"{name}.weight"] - base_state[f"{name}.weight"]
        assert relative_error(form.dense(W0).T, peft_delta) <= F32_TOL, name
        ref = reference_update(W0, module["B"], module["A"], module["magnitude"])
        assert relative_error(form.dense(W0), ref) <= F32_TOL, name


def save_and_merge(llama: dict, results: dict[str, tuple[D.DoraForm, torch.Tensor]], path: Path, **to_dora_kwargs
                   ) -> tuple[dict[str, torch.Tensor], dict[str, D.DoraFactors]]:
    """Write the results as a DoRA adapter (to_dora), load it with PEFT, return its merged weights."""
    factors = {name: D.to_dora(form, W0, names=[name], **to_dora_kwargs) for name, (form, W0) in results.items()}
    ranks = {f.lora.rank for f in factors.values()}
    assert len(ranks) == 1  # one r for the config
    modules = {name: {"B": f.lora.B, "A": f.lora.A, "magnitude": f.magnitude,
                      "kind": llama["modules"][1][name]["kind"]} for name, f in factors.items()}
    write_dora_adapter(path, modules, r=ranks.pop())
    return peft_merged(tiny_llama_model(0), path), factors


def test_linear_combination_saves_as_dora(llama):
    """0.7·D1 − 0.4·D2 written by to_dora and merged by PEFT gives the SPEC's weights (compared merged)."""
    d1, d2 = values(llama, 1), values(llama, 2)
    results = {name: (0.7 * form - d2[name][0] * 0.4, W0) for name, (form, W0) in d1.items()}
    merged, _ = save_and_merge(llama, results, llama["root"] / "combo")
    for name, (_, W0) in results.items():
        m1, m2 = llama["modules"][1][name], llama["modules"][2][name]
        reference = W0.double() + 0.7 * reference_update(W0, m1["B"], m1["A"], m1["magnitude"]) \
            - 0.4 * reference_update(W0, m2["B"], m2["A"], m2["magnitude"])
        kind = m1["kind"]
        assert relative_error(merged[f"{name}.weight"], stored(name, kind, False, reference)) <= F32_TOL, name


def test_transfer_keeps_the_dora_form(llama):
    """transfer(src, tgt, t) by="out" = recombine(shift(dir(src), dir(tgt), t), mag(src)) on DoraForms."""
    t = 0.3
    src, tgt = values(llama, 1), values(llama, 2)
    results = {}
    for name, (x, W0) in src.items():
        y = tgt[name][0]
        mag_x = D.row_norms(x, W0)
        dx, dy = x.scale_rows(1 / mag_x), y.scale_rows(1 / D.row_norms(y, W0))
        theta = torch.arccos(D.row_dots(dx, dy, W0).clamp(-1, 1))
        alpha, beta = torch.sin((1 - t) * theta) / torch.sin(theta), torch.sin(t * theta) / torch.sin(theta)
        results[name] = (D.combine_rows([dx, dy], [alpha, beta]).scale_rows(mag_x), W0)
    merged, _ = save_and_merge(llama, results, llama["root"] / "transfer")
    for name, (form, W0) in results.items():
        m1, m2 = llama["modules"][1][name], llama["modules"][2][name]
        delta1 = reference_update(W0, m1["B"], m1["A"], m1["magnitude"])
        delta2 = reference_update(W0, m2["B"], m2["A"], m2["magnitude"])
        expected = dense.recombine(dense.shift(dense.dir(delta1), dense.dir(delta2), t), dense.mag(delta1))
        assert relative_error(form.dense(W0), expected) <= F32_TOL, name
        reference = stored(name, m1["kind"], False, W0.double() + expected)
        assert relative_error(merged[f"{name}.weight"], reference) <= F32_TOL, name


def test_weight_row_scaling_and_weight_decoupling(llama):
    """diag(s)·(W0 + x) − W0 is diag(s(1+c) − 1)·W0 + diag(s)·K; recombine(dir(W), mag(W)) = W."""
    name = "model.layers.0.self_attn.q_proj"
    x, W0 = values(llama, 1, torch.float64)[name]
    s = torch.linspace(0.5, 1.5, x.m, dtype=torch.float64)
    scaled = x.plus_base().scale_rows(s).plus_base(-1)
    expected = s[:, None] * (W0 + x.dense(W0)) - W0
    assert torch.allclose(scaled.dense(W0), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(scaled.c, s * (1 + x.c) - 1, rtol=1e-12, atol=1e-12)
    weight = x.plus_base()
    norms = D.row_norms(weight, W0)
    assert torch.allclose(norms, dense.mag(W0 + x.dense(W0)), rtol=1e-12)
    assert torch.allclose(weight.scale_rows(1 / norms).scale_rows(norms).dense(W0), x.merged(W0), rtol=1e-12)


def test_weight_scaling_saves_as_dora(llama):
    """A per-row scaling of a DoRA weight saves as a DoRA adapter PEFT merges to diag(s)·(W0 + ΔW)."""
    results = {}
    for name, (x, W0) in values(llama, 1).items():
        s = torch.linspace(0.6, 1.4, x.m)
        results[name] = (x.plus_base().scale_rows(s).plus_base(-1), W0)
    merged, _ = save_and_merge(llama, results, llama["root"] / "scaled")
    for name, (_, W0) in results.items():
        m1 = llama["modules"][1][name]
        s = torch.linspace(0.6, 1.4, W0.shape[0], dtype=torch.float64)
        reference = s[:, None] * (W0.double() + reference_update(W0, m1["B"], m1["A"], m1["magnitude"]))
        assert relative_error(merged[f"{name}.weight"], stored(name, m1["kind"], False, reference)) <= F32_TOL


def test_truncation_keeps_the_dora_form(llama):
    """rank= truncates L = diag(1/(1+c))·K; the saved update is c·W0 + (1+c)·L_r exactly."""
    d1, d2 = values(llama, 1), values(llama, 2)
    results = {name: (form + d2[name][0], W0) for name, (form, W0) in d1.items()}  # rank 8
    merged, factors = save_and_merge(llama, results, llama["root"] / "truncated",
                                     truncate=lambda L: lowrank(L, 3))
    for name, (form, W0) in results.items():
        one = 1 + form.c.double()
        L = form.K.dense().double() / one[:, None]
        U, S, Vh = torch.linalg.svd(L)
        L3 = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
        expected = form.c.double()[:, None] * W0.double() + one[:, None] * L3
        kind = llama["modules"][1][name]["kind"]
        assert factors[name].lora.rank == 3
        assert relative_error(merged[f"{name}.weight"], stored(name, kind, False, W0.double() + expected)) <= F32_TOL
        full = form.dense(W0).double()
        assert math.isclose(float(factors[name].error), float((full - expected).norm() / full.norm()), rel_tol=1e-4)


def test_plain_lora_is_c_zero():
    """A LoRA update is the DoRA form with c = 0; it also saves exactly as a DoRA adapter."""
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    K = LowRank(torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64))
    form = D.DoraForm.from_lowrank(K)
    assert form.is_lowrank() and not (form + form.plus_base(0.5)).is_lowrank()
    factors = D.to_dora(form, W0, scale=2.0)
    rebuilt = D.dora_update(W0, LowRank(factors.lora.B * 2.0, factors.lora.A), factors.magnitude)
    assert torch.allclose(rebuilt.dense(W0), K.dense(), atol=1e-12)
    assert torch.allclose(factors.magnitude, torch.linalg.vector_norm(W0 + K.dense(), dim=1), rtol=1e-12)


def random_forms(seed: int, batch=(), m=9, n=7, r=3):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(*batch, m, n, generator=g, dtype=torch.float64)
    make = lambda: D.DoraForm(torch.randn(*batch, m, generator=g, dtype=torch.float64),  # noqa: E731
                              LowRank(torch.randn(*batch, m, r, generator=g, dtype=torch.float64),
                                      torch.randn(*batch, r, n, generator=g, dtype=torch.float64)))
    return W0, make(), make()


@pytest.mark.parametrize("batch", [(), (3,)])
def test_algebra_against_dense(batch, monkeypatch):
    """+ − k* /, per-row scaling, row norms and dots agree with dense matrices (blocks of 7 elements)."""
    monkeypatch.setattr(D, "BLOCK_ELEMENTS", 7)  # many row blocks, one row each
    W0, x, y = random_forms(1, batch)
    X, Y = x.dense(W0), y.dense(W0)
    k = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)[: batch[0]] if batch else 2.5
    kk = k[..., None, None] if batch else k
    cases = [(x + y, X + Y), (x - y, X - Y), (-x, -X), (x * k, X * kk), (k * x, X * kk), (x / k, X / kk),
             (x + y.K, X + y.K.dense()), (y.K - x, y.K.dense() - X)]
    for form, expected in cases:
        assert torch.allclose(form.dense(W0), expected, rtol=1e-12, atol=1e-12)
    s = torch.rand(*batch, x.m, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x.scale_rows(s).dense(W0), s[..., None] * X, rtol=1e-12, atol=1e-12)
    assert torch.allclose(D.combine_rows([x, y], [s, 1 - s]).dense(W0), s[..., None] * X + (1 - s[..., None]) * Y,
                          rtol=1e-12, atol=1e-12)
    assert torch.allclose(D.row_norms(x, W0), torch.linalg.vector_norm(X, dim=-1), rtol=1e-12)
    assert torch.allclose(D.row_dots(x, y, W0), (X * Y).sum(-1), rtol=1e-12, atol=1e-12)
    assert torch.allclose(D.matrix_norm(x, W0), torch.linalg.vector_norm(X, dim=(-2, -1)), rtol=1e-12)
    assert torch.allclose(D.weight_row_norms(x, W0), torch.linalg.vector_norm(W0 + X, dim=-1), rtol=1e-12)
    assert torch.allclose(D.weight_row_norms(y.K, W0), torch.linalg.vector_norm(W0 + y.K.dense(), dim=-1), rtol=1e-12)
    assert torch.allclose(x.merged(W0), W0 + X, rtol=1e-12, atol=1e-12)


def test_batched_to_dora_round_trip():
    """to_dora on a stack, then dora_update of its factors, gives the value back."""
    W0, x, _ = random_forms(3, (4,))
    factors = D.to_dora(x, W0, scale=0.5)
    rebuilt = D.dora_update(W0, LowRank(factors.lora.B * 0.5, factors.lora.A), factors.magnitude)
    assert torch.allclose(rebuilt.dense(W0), x.dense(W0), rtol=1e-10, atol=1e-10)


def test_unsaveable_row_names_the_module():
    """1 + cᵢ = 0 (a row equal to −W0's plus K) has no DoRA form: the error names module and row."""
    W0, x, _ = random_forms(4, (2,))
    c = x.c.clone()
    c[1, 5] = -1.0
    with pytest.raises(RuntimeDipmError, match=r"'layers.1.q_proj'.*row 5"):
        D.to_dora(D.DoraForm(c, x.K), W0, names=["layers.0.q_proj", "layers.1.q_proj"])


def test_zero_row_of_adapter_is_an_error():
    """‖W0 + s·B·A‖ = 0 in a row: PEFT divides by it; we refuse naming the module."""
    W0 = torch.zeros(3, 4, dtype=torch.float64)
    W0[0, 0] = 1.0
    lora = LowRank(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(RuntimeDipmError, match=r"'mod'.*row 1"):
        D.dora_update(W0, lora, torch.ones(3, dtype=torch.float64), names=["mod"])
