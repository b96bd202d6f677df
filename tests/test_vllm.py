"""Serving target vLLM (issue 14): `save(…, target="vllm")`, `--target vllm` and `dipm inspect --target vllm`.

One test per rule of vLLM's LoRA loader, as read from vllm-project/vllm's source (the files and
commits are named in `dipm_lang/io/vllm.py` and `tests/vllm_reference.py`): maximum rank (enforced by
energy truncation with max_rank, refused without it), the ranks vLLM allows as max_lora_rank, one
rank and one scale for all modules (zero-padded, scales folded), the modules it can serve,
modules_to_save, biases, DoRA. Outputs are read back with `vllm_reference.load` (vLLM's reading,
written from its source) and with PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vllm_reference
from adapters import exact_sum, make_peft_adapter, peft_deltas, write_raw_adapter
from clitools import run_main

F64 = torch.float64
MODULES = ("q_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """`adapters/{H,T,U}` r=8 on q/v/o_proj (sums reach rank 24 > vLLM's default 16); `RP` with a
    rank_pattern and an alpha_pattern (scales vLLM would not reproduce)."""
    root = tmp_path_factory.mktemp("vllm")
    for name, seed in (("H", 51), ("T", 52), ("U", 53)):
        make_peft_adapter(root / "adapters" / name, seed=seed, r=8, alpha=16, target_modules=MODULES)
    make_peft_adapter(root / "adapters" / "RP", seed=54, r=8, alpha=16, target_modules=MODULES,
                      rank_pattern={"v_proj": 4}, alpha_pattern={"o_proj": 4})
    return root


def exact(root: Path, weights: dict[str, float]) -> dict[str, torch.Tensor]:
    return exact_sum([(root / "adapters" / name, weight) for name, weight in weights.items()])


def best(W: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return float((got.to(F64) - want).norm()) <= 2e-6 * float(want.norm())


def script(root: Path, body: str, name: str = "s.dipm") -> str:
    (root / name).write_text('H = load("adapters/H")\nT = load("adapters/T")\nU = load("adapters/U")\n'
                             'RP = load("adapters/RP")\n' + body)
    return name


# ---- rule: maximum rank, enforced by energy truncation where max_rank is given ---------------------

def test_max_rank_is_enforced_by_energy_truncation(root):
    """H + T + U has rank 24; with max_rank=16 every module keeps its best 16 directions (energy
    truncation at e = 1, capped), and vLLM started with --max-lora-rank 16 serves exactly that."""
    result = run_main("run", script(root, 'save(H + T + U, "out/cut", target="vllm", max_rank=16)\n'), "--force",
                      cwd=root)
    assert result.code == 0, result
    served = vllm_reference.load(root / "out" / "cut", max_lora_rank=16)
    want = exact(root, {"H": 1, "T": 1, "U": 1})
    assert served.keys() == want.keys()
    for module, W in want.items():
        assert close(served[module], best(W, min(16, W.shape[0]))), module
    with pytest.raises(vllm_reference.VllmRefused):  # … and a server below that refuses it, as dipm said
        vllm_reference.load(root / "out" / "cut", max_lora_rank=8)


def test_above_max_lora_rank_without_max_rank_is_refused_and_nothing_is_written(root):
    result = run_main("run", script(root, 'save(H + T + U, "out/refused", target="vllm")\n', "r.dipm"), cwd=root)
    assert result.code == 1, result
    assert "above max_lora_rank 16" in result.err and "max_rank=16" in result.err, result.err
    assert "--max-lora-rank 32" in result.err  # the smallest allowed value that serves rank 24
    assert not (root / "out" / "refused").exists()
    assert not [p for p in (root / "out").iterdir() if p.name.startswith(".refused")]


# ---- rule: max_lora_rank takes only the values vLLM allows ---------------------------------------

def test_max_rank_must_be_a_value_vllm_allows(root, tmp_path):
    (tmp_path / "s.dipm").write_text(f'H = load("{root}/adapters/H")\nsave(H, "o", target="vllm", max_rank=12)\n')
    result = run_main("run", "s.dipm", cwd=tmp_path)
    assert result.code == 2 and "s.dipm:2:38: error: save: vLLM's --max-lora-rank accepts only 1, 8, 16, 32" \
        in result.err, result
    # the same max_rank in a script run with --target vllm, positioned at its save
    (tmp_path / "t.dipm").write_text(f'H = load("{root}/adapters/H")\nsave(H, "o", max_rank=12)\n')
    result = run_main("run", "t.dipm", "--target", "vllm", cwd=tmp_path)
    assert result.code == 2 and "t.dipm:2:1: error: --target vllm: vLLM's --max-lora-rank accepts only" \
        in result.err, result
    result = run_main("inspect", "--target", "vllm", "--max-rank", "12", str(root / "adapters" / "H"), cwd=tmp_path)
    assert result.code == 2 and "accepts only" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.dipm", "t.dipm"]
    for allowed in vllm_reference.MAX_LORA_RANKS:  # every value vLLM allows is accepted
        assert run_main("inspect", "--target", "vllm", "--max-rank", str(allowed), str(root / "adapters" / "H"),
                        cwd=tmp_path).code == (0 if allowed >= 8 else 1)


# ---- rule: one rank and one scale for every module ----------------------------------------------

def test_one_rank_for_all_modules_zero_padded_with_scales_folded(root):
    """energy=0.9 keeps different ranks per module; the vLLM output writes them all at the largest,
    zero-padded, with r = lora_alpha and no patterns, so vLLM's one scale lora_alpha/r reproduces
    each module's update — the same one PEFT reads."""
    result = run_main("run", script(root, 'save(H + T - 0.5 * U, "out/one", energy=0.9, target="vllm")\n'
                                          'save(H + T - 0.5 * U, "out/peft", energy=0.9)\n', "one.dipm"),
                      "--force", cwd=root)
    assert result.code == 0, result
    folder = root / "out" / "one"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {} and config["lora_alpha"] == config["r"]
    kept = {m: r for m, (_, _, r, _) in peft_deltas(root / "out" / "peft").items()}
    assert len(set(kept.values())) > 1  # the modules really keep different ranks
    files = load_file(str(folder / "adapter_model.safetensors"))
    for module, rank in kept.items():
        A = files[f"base_model.model.{module}.lora_A.weight"]
        B = files[f"base_model.model.{module}.lora_B.weight"]
        assert A.shape[0] == B.shape[1] == config["r"] == max(kept.values())
        assert not A[rank:].any() and not B[:, rank:].any()  # the padding is zeros
    served = vllm_reference.load(folder)
    peft_read = peft_deltas(folder)
    reference = peft_deltas(root / "out" / "peft")
    for module in kept:
        assert close(served[module], reference[module][0].to(F64)), module
        assert close(peft_read[module][0], reference[module][0].to(F64)), module
    assert "rank " + str(config["r"]) + " for vLLM" in result.out


def test_rank_and_alpha_patterns_are_flagged_then_folded(root, tmp_path):
    """vLLM ignores rank_pattern/alpha_pattern: inspect names the modules whose scale would be wrong;
    `dipm run --target vllm` re-saves the adapter so vLLM serves PEFT's own updates."""
    result = run_main("inspect", "--target", "vllm", str(root / "adapters" / "RP"), cwd=tmp_path)
    assert result.code == 1 and "[scale]" in result.out, result
    assert "v_proj" in result.out and "o_proj" in result.out and "q_proj" not in result.out.split("[scale]")[1]
    (tmp_path / "s.dipm").write_text(f'RP = load("{root}/adapters/RP")\nsave(RP, "o")\n')
    assert run_main("run", "s.dipm", "--target", "vllm", cwd=tmp_path).code == 0
    assert run_main("inspect", "--target", "vllm", "o", cwd=tmp_path).code == 0
    served, want = vllm_reference.load(tmp_path / "o"), peft_deltas(root / "adapters" / "RP")
    for module, (delta, *_) in want.items():
        assert close(served[module], delta.to(F64)), module


def test_eval_target_vllm_writes_the_same_as_the_script(root, tmp_path):
    adapters = root / "adapters"
    result = run_main("eval", "H + T", "--set", f"H={adapters}/H", "--set", f"T={adapters}/T", "-o", "e",
                      "--target", "vllm", "--energy", "0.95", "--max-rank", "8", cwd=tmp_path)
    assert result.code == 0, result
    (tmp_path / "s.dipm").write_text(f'H = load("{adapters}/H")\nT = load("{adapters}/T")\n'
                                     'save(H + T, "s", target="vllm", energy=0.95, max_rank=8)\n')
    assert run_main("run", "s.dipm", cwd=tmp_path).code == 0
    a, b = (load_file(str(tmp_path / f / "adapter_model.safetensors")) for f in ("e", "s"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert next(iter(a.values())).shape[0] == 8 or next(iter(a.values())).shape[1] == 8


# ---- rule: the modules vLLM can serve ---------------------------------------------------------------

def test_modules_vllm_cannot_serve_are_refused(tmp_path):
    """vLLM puts LoRA on linear and embedding layers, found by the last part of their name, and reads
    only lora_A/lora_B (lora_embedding_A/B) tensors."""
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q_proj"]}
    good = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 8),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(8, 4)}
    conv = {"base_model.model.unet.conv_in.lora_A.weight": torch.ones(4, 3, 3, 3),
            "base_model.model.unet.conv_in.lora_B.weight": torch.ones(8, 4, 1, 1)}
    indexed = {"base_model.model.attn.to_out.0.lora_A.weight": torch.ones(4, 8),
               "base_model.model.attn.to_out.0.lora_B.weight": torch.ones(8, 4)}
    foreign = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.scale": torch.ones(4)}
    write_raw_adapter(tmp_path / "good", good, config)
    for name, extra, modules in (("conv", conv, "unet.conv_in"), ("indexed", indexed, "attn.to_out.0"),
                                 ("foreign", foreign, "lora_A.scale")):
        write_raw_adapter(tmp_path / name, {**good, **extra}, config)
        result = run_main("inspect", "--target", "vllm", name, cwd=tmp_path)
        assert result.code == 1 and "[modules]" in result.out and modules in result.out, (name, result)
        with pytest.raises(vllm_reference.VllmRefused):  # a Llama's LoRA layers, by the last part of a name
            vllm_reference.load(tmp_path / name, expected_modules={"q_proj", "k_proj", "v_proj", "o_proj"})
    assert run_main("inspect", "--target", "vllm", "good", cwd=tmp_path).code == 0


# ---- rules: modules_to_save, biases, DoRA -------------------------------------------------------------

@pytest.mark.parametrize("rule,kwargs,shown", [
    ("modules_to_save", dict(modules_to_save=["lm_head"]), "lm_head"),
    ("bias", dict(bias="all"), 'bias="all"'),
    ("bias", dict(lora_bias=True), "model.layers.0.self_attn.q_proj"),
    ("dora", dict(use_dora=True), "use_dora"),
])
def test_inspect_lists_full_weights_biases_and_dora(tmp_path, rule, kwargs, shown):
    make_peft_adapter(tmp_path / "a", seed=61, r=4, alpha=8, **kwargs)
    result = run_main("inspect", "--target", "vllm", "a", cwd=tmp_path)
    assert result.code == 1, result
    line = next(line for line in result.out.splitlines() if line.strip().startswith(f"[{rule}]"))
    assert shown in line, result.out
    if rule != "bias" or "bias" in kwargs:  # what the config says, vLLM's helper refuses too
        with pytest.raises(vllm_reference.VllmRefused):
            vllm_reference.load(tmp_path / "a")


@pytest.mark.parametrize("field,value,rule", [
    ("modules_to_save", ["lm_head"], "modules_to_save"), ("bias", "all", "bias"), ("use_dora", True, "dora")])
def test_an_output_vllm_would_refuse_is_not_written(root, tmp_path, monkeypatch, field, value, rule):
    """The written config goes through the same rules before the output is committed: a config that
    carries full-weight modules, biases or DoRA (as other writers may add) stops the run, exit 1."""
    import dipm_lang.io.writer as writer

    plain = writer.build_config
    monkeypatch.setattr(writer, "build_config", lambda ranks, template, **kw: {**plain(ranks, template, **kw), field: value})
    (tmp_path / "s.dipm").write_text(f'H = load("{root}/adapters/H")\nsave(2 * H, "o", target="vllm")\n')
    result = run_main("run", "s.dipm", cwd=tmp_path)
    assert result.code == 1 and f"vLLM would not serve this output: [{rule}]" in result.err, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.dipm"]


def test_inspect_json_and_a_served_adapter(root, tmp_path):
    result = run_main("inspect", "--target", "vllm", "--json", str(root / "adapters" / "H"),
                      str(root / "adapters" / "RP"), cwd=tmp_path)
    assert result.code == 1
    report = json.loads(result.out)
    assert report["max_lora_rank"] == 16
    assert [a["served"] for a in report["adapters"]] == [True, False]
    assert [r["rule"] for r in report["adapters"][1]["refusals"]] == ["scale"]
