"""Merges of many adapters (issue 17): batches bounded by all inputs' factors, results unchanged.

A merge of N adapters works on their concatenation (rank Σrᵢ) and float64 intermediates of that
rank, so `split_batches` bounds the bytes of all inputs' factors a batch holds
(MAX_INPUTS_BATCH_BYTES), not only one input's. How modules are batched must never change a bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters import PREFIX
from dipm_lang.run import scheduling

M, N, RANK, COUNT, LAYERS = 144, 136, 4, 8, 5
PER_MODULE = COUNT * RANK * (M + N) * 4  # bytes of all inputs' float32 factors of one module

SCRIPT = "\n".join([f'x{i} = load("X{i}")' for i in range(COUNT)] + [
    "xs = [" + ", ".join(f"x{i}" for i in range(COUNT)) + "]",
    'save(iso(xs), "out/iso")',
    'save(knots(xs, density=0.3), "out/knots")',
    'save(tsv(xs, k=2), "out/tsv")',
    'save(multitask(xs), "out/multitask")',
    'save(ties_svd(xs, [' + ", ".join(["0.25"] * COUNT) + '], density=0.5, rank=6), "out/ties_svd")',
]) + "\n"


def _adapter(path: Path, seed: int) -> None:
    path.mkdir()
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        name = f"{PREFIX}model.layers.{layer}.self_attn.q_proj"
        tensors[f"{name}.lora_A.weight"] = torch.randn(RANK, N, generator=gen) / N ** 0.5
        tensors[f"{name}.lora_B.weight"] = torch.randn(M, RANK, generator=gen)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": RANK, "lora_alpha": RANK, "target_modules": ["q_proj"],
         "base_model_name_or_path": "synthetic"}))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("many")
    for i in range(COUNT):
        _adapter(work / f"X{i}", seed=100 + i)
    (work / "s.dipm").write_text(SCRIPT)
    return work


def _run(work: Path, monkeypatch: pytest.MonkeyPatch, inputs_bytes: int) -> tuple[list[list[str]], dict]:
    """The batches and every save's factors with MAX_INPUTS_BATCH_BYTES = inputs_bytes."""
    from dipm_lang.compiler import ScriptFile, compile
    from dipm_lang.run import RunOptions, execute, plan

    monkeypatch.setattr(scheduling, "MAX_INPUTS_BATCH_BYTES", inputs_bytes)
    monkeypatch.chdir(work)
    program, _ = compile(ScriptFile(work / "s.dipm"))
    options = RunOptions(device="cpu", threads=2)
    the_plan = plan(program, options, check_outputs=False)
    batches = scheduling.schedule(the_plan)
    result = execute(the_plan, options)
    return batches, {s.node.attr("path"): {k: (v.B.clone(), v.A.clone()) for k, v in s.modules.items()}
                     for s in result.saves}


def test_many_input_batches_are_bounded_and_change_no_bit(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for all, the five same-shape modules run as one batch (one input's factors are far
    below MAX_BATCH_BYTES); bounded to 3 or 1 modules' factors of all inputs, batches of at most 3
    or 1 — and iso, knots, tsv, multitask and ties_svd give the same bits either way."""
    wide, reference = _run(work, monkeypatch, 1 << 30)
    assert [len(b) for b in wide] == [LAYERS]
    three, got3 = _run(work, monkeypatch, 3 * PER_MODULE)
    assert [len(b) for b in three] == [3, 2]
    single, got1 = _run(work, monkeypatch, 1)
    assert [len(b) for b in single] == [1] * LAYERS
    assert len(reference) == 5 and all(len(modules) == LAYERS for modules in reference.values())
    for got in (got3, got1):
        for path, modules in reference.items():
            for name, (B, A) in modules.items():
                B2, A2 = got[path][name]
                assert torch.equal(B, B2) and torch.equal(A, A2), (path, name)


def test_default_bound_puts_fifty_adapters_of_a_7b_module_in_batches_of_one() -> None:
    """The default bound at the issue's sizes: 50 rank-16 adapters of a 4096×4096 module hold 26 MB
    of factors together (above the bound: one module a batch), two hold 1 MiB (the one-input bound
    of 4 MiB decides, as before)."""
    per_module = 16 * (4096 + 4096) * 4
    assert 50 * per_module > scheduling.MAX_INPUTS_BATCH_BYTES
    assert scheduling.MAX_INPUTS_BATCH_BYTES // (2 * per_module) >= scheduling.MAX_BATCH_BYTES // per_module

