"""Full-weight modules and biases (SPEC §7.4, issue 14): PEFT's `modules_to_save` and trained biases.

Adapters are made by PEFT itself on a tiny random Llama (`modules_to_save=["lm_head",
"embed_tokens"]`, `bias="all"|"lora_only"`), outputs are loaded back by `PeftModel.from_pretrained`,
and their logits are compared with the same combination done by hand on the plain transformers model
(ΔW added to the base weights, full-weight tensors set), all from the files, in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters import PREFIX, WITH_BIASES, folder_digest, make_peft_adapter, peft_logits, tiny_llama, write_raw_adapter
from clitools import run_main

F64 = torch.float64
SAVED = ["lm_head", "embed_tokens"]
FULL_KEYS = (f"{PREFIX}lm_head.weight", f"{PREFIX}model.embed_tokens.weight")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """H, T: q/v LoRA + lm_head and embed_tokens; B1, B2: bias="all"; L1: bias="lora_only" (a Llama with
    biases); Hp, Tp: H's and T's LoRA factors alone (same seeds, no full weights)."""
    root = tmp_path_factory.mktemp("full")
    make_peft_adapter(root / "H", seed=1, modules_to_save=SAVED)
    make_peft_adapter(root / "T", seed=2, modules_to_save=SAVED)
    for name in ("H", "T"):  # the same LoRA factors without the full-weight modules
        lora = {key: t for key, t in tensors(root / name).items() if ".lora_" in key}
        write_raw_adapter(root / f"{name}p", lora, {**config(root / name), "modules_to_save": None})
    make_peft_adapter(root / "B1", seed=3, bias="all", base_config=WITH_BIASES)
    make_peft_adapter(root / "B2", seed=4, bias="all", base_config=WITH_BIASES)
    make_peft_adapter(root / "L1", seed=5, bias="lora_only", base_config=WITH_BIASES)
    return root


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))


def run(root: Path, script: str, *extra: str, name: str = "s.dipm"):
    (root / name).write_text(script)
    return run_main("run", *extra, name, cwd=root)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def full_of(folder: Path) -> dict[str, torch.Tensor]:
    """The non-LoRA tensors of a folder, by model parameter name (`base_layer` removed)."""
    return {key.removeprefix(PREFIX).replace(".base_layer.", "."): t for key, t in tensors(folder).items()
            if ".lora_" not in key}


def combined(parts: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """Σ cᵢ·tensorᵢ of the inputs' full-weight tensors, in float64 (SPEC §7.4), rounded once to float32."""
    out: dict[str, torch.Tensor] = {}
    for folder, c in parts:
        for name, t in full_of(folder).items():
            out[name] = out.get(name, 0) + c * t.to(F64)
    return {name: t.float() for name, t in out.items()}


def hand_logits(parts: list[tuple[Path, float]], tokens: torch.Tensor, *, base_config=None,
                full: dict[str, torch.Tensor] | None = None, model: torch.nn.Module | None = None) -> torch.Tensor:
    """The logits of Σ cᵢ·inputᵢ done by hand on the transformers model (default the tiny Llama):
    W += Σ cᵢ·sᵢ·Bᵢ·Aᵢ (s = alpha/r from each config), and every full-weight tensor set to `full`
    (default: Σ cᵢ·tensorᵢ)."""
    if model is None:
        model = tiny_llama(0, **dict(base_config or {}))
        assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied: each is its own tensor
    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    for folder, c in parts:
        settings, files = config(folder), tensors(folder)
        scale = settings["lora_alpha"] / settings["r"]
        for key, A in files.items():
            if key.endswith(".lora_A.weight"):
                module = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
                B = files[f"{PREFIX}{module}.lora_B.weight"]
                deltas[module] = deltas.get(module, 0) + c * scale * (B.to(F64) @ A.to(F64))
    with torch.no_grad():
        for module, delta in deltas.items():
            params[f"{module}.weight"].copy_((params[f"{module}.weight"].to(F64) + delta).float())
        for name, value in (combined(parts) if full is None else full).items():
            params[name].copy_(value)
        return model(input_ids=tokens).logits.double()


