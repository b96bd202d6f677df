"""Rank by energy in outputs (SPEC §7.6, issue 14): `save(x, path, energy=e, max_rank=N)`, the same in
configs, `dipm eval` and the API.

Every output is read back by PEFT; each module's rank and update are compared with an independent
float64 SVD of that module's ΔW (computed here from PEFT's own reading of the inputs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters import exact_sum, make_peft_adapter, peft_deltas
from clitools import run_main

F64 = torch.float64
MODULES = ("q_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    """`adapters/{H,T,U}`: r=8 each on q/v/o_proj, so H + T − 0.5·U has rank up to 24."""
    root = tmp_path_factory.mktemp("energy")
    for name, seed in (("H", 41), ("T", 42), ("U", 43)):
        make_peft_adapter(root / "adapters" / name, seed=seed, r=8, alpha=16, target_modules=MODULES)
    return root


@pytest.fixture(scope="module")
def combined(trio) -> dict[str, torch.Tensor]:
    """ΔW of H + T − 0.5·U per module, in float64, from the files and PEFT's scales."""
    return exact_sum([(trio / "adapters" / name, weight) for name, weight in (("H", 1.0), ("T", 1.0), ("U", -0.5))])


def reference(W: torch.Tensor, energy: float | None, max_rank: int | None) -> tuple[int, torch.Tensor, float]:
    """SPEC §7.6 on the dense matrix: (k, the best rank-k approximation, the fraction of energy kept)."""
    U, S, Vh = torch.linalg.svd(W.to(F64), full_matrices=False)
    S = S[S > 1e-10 * S[0]]
    squares = (S ** 2).tolist()
    total = sum(squares)
    k = len(squares)
    if energy is not None and energy < 1:
        running, k = 0.0, 0
        while running < energy * total:
            running += squares[k]
            k += 1
        # the data must not sit on the threshold, or float32 storage could decide the rank
        assert abs(sum(squares[:k]) / total - energy) > 1e-6 and abs(sum(squares[:k - 1]) / total - energy) > 1e-6
    if max_rank is not None:
        k = min(k, max_rank)
    k = max(k, 1)
    return k, (U[:, :k] * S[:k]) @ Vh[:k], sum(squares[:k]) / total


def layer_of(module: str) -> int:
    return int(re.search(r"\.(\d+)\.", module).group(1))


# output -> (save arguments, per-module (energy, max_rank))
CASES = {
    "e50": ("energy=0.5", lambda m: (0.5, None)),
    "e90": ("energy=0.9", lambda m: (0.9, None)),
    "e99": ("energy=0.99", lambda m: (0.99, None)),
    "e100": ("energy=1", lambda m: (1.0, None)),
    "e90cap5": ("energy=0.9, max_rank=5", lambda m: (0.9, 5)),
    "cap3": ("max_rank=3", lambda m: (None, 3)),
    # schedules (SPEC §7.2): energy per module kind, max_rank per layer
    "sched": ('energy=where("q_proj", 0.6, 0.97), max_rank=ramp([4, 9])',
              lambda m: (0.6 if "q_proj" in m else 0.97, 4 if layer_of(m) == 0 else 9)),
}


@pytest.fixture(scope="module")
def energy_run(trio):
    script = 'H = load("adapters/H")\nT = load("adapters/T")\nU = load("adapters/U")\nx = H + T - 0.5 * U\n'
    script += "".join(f'save(x, "out/{name}", {args})\n' for name, (args, _) in CASES.items())
    (trio / "energy.dipm").write_text(script)
    result = run_main("run", "energy.dipm", "--force", cwd=trio)
    assert result.code == 0, result
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_energy_ranks_equal_an_independent_svd_per_module(trio, combined, energy_run, name):
    """Per module: PEFT loads the output at the SPEC's rank k, its update is the best rank-k
    approximation, the kept energy reaches e (and k − 1 directions would not), and the run summary
    reports that rank and √(1 − kept) as the error dropped."""
    out = trio / "out" / name
    deltas = peft_deltas(out)
    assert set(deltas) == set(combined)
    config = json.loads((out / "adapter_config.json").read_text())
    summary = energy_run.out.split(str(out) + "  (", 1)[1]
    ranks = set()
    for module, W in combined.items():
        energy, max_rank = CASES[name][1](module)
        k, best, kept = reference(W, energy, max_rank)
        delta, scale, rank, _ = deltas[module]
        ranks.add(rank)
        assert rank == k, (module, rank, k)
        assert float((delta.to(F64) - best).norm()) <= 2e-6 * float(W.norm()), module
        if energy is not None and max_rank is None:
            assert kept >= energy and (k == 1 or reference(W, None, k - 1)[2] < energy)
        reported = re.search(rf"{re.escape(module)}\s+rank\s+(\d+)\s+dropped (\S+)", summary)
        assert reported and int(reported[1]) == k, (module, summary[:2000])
        assert float(reported[2]) == pytest.approx(max(1 - kept, 0.0) ** 0.5, rel=2e-2, abs=1e-6)
    if len(ranks) > 1:  # ranks that differ go into rank_pattern, with an alpha_pattern keeping the scale 1
        assert config["rank_pattern"] and config["rank_pattern"] == config["alpha_pattern"]


def test_energy_1_keeps_the_exact_update(trio, combined, energy_run):
    deltas = peft_deltas(trio / "out" / "e100")
    for module, W in combined.items():
        assert float((deltas[module][0].to(F64) - W).norm()) <= 2e-6 * float(W.norm())


