"""Base weights in the language, end to end through the `dipm` command (SPEC §7.8).

DoRA adapters made by PEFT on a tiny random Llama (sharded base folder written by transformers)
are loaded with `--base`, combined and saved; PEFT loads every output and its
`merge_and_unload()` weights are compared with the SPEC's formulas written out here densely in
float64 (outputs are compared by merged weights: DoRA's (c, K) form is not unique). Bakes are
loaded by transformers and compared with PEFT's logits; extracted LoRAs with the known update a
fine-tune was made from and with an independent float64 SVD.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from adapters import folder_digest
from base_models import (make_adapter, make_finetune, model_logits, peft_logits, peft_merged, read_adapter,
                         relative_error, save_model, tiny_gpt2_model, tiny_llama_model)
from clitools import run_main

TARGETS = ("q_proj", "v_proj", "embed_tokens")
TOKENS = torch.tensor([[1, 5, 9, 33, 2, 63, 17, 8], [0, 3, 3, 40, 41, 12, 7, 60]])
F32_TOL = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """base/ (sharded), DoRA adapters a/ and b/, a plain LoRA l/, a fine-tune tuned/ (its known updates
    in world/"updates.pt"), and a GPT-2 base/ of other shapes."""
    root = tmp_path_factory.mktemp("base_language")
    save_model(tiny_llama_model(0), root / "base", shard_size="20KB")
    make_adapter(tiny_llama_model(0), root / "a", seed=1, targets=TARGETS, use_dora=True)
    make_adapter(tiny_llama_model(0), root / "b", seed=2, targets=TARGETS, use_dora=True)
    make_adapter(tiny_llama_model(0), root / "l", seed=3, targets=("q_proj", "v_proj"))
    updates = make_finetune(tiny_llama_model(0), root / "tuned", seed=4, targets=("q_proj", "v_proj"), rank=3,
                            noise=1e-3)
    torch.save(updates, root / "updates.pt")
    save_model(tiny_gpt2_model(0), root / "gpt2")
    return root


# ---- the dense float64 reference (SPEC §7.8 and §3) ----------------------------------------------

def base_weights() -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in tiny_llama_model(0).state_dict().items()}


def lora_layout(kind: str, W: torch.Tensor) -> torch.Tensor:
    """A stored weight in the LoRA ΔW layout (an embedding's is transposed) and back."""
    return W.T if kind == "embedding" else W


def rows(W: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(W, dim=1, keepdim=True)


def dora_delta(W0: torch.Tensor, module: dict) -> torch.Tensor:
    """ΔW = m ⊙ normalize_rows(W0 + s·B·A) − W0 (LoRA layout, s folded into B)."""
    V = W0 + module["B"] @ module["A"]
    return module["magnitude"][:, None] * V / rows(V) - W0


def slerp_rows(d: torch.Tensor, e: torch.Tensor, t: float) -> torch.Tensor:
    """SPEC §3 shift, row by row, of unit rows d and e (no degenerate rows in these tests)."""
    theta = torch.arccos((d * e).sum(1, keepdim=True).clamp(-1, 1))
    assert bool((torch.sin(theta) > 1e-6).all())
    return (torch.sin((1 - t) * theta) * d + torch.sin(t * theta) * e) / torch.sin(theta)


def merged_delta(world: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload() of `adapter` on the base, minus the base (stored layout, float64)."""
    W0 = base_weights()
    merged = peft_merged(tiny_llama_model(0), adapter)
    return {k: merged[k].double() - W0[k] for k in W0}


def assert_merged(world: Path, adapter: Path, expected: dict[str, torch.Tensor]) -> None:
    """The adapter, merged by PEFT, changes exactly the expected modules by the expected ΔW."""
    got = merged_delta(world, adapter)
    for key, delta in got.items():
        name = key.removesuffix(".weight")
        if name in expected:
            assert relative_error(delta, expected[name]) <= F32_TOL, name
        else:
            assert float(delta.abs().max()) == 0.0, key
    assert expected and all(f"{name}.weight" in got for name in expected)


def spec_deltas(world: Path, adapter: str) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
    """Per module of a DoRA adapter: kind, W0 and ΔW in the LoRA layout (float64)."""
    W0 = base_weights()
    out = {}
    for name, module in read_adapter(world / adapter).items():
        w0 = lora_layout(module["kind"], W0[f"{name}.weight"])
        out[name] = (module["kind"], w0, dora_delta(w0, module))
    return out


def run(world: Path, *args: str):
    result = run_main(*args, cwd=world)
    return result


# ---- DoRA in and out --------------------------------------------------------------------------

def test_dora_adapters_compose_exactly(world):
    """save(load(x)) round-trips; a linear combination and the stdlib transfer of two DoRA adapters
    are written as DoRA adapters whose PEFT merge equals the SPEC's dense formula."""
    (world / "dora.dipm").write_text('a = load("a")\nb = load("b")\nsave(a, "out/rt")\n'
                                     'save(0.7 * a - 0.2 * b, "out/lin")\nsave(transfer(a, b, t=0.3), "out/tr")\n')
    before = folder_digest(world / "a")
    result = run(world, "run", "dora.dipm", "--base", "base")
    assert result.code == 0, result.err
    assert folder_digest(world / "a") == before
    a, b = spec_deltas(world, "a"), spec_deltas(world, "b")
    assert {kind for kind, _, _ in a.values()} == {"linear", "embedding"}
    expected_rt, expected_lin, expected_tr = {}, {}, {}
    for name, (kind, w0, da) in a.items():
        db = b[name][2]
        expected_rt[name] = lora_layout(kind, da)
        expected_lin[name] = lora_layout(kind, 0.7 * da - 0.2 * db)
        shifted = slerp_rows(da / rows(da), db / rows(db), 0.3) * rows(da)
        expected_tr[name] = lora_layout(kind, shifted)
    for out, expected in (("rt", expected_rt), ("lin", expected_lin), ("tr", expected_tr)):
        config = json.loads((world / "out" / out / "adapter_config.json").read_text())
        assert config["use_dora"] is True, out
        assert_merged(world, world / "out" / out, expected)
    # the round trip means what the input means: PEFT's own merges agree
    original = merged_delta(world, world / "a")
    for key, delta in merged_delta(world, world / "out" / "rt").items():
        assert relative_error(delta, original[key]) <= F32_TOL if float(original[key].abs().max()) else \
            float(delta.abs().max()) == 0.0, key


def test_weight_level_directions_save_as_dora(world):
    """dir/mag of full weights (SPEC §7.8, by="out": DoRA's rows): W0 + L's directions with the row norms
    of W0 + L', saved as W − W0 (a DoRA adapter, from two plain LoRA-style inputs)."""
    (world / "weights.dipm").write_text('w = base() + load("l")\nv = base() + 0.5 * load("l")\n'
                                        'save(recombine(dir(w), mag(v)), "out/w")\n')
    result = run(world, "run", "weights.dipm", "--base", "base")
    assert result.code == 0, result.err
    W0 = base_weights()
    expected = {}
    for name, module in read_adapter(world / "l").items():
        w0 = W0[f"{name}.weight"]
        delta = module["B"] @ module["A"]
        W, V = w0 + delta, w0 + 0.5 * delta
        expected[name] = rows(V) * W / rows(W) - w0
    assert json.loads((world / "out" / "w" / "adapter_config.json").read_text())["use_dora"] is True
    assert_merged(world, world / "out" / "w", expected)


def test_dora_save_with_rank_truncates_l_and_reports(world):
    """rank= on a DoRA-form result keeps DoRA's form (L truncated): PEFT loads it, the merge moves
    toward the exact one, and the run reports a nonzero dropped error."""
    (world / "trunc.dipm").write_text('save(load("a") + load("b"), "out/t2", rank=2)\n')
    result = run(world, "run", "trunc.dipm", "--base", "base")
    assert result.code == 0, result.err
    assert "dropped" in result.out
    config = json.loads((world / "out" / "t2" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["r"] == 2
    a, b = spec_deltas(world, "a"), spec_deltas(world, "b")
    got = merged_delta(world, world / "out" / "t2")
    for name, (kind, _, da) in a.items():
        exact = lora_layout(kind, da + b[name][2])
        error = relative_error(got[f"{name}.weight"], exact)
        assert 1e-7 < error < 1.0, (name, error)


@pytest.mark.parametrize("energy", [0.8, 0.97])
def test_dora_save_with_energy_truncates_l_by_its_own_spectrum(world, energy):
    """energy=E on a DoRA-form result (SPEC §7.6 and §7.8): per module, L = K/(1+c) keeps the smallest
    rank k whose σ² hold E of L's Σσ², the saved update is c·W0 + (1+c)·L_k — the rank read from the
    saved file and PEFT's merged weights both equal this float64 reference — and the report lists
    each module's rank."""
    name = f"te{round(energy * 100)}"
    (world / f"{name}.dipm").write_text(f'save(load("a") + load("b"), "out/{name}", energy={energy})\n')
    result = run(world, "run", f"{name}.dipm", "--base", "base")
    assert result.code == 0, result.err
    assert json.loads((world / "out" / name / "adapter_config.json").read_text())["use_dora"] is True
    W0, saved = base_weights(), read_adapter(world / "out" / name)
    a, b = read_adapter(world / "a"), read_adapter(world / "b")
    expected, truncated = {}, 0
    for module, ma in a.items():
        w0 = lora_layout(ma["kind"], W0[f"{module}.weight"])
        c, K = torch.zeros(w0.shape[0], 1, dtype=torch.float64), torch.zeros_like(w0)
        for m in (ma, b[module]):  # m ⊙ normalize_rows(W0 + BA) − W0 = (g − 1)·W0 + g·BA, g = m/‖W0 + BA‖
            g = m["magnitude"][:, None] / rows(w0 + m["B"] @ m["A"])
            c, K = c + (g - 1), K + g * (m["B"] @ m["A"])
        U, S, Vh = torch.linalg.svd(K / (1 + c), full_matrices=False)
        k = int((torch.cumsum(S ** 2, 0) < energy * float((S ** 2).sum())).sum()) + 1
        truncated += k < int((S > S[0] * 1e-10).sum())
        assert saved[module]["A"].shape[0] == k, (module, saved[module]["A"].shape, k)
        expected[module] = lora_layout(ma["kind"], c * w0 + (1 + c) * (U[:, :k] * S[:k]) @ Vh[:k])
        assert re.search(rf"{re.escape(module)}\s+rank\s+{k}\b", result.out), (module, k, result.out)
    assert truncated, "the energy must truncate some module, or the test shows nothing"
    assert_merged(world, world / "out" / name, expected)


# ---- bake --------------------------------------------------------------------------------------

def test_bake_command_equals_peft(world):
    """`dipm bake ADAPTER --base DIR -o OUT`: the base's layout, and transformers' logits equal the
    PEFT model's (a DoRA adapter: its exact update is baked)."""
    result = run(world, "bake", "a", "--base", "base", "-o", "baked/a")
    assert result.code == 0, result.err
    out, base = world / "baked" / "a", world / "base"
    assert sorted(p.name for p in out.iterdir() if p.name != "README.md") == \
        sorted(p.name for p in base.iterdir() if p.name != "README.md")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert index == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    want = peft_logits(tiny_llama_model(0), world / "a", TOKENS)
    assert relative_error(model_logits(out, TOKENS), want) <= F32_TOL


def test_bake_in_a_script_and_of_a_recipe(world):
    """`bake(x, "OUT")` in a script run by `dipm run`, and `dipm bake RECIPE` of a recipe's one save:
    the baked weights are W0 + ΔW of the SPEC's formula."""
    (world / "bake.dipm").write_text('bake(0.5 * load("a") + 0.5 * load("b"), "baked/mix", dtype="float32")\n')
    (world / "recipe.dipm").write_text('save(0.5 * load("a") + 0.5 * load("b"), "ignored")\n')
    assert run(world, "run", "bake.dipm", "--base", "base").code == 0
    result = run(world, "bake", "recipe.dipm", "--base", "base", "-o", "baked/recipe")
    assert result.code == 0, result.err
    assert not (world / "ignored").exists()
    import transformers

    a, b = spec_deltas(world, "a"), spec_deltas(world, "b")
    W0 = base_weights()
    for out in ("mix", "recipe"):
        state = transformers.AutoModelForCausalLM.from_pretrained(str(world / "baked" / out)).state_dict()
        for key, w0 in W0.items():
            name = key.removesuffix(".weight")
            if name in a:
                kind = a[name][0]
                expected = w0 + lora_layout(kind, 0.5 * a[name][2] + 0.5 * b[name][2])
                assert relative_error(state[key], expected) <= F32_TOL, (out, key)
            elif key in state:
                assert torch.equal(state[key].double(), w0), (out, key)


# ---- extract -----------------------------------------------------------------------------------

def test_extract_recovers_a_known_update(world):
    """extract(tuned, rank=3) of a fine-tune made as W0 + U (rank 3) + small noise: per module within
    1.01× the optimal rank-3 error (an independent float64 SVD), near U; the run reports the errors;
    the saved LoRA, loaded by PEFT, gives the fine-tune's logits to the truncation error."""
    (world / "extract.dipm").write_text('save(extract("tuned", rank=3, target_modules=".*(q_proj|v_proj)"), '
                                        '"out/ex")\n')
    result = run(world, "run", "extract.dipm", "--base", "base")
    assert result.code == 0, result.err
    assert "extracted, relative error" in result.out
    updates = torch.load(world / "updates.pt")
    tuned = {k: v.double() for k, v in tiny_llama_model(0).state_dict().items()}
    import transformers

    tuned = {k: v.double() for k, v in
             transformers.AutoModelForCausalLM.from_pretrained(str(world / "tuned")).state_dict().items()}
    W0 = base_weights()
    got = merged_delta(world, world / "out" / "ex")
    assert set(updates) == {k.removesuffix(".weight") for k, v in got.items() if float(v.abs().max())}
    for name, U in updates.items():
        diff = tuned[f"{name}.weight"] - W0[f"{name}.weight"]
        singular = torch.linalg.svdvals(diff)
        optimal = math.sqrt(float((singular[3:] ** 2).sum()))
        error = float((got[f"{name}.weight"] - diff).norm())
        assert error <= 1.01 * optimal + 1e-6 * float(diff.norm()), (name, error, optimal)
        assert relative_error(got[f"{name}.weight"], U.double()) < 5e-3, name
    want = model_logits(world / "tuned", TOKENS)
    lora = peft_logits(tiny_llama_model(0), world / "out" / "ex", TOKENS)
    assert relative_error(lora, want) < 5e-3


# ---- refusals ----------------------------------------------------------------------------------

def test_refusals_write_nothing(world):
    """A DoRA adapter without a base, bake without --base, a base of other shapes, by="in" on a value
    in DoRA's form: each a clear error with the SPEC's exit code, and nothing written."""
    (world / "plain.dipm").write_text('save(load("a"), "out/never")\n')
    result = run(world, "run", "plain.dipm")
    assert result.code == 1 and "base" in result.err and "DoRA" in result.err, result.err
    result = run(world, "bake", "a", "-o", "baked/never")
    assert result.code == 2 and "--base" in result.err, result.err
    result = run(world, "run", "plain.dipm", "--base", "gpt2")
    assert result.code == 1 and "gpt2" in result.err and "model.embed_tokens" in result.err, result.err
    (world / "columns.dipm").write_text('save(recombine(dir(load("a"), by="in"), mag(load("b"), by="in")), '
                                        '"out/never")\n')
    result = run(world, "run", "columns.dipm", "--base", "base")
    assert result.code != 0 and 'by="in"' in result.err and "columns.dipm:1" in result.err, result.err
    (world / "vllm.dipm").write_text('save(load("a"), "out/never", target="vllm")\n')
    result = run(world, "run", "vllm.dipm", "--base", "base")
    assert result.code == 1 and "target=" in result.err and "vllm.dipm:1" in result.err, result.err
    assert not (world / "out" / "never").exists() and not (world / "baked" / "never").exists()


def test_bake_from_the_python_api(world):
    """compile(script).run(base=DIR) runs `bake(...)` as `dipm run --base DIR` does."""
    import dipm_lang as dl

    program = dl.compile('bake(load("a"), "baked/api")\n', file=str(world / "api.dipm"))
    summary = program.run(device="cpu", base=world / "base")
    assert "model folder" in summary.text()
    want = peft_logits(tiny_llama_model(0), world / "a", TOKENS)
    assert relative_error(model_logits(world / "baked" / "api", TOKENS), want) <= F32_TOL