# ---- reading -------------------------------------------------------------------------------------


def test_reads_what_each_adapter_holds(root):
    from dipm_lang.io.reader import open_adapter

    h = open_adapter(root / "H")
    assert {(name, t.kind) for name, t in h.full.items()} == {("lm_head.weight", "module"),
                                                                ("model.embed_tokens.weight", "module")}
    assert h.full["lm_head.weight"].shape == (64, 32)
    b1 = open_adapter(root / "B1")
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert set(b1.full) == {f"model.layers.{i}.{'self_attn' if k[0] in 'qkvo' else 'mlp'}.{k}.bias"
                            for i in range(2) for k in kinds}
    assert {t.kind for t in b1.full.values()} == {"bias"}
    assert set(open_adapter(root / "L1").full) == {f"model.layers.{i}.self_attn.{k}.bias"
                                                   for i in range(2) for k in ("q_proj", "v_proj")}
    assert torch.equal(h.read_full("lm_head.weight"), tensors(root / "H")[f"{PREFIX}lm_head.weight"])


@pytest.mark.parametrize("case", [
    # a full-weight key the config does not list: the message says which list would hold it
    ("lm_head", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
     "list them in the config's 'modules_to_save'"),
    # a bias in a file whose config says bias="none"
    ("bias", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none"},
     "the config says bias=\"none\""),
])
def test_keys_the_config_does_not_announce_are_refused_with_the_reason(tmp_path, case):
    what, settings, message = case
    extra = {f"{PREFIX}lm_head.weight": torch.ones(64, 32)} if what == "lm_head" else \
        {f"{PREFIX}model.layers.0.self_attn.q_proj.base_layer.bias": torch.ones(32)}
    write_raw_adapter(tmp_path / "X", {f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 32),
                                       f"{PREFIX}model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 4),
                                       **extra}, settings)
    before = folder_digest(tmp_path / "X")
    result = run(tmp_path, 'save(load("X"), "out")\n')
    assert result.code == 1, result
    assert message in result.err and "X" in result.err
    assert not (tmp_path / "out").exists() and folder_digest(tmp_path / "X") == before


# ---- save(load(x)) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, base_config", [("H", None), ("B1", WITH_BIASES), ("L1", WITH_BIASES)])
def test_save_of_load_keeps_them_bit_for_bit_and_peft_loads_it(root, tokens, name, base_config):
    out = root / f"same_{name}"
    result = run(root, f'save(load("{name}"), "same_{name}")\n', name=f"same_{name}.dipm")
    assert result.code == 0, result
    given, written = tensors(root / name), tensors(out)
    full_keys = [key for key in given if ".lora_" not in key]
    assert full_keys and all(torch.equal(written[key], given[key]) and written[key].dtype == given[key].dtype
                             for key in full_keys)
    assert set(written) == set(given)  # each under the key PEFT saved it as (a wrapped module's bias: base_layer)
    saved = ["lm_head", "model.embed_tokens"] if name == "H" else None  # full module names (PEFT matches suffixes)
    assert config(out).get("modules_to_save") == saved
    assert config(out)["bias"] == config(root / name)["bias"]
    torch.testing.assert_close(peft_logits(out, tokens, base_config=base_config),
                               peft_logits(root / name, tokens, base_config=base_config), rtol=1e-5, atol=1e-6)


# ---- affine recipes --------------------------------------------------------------------------------