BAD = [
    ("energy=0", "2:23", "energy must be in (0, 1]"),
    ("energy=1.5", "2:23", "energy must be in (0, 1]"),
    ("energy=-0.1", "2:23", "energy must be in (0, 1]"),
    ("max_rank=0", "2:25", "'max_rank' must be at least 1"),
    ("max_rank=2.5", "2:25", "'max_rank' must be a whole number"),
    ("rank=4, energy=0.9", "2:31", "give rank= or energy=, not both"),
    ('energy=where("q_proj", 0.5, 1.2)', "2:23", "energy must be in (0, 1]"),
]


@pytest.mark.parametrize("args,where,message", BAD)
def test_bad_energy_arguments_are_positioned_usage_errors_and_write_nothing(trio, tmp_path, args, where, message):
    (tmp_path / "bad.dipm").write_text(f'H = load("{trio}/adapters/H")\nsave(H, "out", {args})\n')
    result = run_main("run", "bad.dipm", cwd=tmp_path)
    assert result.code == 2, result
    assert f"bad.dipm:{where}: error: save: {message}" in result.err, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dipm"]


@pytest.mark.parametrize("entry,message", [
    ("energy: 1.5", "'energy' of output '{out}' must be a fraction with 0 < energy ≤ 1, got 1.5"),
    ("energy: 0", "'energy' of output '{out}' must be a fraction with 0 < energy ≤ 1, got 0"),
    ("max_rank: 0", "'max_rank' of output '{out}' must be a positive whole number, got 0"),
    ("rank: 4\n    energy: 0.9", "output '{out}' gives both 'rank' and 'energy'; give one"),
])
def test_bad_energy_in_a_config_is_positioned_at_its_key(trio, tmp_path, entry, message):
    (tmp_path / "r.yaml").write_text(f"inputs:\n  H: {trio}/adapters/H\noutputs:\n  out:\n    expr: 2 * H\n"
                                     f"    {entry}\n")
    result = run_main("run", "r.yaml", cwd=tmp_path)
    assert result.code == 2, result
    line = 7 if "rank: 4" in entry else 6
    assert re.search(rf"r\.yaml:{line}:\d+: error: " + re.escape(message.format(out="out")), result.err), result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    ca, cb = (json.loads((f / "adapter_config.json").read_text()) for f in (a, b))
    assert (ca["r"], ca["rank_pattern"], ca["alpha_pattern"]) == (cb["r"], cb["rank_pattern"], cb["alpha_pattern"])


def test_configs_eval_and_the_api_write_what_the_script_writes(trio, energy_run, tmp_path):
    """`energy:`/`max_rank:` in YAML and TOML outputs, `dipm eval --energy --max-rank` and
    `AdapterValue.save(energy=…, max_rank=…)` give the script's tensors, bit for bit."""
    import dipm_lang as dl

    want = trio / "out" / "e90cap5"
    adapters = trio / "adapters"
    (tmp_path / "r.yaml").write_text(f"inputs: {{H: {adapters}/H, T: {adapters}/T, U: {adapters}/U}}\n"
                                     "outputs:\n  y:\n    expr: H + T - 0.5 * U\n    energy: 0.9\n    max_rank: 5\n")
    (tmp_path / "r.toml").write_text(f'[inputs]\nH = "{adapters}/H"\nT = "{adapters}/T"\nU = "{adapters}/U"\n'
                                     '[outputs.t]\nexpr = "H + T - 0.5 * U"\nenergy = 0.9\nmax_rank = 5\n')
    for recipe in ("r.yaml", "r.toml"):
        assert run_main("run", recipe, cwd=tmp_path).code == 0
    result = run_main("eval", "H + T - 0.5 * U", "--set", f"H={adapters}/H", "--set", f"T={adapters}/T",
                      "--set", f"U={adapters}/U", "-o", "e", "--energy", "0.9", "--max-rank", "5", cwd=tmp_path)
    assert result.code == 0, result
    assert re.search(r"model\.layers\.0\.self_attn\.q_proj\s+rank\s+\d+\s+dropped", result.out)
    value = dl.evaluate("H + T - 0.5 * U", H=adapters / "H", T=adapters / "T", U=adapters / "U")
    summary = value.save(tmp_path / "api", energy=0.9, max_rank=5)
    assert summary.errors and max(summary.kept.values()) <= 5
    for folder in ("y", "t", "e", "api"):
        same_tensors(tmp_path / folder, want)


@pytest.mark.parametrize("args,message", [
    (("--energy", "1.5"), "must be a fraction with 0 < energy ≤ 1"),
    (("--energy", "0"), "must be a fraction with 0 < energy ≤ 1"),
    (("--max-rank", "0"), "must be at least 1"),
    (("--rank", "3", "--energy", "0.9"), "give --rank or --energy, not both"),
])
def test_bad_eval_flags_are_usage_errors(trio, tmp_path, args, message):
    result = run_main("eval", "2 * H", "--set", f"H={trio}/adapters/H", "-o", "out", *args, cwd=tmp_path)
    assert result.code == 2 and message in result.err, result
    assert not (tmp_path / "out").exists()


def test_bad_api_arguments_raise_and_write_nothing(trio, tmp_path):
    import dipm_lang as dl
    from dipm_lang.errors import UsageError

    value = dl.evaluate("2 * H", H=trio / "adapters" / "H")
    for kwargs in (dict(energy=0.0), dict(energy=1.01), dict(max_rank=0), dict(rank=2, energy=0.5),
                   dict(energy=True)):
        with pytest.raises(UsageError):
            value.save(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
