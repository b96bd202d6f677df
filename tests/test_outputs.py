"""What every output is (issue 12): faithful to the computed value, private about where its inputs
live, readable by other users, and an adapter even when the result is zero."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapters import make_peft_adapter, peft_deltas, tiny_llama
from clitools import dipm


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pair")
    return {"H": make_peft_adapter(root / "helpful", seed=31, r=4, alpha=8),
            "T": make_peft_adapter(root / "toxic", seed=32, r=4, alpha=8)}


def test_a_zero_result_is_saved_with_a_warning_and_loads_in_peft(pair, tmp_path):
    """PEFT's own `linear([X, X], [1, -1])`: zero everywhere, written as rank-1 zero factors."""
    import peft

    (tmp_path / "s.dipm").write_text(f'X = load("{pair["H"]}")\nsave(linear([X, X], [1, -1]), "zero")\n')
    result = dipm("run", "s.dipm", cwd=tmp_path)
    assert result.code == 0, result
    assert "warning: " in result.out and "zero everywhere" in result.out
    deltas = peft_deltas(tmp_path / "zero")
    assert deltas and all(not bool(delta.any()) for delta, *_ in deltas.values())
    base = tiny_llama(0)
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        want = base(ids).logits
        got = peft.PeftModel.from_pretrained(tiny_llama(0), str(tmp_path / "zero"))(ids).logits
    assert torch.equal(got, want)


def test_partly_zero_results_name_their_zero_modules(pair, tmp_path):
    (tmp_path / "s.dipm").write_text(f'H = load("{pair["H"]}")\n'
                                     'save(select(H, "q_proj"), "part")\n')
    result = dipm("run", "s.dipm", cwd=tmp_path)
    assert result.code == 0, result
    assert "zero in 2 modules (model.layers.0.self_attn.v_proj, model.layers.1.self_attn.v_proj)" in result.out


def test_outputs_are_byte_identical_from_any_working_folder_and_name_no_local_path(pair, tmp_path):
    """The card and the metadata record each input by its folder's name and content hash; the
    recipe's absolute paths are shortened; so two working folders give the same bytes."""
    outputs = []
    for where in ("one", "two/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        (folder / "s.dipm").write_text(f'H = load("{pair["H"]}")\nT = load("{pair["T"]}")\n'
                                       'save(detox(H, T, t=0.3), "out")\n')
        assert dipm("run", "s.dipm", cwd=folder).code == 0
        outputs.append(folder / "out")
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    card = (outputs[0] / "README.md").read_text()
    with safe_open(str(outputs[0] / "adapter_model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    for text in (card, json.dumps(metadata)):
        assert str(tmp_path) not in text and str(pair["H"].parent) not in text
    inputs = json.loads(metadata["dipm_inputs"])
    assert inputs["H"]["source"] == "helpful" and inputs["T"]["source"] == "toxic"
    assert len(inputs["H"]["sha256"]) == 64
    assert 'H = load("…/helpful")' in card


def test_outputs_get_the_permissions_the_umask_gives(pair, tmp_path):
    (tmp_path / "s.dipm").write_text(f'H = load("{pair["H"]}")\nsave(2 * H, "out")\n')
    for umask in (0o022, 0o077):
        target = tmp_path / f"out{umask:o}"
        (tmp_path / "s.dipm").write_text(f'H = load("{pair["H"]}")\nsave(2 * H, "{target.name}")\n')
        previous = os.umask(umask)
        try:
            assert dipm("run", "s.dipm", cwd=tmp_path).code == 0
        finally:
            os.umask(previous)
        assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
        for file in target.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file


@pytest.fixture(scope="module")
def nearly_parallel(pair, tmp_path_factory) -> dict[str, Path]:
    """H, and N = H + 1e-4·(a little noise in B): units of N and H are nearly parallel."""
    from safetensors.torch import load_file

    from adapters import write_raw_adapter

    tensors = load_file(str(pair["H"] / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(7)
    near = {key: value + (1e-4 * value.abs().mean() * torch.randn(value.shape, generator=g)
                          if ".lora_B." in key else 0) for key, value in tensors.items()}
    config = json.loads((pair["H"] / "adapter_config.json").read_text())
    folder = write_raw_adapter(tmp_path_factory.mktemp("near") / "near", near, config)
    return {"H": pair["H"], "N": folder}


@pytest.mark.parametrize("expr", [
    "recombine(orth(dir(N), dir(H)), mag(H))",                    # a tiny residual, normalised
    "transfer(H, N, t=0.5) - H",                                  # shift toward a near-parallel unit, minus src
    "N - H",                                                       # a near-cancellation by concatenation
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_saved_float32_outputs_keep_the_computed_value(nearly_parallel, tmp_path, expr, dtype):
    """The computed value (here in `dtype`), saved in float32 and re-read through PEFT — which
    multiplies B @ A in float32 — matches it within 1e-6 relative: badly balanced factors (their
    product nearly cancels) are re-factored exactly before the cast."""
    from dipm_lang.compiler import ScriptText, compile
    from dipm_lang.io.writer import imbalance
    from dipm_lang.run import RunOptions, execute, plan, run_program

    text = f'save({expr}, "{tmp_path / "out"}")\n'
    program, _ = compile(ScriptText(text, "<t>"), {k: str(v) for k, v in nearly_parallel.items()})
    options = RunOptions(device="cpu", dtype=dtype)
    computed = execute(plan(program, options, check_outputs=False), options).saves[0].modules
    assert max(imbalance(value) for value in computed.values()) > 1e3  # the factors as computed are the problem
    run_program(program, options, quiet=True)  # the output dtype is the inputs': float32
    saved = peft_deltas(tmp_path / "out")
    for module, value in computed.items():
        want = value.B.double() @ value.A.double()
        got = saved[module][0].double()
        error = float((got - want).norm() / want.norm())
        assert error <= 1e-6, (module, error)