def test_average_equals_the_hand_made_average_under_peft(root, tokens):
    script = ('H = load("H")\nT = load("T")\nsave(0.5 * H + 0.5 * T, "avg")\n'
              'b1 = load("B1")\nb2 = load("B2")\nsave(0.3 * b1 + 0.7 * b2, "avg_b")\n')
    result = run(root, script)
    assert result.code == 0, result
    assert "full weights: lm_head, model.embed_tokens" in result.out
    parts = [(root / "H", 0.5), (root / "T", 0.5)]
    written = full_of(root / "avg")
    assert written.keys() == combined(parts).keys() and all(torch.equal(written[k], v) for k, v in combined(parts).items())
    assert config(root / "avg")["modules_to_save"] == ["lm_head", "model.embed_tokens"]
    torch.testing.assert_close(peft_logits(root / "avg", tokens), hand_logits(parts, tokens), rtol=1e-4, atol=1e-5)
    bias_parts = [(root / "B1", 0.3), (root / "B2", 0.7)]
    assert config(root / "avg_b")["bias"] == "all"
    assert all(torch.equal(full_of(root / "avg_b")[k], v) for k, v in combined(bias_parts).items())
    torch.testing.assert_close(peft_logits(root / "avg_b", tokens, base_config=WITH_BIASES),
                               hand_logits(bias_parts, tokens, base_config=WITH_BIASES), rtol=1e-4, atol=1e-5)


def test_a_classifier_score_head_is_averaged_under_peft(tmp_path, tokens):
    """task_type="SEQ_CLS": PEFT adds the `score` head to modules_to_save by itself."""
    import peft
    import transformers

    from adapters import TINY_LLAMA

    def classifier() -> torch.nn.Module:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**TINY_LLAMA, num_labels=3, pad_token_id=0)
        return transformers.LlamaForSequenceClassification(config).eval()

    for name, seed in (("A", 1), ("B", 2)):
        model = peft.get_peft_model(classifier(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                  task_type="SEQ_CLS"))
        noise = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.1 * torch.randn(param.shape, generator=noise))
        model.save_pretrained(str(tmp_path / name))
    result = run(tmp_path, 'save(0.25 * load("A") + 0.75 * load("B"), "avg")\n')
    assert result.code == 0, result
    assert config(tmp_path / "avg")["modules_to_save"] == ["score"] and set(full_of(tmp_path / "avg")) == {"score.weight"}
    loaded = peft.PeftModel.from_pretrained(classifier(), str(tmp_path / "avg"))
    with torch.no_grad():
        logits = loaded(input_ids=tokens % 63 + 1).logits.double()
    parts = [(tmp_path / "A", 0.25), (tmp_path / "B", 0.75)]
    torch.testing.assert_close(logits, hand_logits(parts, tokens % 63 + 1, model=classifier()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", ["0", "2"])
@pytest.mark.parametrize("expr, lm_head, embed", [  # (H's, T's) coefficients in lm_head and in embed_tokens
    ("H + 0.5 * (T - H)", (0.5, 0.5), (0.5, 0.5)),                      # affine although no weight is written out
    ("linear([H, T], [0.25, 0.75])", (0.25, 0.75), (0.25, 0.75)),
    ("cat([H, T], [0.6, 0.4])", (0.6, 0.4), (0.6, 0.4)),
    ("multitask([H, T], [1, 3])", (0.25, 0.75), (0.25, 0.75)),          # w / Σw
    ("where(\"lm_head\", 0.2, 0.9) * H + where(\"lm_head\", 0.8, 0.1) * T", (0.2, 0.8), (0.9, 0.1)),  # per module
    ("replace(H, T, pattern=\"embed\")", (1.0, 0.0), (0.0, 1.0)),         # embed_tokens from T, lm_head from H
    ("ramp([0.4, 0.0]) * H + ramp([0.6, 1.0]) * T", (0.4, 0.6), (0.4, 0.6)),  # no layer index: v0 (SPEC §7.2)
])
def test_affine_recipes_combine_them_with_their_coefficients(root, expr, lm_head, embed, level):
    name = f"aff_{abs(hash(expr)) % 10**8}_{level}"
    result = run(root, f'H = load("H")\nT = load("T")\nsave({expr}, "{name}")\n', "-O", level, name=f"{name}.dipm")
    assert result.code == 0, result
    written = full_of(root / name)
    for key, (h, t) in (("lm_head.weight", lm_head), ("model.embed_tokens.weight", embed)):
        expected = combined([(root / "H", h), (root / "T", t)])[key] if t else tensors(root / "H")[PREFIX + key]
        assert torch.equal(written[key], expected), (key, h, t)


@pytest.mark.parametrize("expr", ["transfer(H, T, 0.3)", "detox(H, T, 0.3)", "unlearn(H, 0.5)",
                                  "recombine(shift(dir(H), dir(T), 0.7), 2 * mag(H))"])
def test_dipm_recipes_keep_their_first_arguments_bit_for_bit(root, expr):
    name = f"keep_{abs(hash(expr)) % 10**8}"
    result = run(root, f'H = load("H")\nT = load("T")\nsave({expr}, "{name}")\n', name=f"{name}.dipm")
    assert result.code == 0, result
    given = tensors(root / "H")
    assert all(torch.equal(tensors(root / name)[key], given[key]) for key in FULL_KEYS)


# ---- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, says", [
    ('ties([H, T], [0.5, 0.5], density=0.5)', "ties(…) does not combine"),
    ("H + T", "would be 1·H + 1·T (sum 2)"),
    ("H - 0.5 * T", "sum 0.5"),
    ("dir(H)", "a direction"),
    ("lowrank(H, 2)", "lowrank(…) does not combine"),
    ("H + B1", "is in H but not in B1"),                                 # inputs disagree on which exist
    ("recombine(dir(H), mean([mag(H), mag(T)]) + mag(T))", "arithmetic on magnitudes"),
])
def test_other_recipes_stop_before_any_work_naming_modules_and_choices(root, expr, says):
    before = {name: folder_digest(root / name) for name in ("H", "T", "B1")}
    script = f'H = load("H")\nT = load("T")\nB1 = load("B1")\nsave({expr}, "refused")\n'
    for extra in ((), ("--dry-run",)):  # --dry-run computes nothing: the check needs no tensor
        result = run(root, script, *extra, name="refused.dipm")
        assert result.code == 1, result
        assert says in result.err
        assert "refused.dipm:4:" in result.err  # positioned
        assert "keep_full(x, H)" in result.err and "drop_full(x)" in result.err
        assert ("lm_head" in result.err or "bias" in result.err)
    assert not (root / "refused").exists()
    assert {name: folder_digest(root / name) for name in ("H", "T", "B1")} == before


