"""Execution: factored ≡ dense reference, optimized ≡ unoptimized, PEFT round trips,
atomic multi-output writes, validation before work, and a huge module kept factored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import folder_digest, huge_adapter, make_peft_adapter
from dipm_lang.backend import dense as D
from dipm_lang.cli.main import main
from dipm_lang.compiler import ScriptText, compile
from dipm_lang.run import RunOptions, execute, plan

PROFILE = settings(deadline=None, derandomize=True, max_examples=40,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> dict[str, Path]:
    """Three PEFT adapters of different ranks, scalings and module sets."""
    root = tmp_path_factory.mktemp("trio")
    return {
        "H": make_peft_adapter(root / "H", seed=11, r=4, alpha=8),
        "T": make_peft_adapter(root / "T", seed=12, r=8, alpha=16, use_rslora=True,
                               target_modules=("q_proj", "v_proj", "down_proj")),
        "C": make_peft_adapter(root / "C", seed=13, r=4, alpha=4, target_modules=("q_proj", "v_proj", "o_proj"),
                               rank_pattern={"v_proj": 2}, alpha_pattern={"layers.0.self_attn.q_proj": 3}),
    }


def peft_deltas(path: Path) -> dict[str, torch.Tensor]:
    """Each module's ΔW as PEFT itself computes it (the independent ground truth)."""
    import peft

    from adapters import tiny_llama

    model = peft.PeftModel.from_pretrained(tiny_llama(0), str(path))
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = module.get_delta_weight("default").double()
    return out


def values(text: str, inputs: dict[str, Path], *, level: int = 2, dense: bool = False,
           dtype: str = "float64") -> dict[str, dict[str, torch.Tensor]]:
    """save path -> module -> dense ΔW, without writing anything."""
    used = {k: str(v) for k, v in inputs.items() if re.search(rf"\b{k}\b", text)}
    program, _ = compile(ScriptText(text, "<test>"), used, level=level, verify=True)
    options = RunOptions(device="cpu", dtype=dtype, dense=dense)
    result = execute(plan(program, options, check_outputs=False), options)
    out = {}
    for save in result.saves:
        out[save.node.attr("path")] = {k: (v.dense() if hasattr(v, "dense") else v).double()
                                       for k, v in save.modules.items()}
    return out


def device_values(program, device: str) -> dict[str, dict[str, torch.Tensor]]:
    """save path -> module -> dense ΔW of an optimized program run on `device` (float64)."""
    options = RunOptions(device=device, dtype="float64")
    result = execute(plan(program, options, check_outputs=False), options)
    return {s.node.attr("path"): {k: v.dense().cpu() for k, v in s.modules.items()} for s in result.saves}


