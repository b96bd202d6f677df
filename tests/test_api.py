"""The Python API: compile().run() ≡ `dipm run`, evaluate() on in-memory PeftModels ≡ the file
route, add_to_peft_model ≡ the value's delta, and `dipm eval` writes what PEFT loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dipm_lang as dl
from adapters import make_peft_adapter, peft_deltas, tiny_llama
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.cli.main import main
from dipm_lang.errors import AdapterError, DipmSyntaxError, DipmTypeError, UsageError, render

PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """H: r=4 with a rank pattern; T: rsLoRA r=8 on other modules too (so ranks and module sets differ)."""
    root = tmp_path_factory.mktemp("api")
    return {
        "H": make_peft_adapter(root / "H", seed=21, r=4, alpha=8, rank_pattern={"v_proj": 2}),
        "T": make_peft_adapter(root / "T", seed=22, r=8, alpha=16, use_rslora=True,
                               target_modules=("q_proj", "v_proj", "down_proj")),
    }


def peft_model(*adapters: tuple[str, Path]):
    """A PeftModel on the tiny base with the given (name, folder) adapters loaded."""
    import peft

    (first_name, first), *rest = adapters
    model = peft.PeftModel.from_pretrained(tiny_llama(0), str(first), adapter_name=first_name)
    for name, folder in rest:
        model.load_adapter(str(folder), adapter_name=name)
    return model


def lora_layers(model, adapter: str) -> dict[str, torch.nn.Module]:
    return {name.removeprefix(PREFIX): module for name, module in model.named_modules()
            if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {})}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_same_values(a: dl.AdapterValue, b: dl.AdapterValue) -> None:
    assert a.type == b.type and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].B, b[name].B) and torch.equal(a[name].A, b[name].A), name


# ---- compile ------------------------------------------------------------------------------

SCRIPT = """\
H = load("not/here/H")
T = load("not/here/T")
save(detox(H, T, t=0.25), "out/detox")
save(0.5 * H + 0.5 * T, "out/avg", rank=3)
"""


def test_compiled_program_runs_like_dipm_run(pair, tmp_path):
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    cli_dir.mkdir(), api_dir.mkdir()
    (cli_dir / "recipe.dipm").write_text(SCRIPT)
    assert main(["run", str(cli_dir / "recipe.dipm"), "--set", f"H={pair['H']}", "--set", f"T={pair['T']}",
                 "--device", "cpu", "-q"]) == 0

    program = dl.compile(SCRIPT, file=str(api_dir / "recipe.dipm"))
    assert program.inputs == ["H", "T"]
    summary = program.run({"H": pair["H"], "T": pair["T"]}, device="cpu")
    assert [o.path for o in summary.outputs] == [api_dir / "out/detox", api_dir / "out/avg"]
    assert summary.outputs[1].relative_error is not None
    for out in ("out/detox", "out/avg"):
        assert_identical(tensors(cli_dir / out), tensors(api_dir / out))

    # reusable: it runs again, refusing to overwrite unless forced
    with pytest.raises(AdapterError, match="already exists"):
        program.run({"H": pair["H"], "T": pair["T"]}, device="cpu")
    program.run({"H": pair["H"], "T": pair["T"]}, device="cpu", force=True)
    assert_identical(tensors(cli_dir / "out/avg"), tensors(api_dir / "out/avg"))


def test_compile_binds_names_checks_inputs_and_explains(pair, tmp_path):
    text = f'save(2 * H, "{tmp_path / "twice"}")'
    with pytest.raises(Exception, match="unknown name 'H'"):
        dl.compile(text)
    late = dl.compile(text, inputs={"H": None})  # declared now, bound at run time
    with pytest.raises(UsageError, match="input 'H' has no path"):
        late.run(device="cpu")
    with pytest.raises(UsageError, match="no input named 'X'"):
        late.run({"X": pair["H"]}, device="cpu")
    late.run({"H": pair["H"]}, device="cpu")
    bound = dl.compile(text, inputs={"H": pair["H"]})
    bound.run(device="cpu", force=True)
    explained = bound.explain()
    assert explained.startswith("pipeline: parse → lower") and "nodes: " in explained and "load" in explained and "save" in explained
    assert "1 save" in repr(bound)


# ---- evaluate -----------------------------------------------------------------------------

EXPR = "detox(H, T, t=0.3) + 0.25 * T"


def test_evaluate_on_in_memory_peft_model_matches_the_file_route(pair):
    model = peft_model(("default", pair["H"]), ("tox", pair["T"]))
    by_file = dl.evaluate(EXPR, H=pair["H"], T=pair["T"])
    in_memory = dl.evaluate(EXPR, H=model, T=(model, "tox"))
    assert by_file.type == "Delta" and len(by_file) == 6  # q, v in both layers + T's down_proj
    assert_same_values(by_file, in_memory)

    # and against PEFT itself: the active adapter read from memory is PEFT's own delta
    alone = dl.evaluate("H", H=model)
    layers = lora_layers(model, "default")
    assert alone.keys() == layers.keys()
    for name, layer in layers.items():
        torch.testing.assert_close(alone.delta(name), layer.get_delta_weight("default"), rtol=1e-6, atol=1e-7)


def test_evaluate_reads_embedding_adapters_from_memory(peft_adapters):
    model = peft_model(("default", peft_adapters["embedding"]))
    by_file = dl.evaluate("2 * E - dir(E)", E=peft_adapters["embedding"])
    in_memory = dl.evaluate("2 * E - dir(E)", E=model)
    assert any("embed_tokens" in name for name in by_file)
    assert_same_values(by_file, in_memory)


def test_evaluate_values_and_their_errors(pair, tmp_path):
    value = dl.evaluate("0.5 * H + 0.5 * T", H=pair["H"], T=pair["T"])
    # values and plain mappings of LowRank are inputs too
    assert_same_values(dl.evaluate("X", X=value), value)
    assert_same_values(dl.evaluate("X", X=dict(value)), value)
    assert all(isinstance(v, LowRank) for v in value.values())

    text = repr(value)
    assert text.startswith("<AdapterValue Delta") and "6 modules" in text and "tensor(" not in text
    assert "layer" in text and "q_proj" in text

    mags = dl.evaluate("mag(H, by=\"in\")", H=pair["H"])
    assert mags.type == "Mag[in]" and not mags.is_update
    assert all(v.shape == (32,) for v in mags.values())
    with pytest.raises(DipmTypeError):
        mags.delta(next(iter(mags)))
    with pytest.raises(DipmTypeError):
        mags.save(tmp_path / "mags")
    with pytest.raises(UsageError, match="cannot be an input"):
        dl.evaluate("X", X=mags)

    with pytest.raises(DipmSyntaxError) as error:
        dl.evaluate("dir(H) +", H=pair["H"])
    assert render(error.value, error.value.sources) == (
        "<expr>:1:8: error: unexpected end of input; expected an expression\n"
        "   1 | dir(H) +\n"
        "              ^")
    with pytest.raises(DipmTypeError, match="is a Num"):
        dl.evaluate("0.5 * 2")
    with pytest.raises(UsageError, match="input 'T' is not used"):
        dl.evaluate("H", H=pair["H"], T=pair["T"])
    with pytest.raises(DipmTypeError, match="is a Num"):
        dl.evaluate("H", H=3)  # a number input is a Num
    with pytest.raises(UsageError, match="expected a path"):
        dl.evaluate("H", H=[1, 2])

    saved = value.save(tmp_path / "avg", rank=2)
    assert saved.ranks and max(saved.ranks) == 2 and 0 < saved.relative_error < 1
    reread = dl.evaluate("X", X=tmp_path / "avg")
    assert max(reread.ranks.values()) == 2


# ---- PEFT ---------------------------------------------------------------------------------


def test_add_to_peft_model_matches_the_values_delta(pair, tmp_path):
    model = peft_model(("default", pair["H"]))
    value = dl.evaluate(EXPR, H=pair["H"], T=pair["T"])
    config = dl.add_to_peft_model(model, value, "recipe")
    assert "recipe" in model.peft_config and model.active_adapter == "default"
    assert config.rank_pattern  # modules of different ranks
    layers = lora_layers(model, "recipe")
    nonzero = {name for name, v in value.items() if v.rank > 0 and bool(v.B.any())}
    assert layers.keys() == nonzero
    for name, layer in layers.items():
        torch.testing.assert_close(layer.get_delta_weight("recipe"), value.delta(name), rtol=1e-5, atol=1e-6)

    # the new adapter behaves like the saved folder loaded by PEFT
    value.save(tmp_path / "recipe")
    reference = peft_model(("default", tmp_path / "recipe"))
    model.set_adapter("recipe")
    tokens = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference(tokens).logits, rtol=1e-5, atol=1e-5)


def test_add_to_peft_model_refuses_an_existing_name(pair):
    model = peft_model(("default", pair["H"]))
    before = {n: l.get_delta_weight("default").clone() for n, l in lora_layers(model, "default").items()}
    value = dl.evaluate("2 * H", H=pair["H"])
    with pytest.raises(UsageError, match="already has an adapter named 'default'"):
        dl.add_to_peft_model(model, value, "default")
    for name, layer in lora_layers(model, "default").items():
        assert torch.equal(layer.get_delta_weight("default"), before[name])
    dl.add_to_peft_model(model, value, "twice")
    with pytest.raises(UsageError, match="already has an adapter named 'twice'"):
        dl.add_to_peft_model(model, value, "twice")
    with pytest.raises(DipmTypeError):
        dl.add_to_peft_model(model, dl.evaluate("mag(H)", H=pair["H"]), "mags")
    assert "mags" not in model.peft_config


def test_add_to_peft_model_takes_a_zero_value_as_a_no_op_adapter(pair):
    """A sweep's λ = 0 point: an adapter whose every update is zero (the model's output unchanged)."""
    model = peft_model(("default", pair["H"]))
    zero = dl.evaluate("0 * H", H=pair["H"])
    dl.add_to_peft_model(model, zero, "nothing")
    layers = lora_layers(model, "nothing")
    assert layers.keys() == set(zero.modules)
    assert all(not layer.get_delta_weight("nothing").any() for layer in layers.values())
    tokens = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        model.set_adapter("default")
        with model.disable_adapter():
            base = model(tokens).logits
        model.set_adapter("nothing")
        torch.testing.assert_close(model(tokens).logits, base, rtol=0, atol=0)
    with pytest.raises(UsageError, match="no modules"):
        dl.add_to_peft_model(model, {}, "empty")


def test_add_to_peft_model_round_trips_embeddings(peft_adapters):
    model = peft_model(("default", peft_adapters["embedding"]))
    value = dl.evaluate("0.5 * E", E=peft_adapters["embedding"])
    with pytest.raises(UsageError, match="cannot add an adapter named .half."):
        dl.add_to_peft_model(model, value, "half")  # an nn.Module method name: PEFT refuses it
    dl.add_to_peft_model(model, value, "halved", activate=True)
    assert model.active_adapter == "halved"
    back = dl.evaluate("X", X=(model, "halved"))
    assert back.keys() == value.keys()
    for name in value:
        torch.testing.assert_close(back.delta(name), value.delta(name), rtol=1e-6, atol=1e-7)


# ---- dipm eval ----------------------------------------------------------------------------


def test_dipm_eval_writes_a_peft_loadable_folder(pair, tmp_path, capsys):
    out = tmp_path / "detox"
    assert main(["eval", "detox(H, T, t=0.3)", "--set", f"H={pair['H']}", "--set", f"T={pair['T']}",
                 "-o", str(out), "--device", "cpu"]) == 0
    assert str(out) in capsys.readouterr().out
    value = dl.evaluate("detox(H, T, t=0.3)", H=pair["H"], T=pair["T"])
    loaded = peft_deltas(out)
    assert loaded.keys() == {n for n, v in value.items() if bool(v.B.any())}
    for name, (delta, *_rest) in loaded.items():
        torch.testing.assert_close(delta, value.delta(name), rtol=1e-5, atol=1e-6)

    assert main(["eval", "2 * H", "--set", f"H={pair['H']}", "-o", str(tmp_path / "r1"), "--rank", "1", "-q"]) == 0
    assert max(dl.evaluate("X", X=tmp_path / "r1").ranks.values()) == 1

    assert main(["eval", "mag(H)", "--set", f"H={pair['H']}", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Mag[out]") and "tensor(" not in printed


def test_dipm_eval_errors_point_at_the_expression(pair, capsys):
    assert main(["eval", "detox(H, TT)", "--set", f"H={pair['H']}", "--set", f"T={pair['T']}"]) == 2
    assert capsys.readouterr().err == (
        "<expr>:1:10: error: unknown name 'TT'\n"
        "   1 | detox(H, TT)\n"
        "                ^~\n"
        "  hint: did you mean 'T'?\n"
    )
    assert main(["eval", "2 * H", "--set", f"H={pair['H']}", "--set", f"T={pair['T']}"]) == 2
    assert "does not use 'T'" in capsys.readouterr().err


def test_import_dipm_lang_stays_cheap():
    code = "import sys, dipm_lang; assert 'torch' not in sys.modules, 'torch imported'; dipm_lang.compile"
    src = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=src)
    assert result.returncode == 0, result.stderr


def test_evaluate_takes_numbers_for_sweeps(pair):
    """A number input is a Num in the expression: a sweep needs no source-text formatting."""
    for t in (0.0, 0.3, 1):
        by_name = dl.evaluate("transfer(H, T, t=t)", H=pair["H"], T=pair["T"], t=t)
        literal = dl.evaluate(f"transfer(H, T, t={float(t)!r})", H=pair["H"], T=pair["T"])
        assert by_name.keys() == literal.keys()
        for name in literal:
            assert torch.equal(by_name[name].dense(), literal[name].dense())
    with pytest.raises(UsageError, match="finite number"):
        dl.evaluate("k * H", H=pair["H"], k=float("nan"))
    with pytest.raises(UsageError, match="expected a path"):
        dl.evaluate("k * H", H=pair["H"], k=True)  # a bool is not a number here
    with pytest.raises(DipmTypeError):
        dl.evaluate("k", k=2.0)  # a number alone is not an update
    program = dl.compile('save(2 * H, "out")', inputs={"H": None})
    with pytest.raises(UsageError, match="input 'H' is an adapter; numbers are keywords"):
        program.run({"H": 0.5})