def test_shapes_that_differ_are_refused_naming_both(root, tmp_path):
    files = dict(tensors(root / "T"))
    files[f"{PREFIX}lm_head.weight"] = torch.randn(80, 32)  # T2 added tokens: a longer head
    write_raw_adapter(tmp_path / "T2", files, config(root / "T"))
    result = run(tmp_path, f'save(0.5 * load("{root / "H"}") + 0.5 * load("T2"), "out")\n')
    assert result.code == 1, result
    assert "lm_head.weight has different shapes" in result.err and "80×32" in result.err and "64×32" in result.err
    assert not (tmp_path / "out").exists()


def test_vllm_target_refuses_them_before_work_and_drop_full_serves(root):
    result = run(root, 'save(load("H"), "served", target="vllm")\n', name="served.dipm")
    assert result.code == 1 and "vLLM serves no full-weight modules" in result.err and "drop_full" in result.err
    assert not (root / "served").exists()
    result = run(root, 'save(drop_full(load("H")), "served", target="vllm")\n', name="served.dipm")
    assert result.code == 0, result
    assert not config(root / "served").get("modules_to_save") and config(root / "served")["bias"] == "none"


# ---- the explicit choices -----------------------------------------------------------------------------


def test_keep_full_and_drop_full(root, tokens):
    import peft

    ties = "ties([{0}, {1}], [0.5, 0.5], density=0.5)"
    script = (f'H = load("H")\nT = load("T")\nHp = load("Hp")\nTp = load("Tp")\n'
              f'save(keep_full({ties.format("H", "T")}, H), "kept")\n'
              f'save(keep_full({ties.format("H", "T")}, 0.5 * H + 0.5 * T), "kept_avg")\n'
              f'save(drop_full({ties.format("H", "T")}), "dropped")\n'
              f'save({ties.format("Hp", "Tp")}, "plain")\n')
    result = run(root, script)
    assert result.code == 0, result
    plain = tensors(root / "plain")
    for name in ("kept", "kept_avg", "dropped"):  # the update is ties' own, untouched by the choice
        lora = {k: v for k, v in tensors(root / name).items() if ".lora_" in k}
        assert lora.keys() == plain.keys() and all(torch.equal(lora[k], plain[k]) for k in plain)
    given = tensors(root / "H")
    assert all(torch.equal(tensors(root / "kept")[key], given[key]) for key in FULL_KEYS)
    average = combined([(root / "H", 0.5), (root / "T", 0.5)])
    assert all(torch.equal(full_of(root / "kept_avg")[k], v) for k, v in average.items())
    assert full_of(root / "dropped") == {} and not config(root / "dropped").get("modules_to_save")
    # PEFT: the dropped output uses the base model's head and embeddings; the kept one H's
    torch.testing.assert_close(peft_logits(root / "dropped", tokens), peft_logits(root / "plain", tokens),
                               rtol=0, atol=0)
    model = peft.PeftModel.from_pretrained(tiny_llama(0), str(root / "plain"))
    with torch.no_grad():
        model.base_model.model.lm_head.weight.copy_(given[FULL_KEYS[0]])
        model.base_model.model.model.embed_tokens.weight.copy_(given[FULL_KEYS[1]])
        by_hand = model(input_ids=tokens).logits.double()
    torch.testing.assert_close(peft_logits(root / "kept", tokens), by_hand, rtol=1e-5, atol=1e-6)