def assert_same(a: dict, b: dict, rtol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    for path in a:
        # a module one side lacks is a zero update there (SPEC §2): dead inputs drop out of the union
        for module in a[path].keys() | b[path].keys():
            like = a[path].get(module, b[path].get(module))
            x, y = a[path].get(module, torch.zeros_like(like)), b[path].get(module, torch.zeros_like(like))
            scale = max(float(x.abs().max()), float(y.abs().max()), 1e-3)  # inputs are O(1e-2..1)
            assert torch.allclose(x, y, atol=rtol * scale, rtol=0), (path, module, float((x - y).abs().max()))


# ---- random well-typed programs ------------------------------------------------------

def _delta(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(["H", "T", "C"])
    if depth <= 0:
        return leaf
    d, m = _dir(depth - 1), _mag(depth - 1)
    sub = _delta(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda b, x, y: f"recombine({x}, {y})", st.just(0), d("out"), m("out")),
        st.builds(lambda x, y: f"({x} + {y})", sub, sub),
        st.builds(lambda k, x: f"{k} * {x}", st.sampled_from(["0.5", "-2", "1", "3"]), sub),
        st.builds(lambda x: f"-{x}", sub),
        st.builds(lambda x, r: f"lowrank({x}, {r})", sub, st.integers(1, 3)),
        st.builds(lambda x: f'select({x}, "q_proj|down_proj")', sub),
        st.builds(lambda x, y: f'replace({x}, {y}, layers=[1, 1])', sub, sub),
        st.builds(lambda x, y: f"detox({x}, {y}, t=0.4)", sub, sub),
        # baselines: svd/cat on any updates; elementwise and factor merges on adapters
        st.builds(lambda x, y: f"svd([{x}, {y}], [0.5, -1], rank=2)", sub, sub),
        st.builds(lambda x, y: f"cat([{x}, {y}], [2, -0.5])", sub, sub),
        st.builds(lambda f, a, b: f"{f}([{a}, {b}], [1, -0.5], density=0.6, rank=3)",
                  st.sampled_from(["ties_svd", "dare_ties_svd", "magnitude_prune_svd", "dare_linear_svd"]), leaf, leaf),
        st.builds(lambda f, a: f"{f}([{a}, {a}], [1, 0.5], density=0.6)",
                  st.sampled_from(["ties", "dare_ties", "dare_linear", "magnitude_prune"]), leaf),
    )


def _dir(depth: int):
    def make(by: str) -> st.SearchStrategy[str]:
        sub = _delta(depth)
        base = st.builds(lambda x: f'dir({x}, by="{by}")', sub)
        if depth <= 0:
            return base
        inner = _dir(depth - 1)(by)
        return st.one_of(
            base,
            st.builds(lambda x: f"reverse({x})", inner),
            st.builds(lambda x, y, t: f"shift({x}, {y}, {t})", inner, inner, st.sampled_from(["0.3", "1.5", "-0.5"])),
            st.builds(lambda x, y: f"orth({x}, {y})", inner, inner),
            st.builds(lambda x, y: f"mix([{x}, {y}], [2, 1])", inner, inner),
            st.builds(lambda x: f'normalize({x}, by="{by}")', _delta(depth - 1)),
        )

    return make


def _mag(depth: int):
    def make(by: str) -> st.SearchStrategy[str]:
        base = st.builds(lambda x: f'mag({x}, by="{by}")', _delta(depth))
        if depth <= 0:
            return base
        inner = _mag(depth - 1)(by)
        return st.one_of(base, st.builds(lambda x: f"2 * {x}", inner),
                         st.builds(lambda x, y: f"mean([{x}, {y}], [1, 3])", inner, inner),
                         st.builds(lambda x, y: f"max({x}, {y})", inner, inner))

    return make


def _program() -> st.SearchStrategy[str]:
    bys = st.sampled_from(["out", "in", "matrix"])
    delta = _delta(2)
    return st.builds(
        lambda a, b, by: f'save({a}, "out/a")\nsave({b}, "out/b")\n'
                         f'save(recombine(shift(dir(H, by="{by}"), reverse(dir(T, by="{by}")), 0.25), '
                         f'mag(C, by="{by}")), "out/c")\n',
        delta, delta, bys)


@pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py
@PROFILE
@given(text=_program())
def test_factored_matches_dense_and_optimized_matches_unoptimized(trio, text):
    reference = values(text, trio, level=0, dense=True)
    assert_same(values(text, trio, level=0), reference)
    assert_same(values(text, trio, level=2), reference)


RECIPES = {
    "transfer": "transfer(C, T, t=0.4)",
    "detox": "detox(H, T, t=0.7)",
    "unlearn": "unlearn(T, strength=0.5)",
    "multitask": "multitask([H, T, C], [1, 2, 1])",
    "by-in": 'detox(H, T, t=0.3, by="in")',
    "by-matrix": 'transfer(H, C, t=1.5, by="matrix")',
    "arith": "H - 0.5 * T + C / 4",
}


def _reference(expr: str, deltas: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The recipes written with dense.py on PEFT's own deltas, module by module."""
    names = sorted(set().union(*deltas.values()))
    shape = {n: next(d[n].shape for d in deltas.values() if n in d) for n in names}
    out = {}
    for n in names:
        H, T, C = (deltas[k].get(n, torch.zeros(shape[n], dtype=torch.float64)) for k in "HTC")
        out[n] = {
            "transfer": lambda: D.recombine(D.shift(D.dir(C), D.dir(T), 0.4), D.mag(C)),
            "detox": lambda: D.recombine(D.shift(D.dir(H), D.reverse(D.dir(T)), 0.7), D.mag(H)),
            "unlearn": lambda: D.recombine(D.reverse(D.dir(T)), 0.5 * D.mag(T)),
            "multitask": lambda: D.recombine(D.mix([D.dir(H), D.dir(T), D.dir(C)], [1, 2, 1]),
                                             (D.mag(H) + 2 * D.mag(T) + D.mag(C)) / 4),
            "by-in": lambda: D.recombine(D.shift(D.dir(H, "in"), D.reverse(D.dir(T, "in")), 0.3, "in"), D.mag(H, "in"),
                                         "in"),
            "by-matrix": lambda: D.recombine(D.shift(D.dir(H, "matrix"), D.dir(C, "matrix"), 1.5, "matrix"),
                                             D.mag(H, "matrix"), "matrix"),
            "arith": lambda: H - 0.5 * T + C / 4,
        }[expr]()
    return out


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_dipm_run_output_loads_in_peft_and_equals_reference(trio, tmp_path, recipe):
    script = tmp_path / "recipe.dipm"
    script.write_text(f'H = load()\nT = load()\nC = load()\nsave({RECIPES[recipe]}, "out")\n')
    before = {k: folder_digest(v) for k, v in trio.items()}
    code = main(["run", str(script), "--set", f"H={trio['H']}", "--set", f"T={trio['T']}",
                 "--set", f"C={trio['C']}", "-q"])
    assert code == 0
    deltas = {k: peft_deltas(v) for k, v in trio.items()}
    expected = _reference(recipe, deltas)
    got = peft_deltas(tmp_path / "out")
    for name, want in expected.items():
        have = got.get(name, torch.zeros_like(want))
        assert torch.allclose(have, want, atol=2e-5 * max(float(want.abs().max()), 1e-6)), name
    assert {k: folder_digest(v) for k, v in trio.items()} == before  # inputs untouched


def test_save_with_rank_truncates_and_reports_error(trio, tmp_path, capsys):
    script = tmp_path / "r.dipm"
    script.write_text('H = load()\nT = load()\nsave(H + T, "exact")\nsave(H + T, "r2", rank=2)\n')
    assert main(["run", str(script), "--set", f"H={trio['H']}", "--set", f"T={trio['T']}"]) == 0
    out = capsys.readouterr().out
    exact, trunc = peft_deltas(tmp_path / "exact"), peft_deltas(tmp_path / "r2")
    dropped = total = 0.0
    for name, W in exact.items():
        s = torch.linalg.svdvals(W)
        assert torch.allclose(trunc[name], D.lowrank(W, 2)[0], atol=1e-5 * float(W.abs().max()))
        dropped += float((s[2:] ** 2).sum())
        total += float((s ** 2).sum())
    reported = float(out.split("dropped ")[1].split(" relative")[0])
    assert reported == pytest.approx((dropped / total) ** 0.5, rel=1e-3)
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert config["r"] == 2


def test_second_save_failing_writes_nothing(trio, tmp_path):
    script = tmp_path / "two.dipm"
    (tmp_path / "exists").mkdir()
    script.write_text(f'H = load("{trio["H"]}")\nsave(H, "first")\nsave(2 * H, "exists")\n')
    assert main(["run", str(script)]) == 1
    assert not (tmp_path / "first").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_second_input_fails_before_any_output(trio, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    script = tmp_path / "s.dipm"
    script.write_text(f'H = load("{trio["H"]}")\nB = load("bad")\nsave(H, "first")\nsave(H + B, "second")\n')
    assert main(["run", str(script)]) == 1
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()


def test_never_writes_into_an_input_and_respects_force(trio, tmp_path):
    script = tmp_path / "s.dipm"
    script.write_text(f'H = load("{trio["H"]}")\nsave(H, "{trio["H"]}")\n')
    digest = folder_digest(trio["H"])
    assert main(["run", str(script), "--force"]) == 1
    assert folder_digest(trio["H"]) == digest
    script.write_text(f'H = load("{trio["H"]}")\nsave(2 * H, "o")\n')
    assert main(["run", str(script), "-q"]) == 0
    first = folder_digest(tmp_path / "o")
    assert main(["run", str(script), "-q"]) == 1  # exists
    assert main(["run", str(script), "-q", "--force"]) == 0
    assert folder_digest(tmp_path / "o") == first  # deterministic: byte-identical rerun


def test_dry_run_and_missing_input_path(trio, tmp_path, capsys):
    script = tmp_path / "s.dipm"
    script.write_text('H = load()\nsave(H, "o")\n')
    assert main(["run", str(script)]) == 2
    assert "--set H=PATH" in capsys.readouterr().err
    assert main(["run", str(script), "--dry-run", "--set", f"H={trio['H']}"]) == 0
    assert not (tmp_path / "o").exists()


def test_metadata_records_script_and_input_hashes(trio, tmp_path):
    import hashlib

    from safetensors import safe_open

    text = f'H = load("{trio["H"]}")\nsave(reverse(dir(H)) + H, "o")\n'
    script = tmp_path / "s.dipm"
    script.write_text(text)
    assert main(["run", str(script), "-q"]) == 0
    with safe_open(str(tmp_path / "o" / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["dipm_script_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    inputs = json.loads(meta["dipm_inputs"])
    weights = (trio["H"] / "adapter_model.safetensors").read_bytes()
    assert inputs["H"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert "save(reverse(dir(H)) + H" in (tmp_path / "o" / "README.md").read_text()


def test_huge_module_stays_factored(tmp_path):
    """200,000 × 200,000 at rank 4: the dense ΔW would need 160 GB; the factored run needs MBs."""
    size = 200_000
    src, tgt = huge_adapter(tmp_path / "src", size, 4, 1), huge_adapter(tmp_path / "tgt", size, 4, 2)
    script = tmp_path / "t.dipm"
    script.write_text(f'save(transfer(load("{src}"), load("{tgt}"), t=0.3), "out")\n')
    assert main(["run", str(script), "-q"]) == 0
    from dipm_lang.io.reader import open_adapter, read_module

    info = open_adapter(tmp_path / "out")
    (module,) = info.modules.values()
    assert (module.out_features, module.in_features, module.rank) == (size, size, 8)
    # Row norms of the result equal src's (transfer keeps magnitudes), from factors only.
    from dipm_lang.backend.lowrank import unit_norms

    got = unit_norms(read_module(info, module.name, dtype=torch.float64), "out")
    src_info = open_adapter(src)
    want = unit_norms(read_module(src_info, module.name, dtype=torch.float64), "out")
    assert torch.allclose(got, want, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(trio):
    text = 'save(detox(H, T, t=0.3), "a")\nsave(multitask([H, T, C]), "b")\n'
    program, _ = compile(ScriptText(text, "<t>"), {k: str(v) for k, v in trio.items()})
    assert_same(device_values(program, "cuda"), device_values(program, "cpu"), rtol=1e-9)


def test_commands_that_compute_nothing_never_import_torch(trio, tmp_path):
    """`dipm --help`, `check` and `explain` answer in a fraction of a second: no torch import.
    `run` compiles and starts hashing its inputs before it imports torch (io/digest.py)."""
    import subprocess
    import sys

    from clitools import cli_env

    script = tmp_path / "s.dipm"
    script.write_text(f'A = load("{trio["H"]}")\nB = load("{trio["T"]}")\nsave(transfer(A, B), "{tmp_path / "o"}")\n')
    probe = ("import sys\nfrom dipm_lang.cli.main import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
             "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    for args in (["--help"], ["check", str(script)], ["explain", str(script)]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=cli_env())
        assert done.stdout.strip().endswith("NO-TORCH"), (args, done.stdout[-200:], done.stderr[-500:])
    run_probe = ("import sys; import dipm_lang.io.digest as d; real = d.prefetch; "
                 "d.prefetch = lambda f: print('PREFETCH', sorted(f), 'torch' in sys.modules) or real(f); "
                 "from dipm_lang.cli.main import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", run_probe, "run", str(script), "--quiet"], capture_output=True,
                          text=True, env=cli_env())
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.strip() == f"PREFETCH {sorted([str(trio['H']), str(trio['T'])])} False"