# ---- the API and in-memory PEFT models ------------------------------------------------------------------


def test_api_values_carry_them(root, tmp_path):
    import peft

    import dipm_lang as dl
    from dipm_lang.errors import ExecutionError

    value = dl.evaluate("0.5 * H + 0.5 * T", H=str(root / "H"), T=str(root / "T"))
    value.save(tmp_path / "api")
    average = combined([(root / "H", 0.5), (root / "T", 0.5)])
    assert all(torch.equal(full_of(tmp_path / "api")[k], v) for k, v in average.items())
    # an AdapterValue as an input carries them on
    again = dl.evaluate("X", X=value)
    again.save(tmp_path / "again")
    assert all(torch.equal(full_of(tmp_path / "again")[k], v) for k, v in average.items())
    # an in-memory PeftModel: what save_pretrained would write
    model = peft.PeftModel.from_pretrained(tiny_llama(0), str(root / "H"))
    dl.evaluate("M", M=model).save(tmp_path / "memory")
    assert all(torch.equal(tensors(tmp_path / "memory")[key], tensors(root / "H")[key]) for key in FULL_KEYS)
    refused = dl.evaluate("ties([H, T], [0.5, 0.5], density=0.5)", H=str(root / "H"), T=str(root / "T"))
    with pytest.raises(ExecutionError, match="ties") as refusal:
        refused.save(tmp_path / "refused")
    assert "keep_full(x, H)" in refusal.value.hint and "drop_full(x)" in refusal.value.hint
    assert not (tmp_path / "refused").exists()


def test_inspect_lists_them(root):
    result = run_main("inspect", "H", "B1", cwd=root)
    assert result.code == 0, result
    assert "lm_head.weight" in result.out and "model.embed_tokens.weight" in result.out
    norm = float(torch.linalg.vector_norm(tensors(root / "H")[f"{PREFIX}lm_head.weight"].to(F64)))
    assert f"{norm:.4g}" in result.out
    assert 'trained biases (bias="all"): 14 modules' in result.out
