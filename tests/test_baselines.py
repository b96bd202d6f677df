"""The merge baselines against PEFT 0.21's own `add_weighted_adapter`, on adapters PEFT made.

For every method PEFT shares, the sources are loaded into one PeftModel as named adapters,
merged by PEFT, and each module's `get_delta_weight` is compared with dipm's result for the
same expression. Where PEFT 0.21.2 is wrong (rsLoRA sources, rank_pattern sources) we assert
the difference is exactly the known bug. DARE (random in PEFT, seeded here) is compared at
density 1 and checked statistically and for schedule independence below it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch

from adapters import make_peft_adapter, tiny_llama
from dipm_lang.cli.main import main
from dipm_lang.compiler import ScriptText, compile
from dipm_lang.errors import DipmTypeError, ExecutionError
from dipm_lang.run import RunOptions, execute, plan
from test_run import assert_same, device_values, values

PREFIX = "base_model.model."
W = [0.7, -0.4]


@pytest.fixture(scope="module")
def srcs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("baselines")
    specs = {
        "X": dict(seed=21, r=4, alpha=7),
        "Y": dict(seed=22, r=4, alpha=5, target_modules=("q_proj", "v_proj", "o_proj")),  # o_proj: Y only
        "Z": dict(seed=23, r=8, alpha=12),  # another rank, for svd/cat
        "R": dict(seed=24, r=4, alpha=6, use_rslora=True),
        "P": dict(seed=25, r=4, alpha=6, rank_pattern={"v_proj": 2}),
        "Q": dict(seed=26, r=4, alpha=3, rank_pattern={"v_proj": 2}),
        "E1": dict(seed=27, r=4, alpha=6, target_modules=("embed_tokens", "q_proj")),
        "E2": dict(seed=28, r=4, alpha=10, target_modules=("embed_tokens", "q_proj")),
    }
    return {k: make_peft_adapter(root / k, **v) for k, v in specs.items()}


@pytest.fixture(scope="module")
def model(srcs):
    import peft

    m = peft.PeftModel.from_pretrained(tiny_llama(0), str(srcs["X"]), adapter_name="X")
    for name, path in srcs.items():
        if name != "X":
            m.load_adapter(str(path), adapter_name=name)
    return m


_counter = itertools.count()


def peft_merge(model, names: list[str], weights: list[float], combination_type: str, **kw) -> dict[str, torch.Tensor]:
    """PEFT's merged ΔW per module (in dipm's layout: embeddings transposed back to B @ A)."""
    import peft

    new = f"m{next(_counter)}"
    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.base_model.add_weighted_adapter(names, weights, new, combination_type=combination_type, **kw)
        for name, module in model.base_model.model.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and new in module.r:
                with torch.no_grad():
                    delta = module.get_delta_weight(new).double()
                if isinstance(module, peft.tuners.lora.Embedding):
                    delta = delta.T
                out[name] = delta
    finally:
        if new in model.peft_config:  # also after a failed merge, so later merges see a clean model
            model.delete_adapter(new)
    return out


def ours(expr: str, srcs, **kw) -> dict[str, torch.Tensor]:
    """dipm's ΔW per module for one expression (not written anywhere)."""
    return next(iter(values(f'save({expr}, "o")\n', srcs, **kw).values()))


def by_folder(result: dict[str, dict]) -> dict[str, dict]:
    """values() keys are absolute save paths; key them by folder name."""
    return {Path(k).name: v for k, v in result.items()}


def max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], factor: float = 1.0) -> float:
    """max |got·factor − want| relative to max |want|, over want's modules (absent = zero)."""
    worst = 0.0
    for name, w in want.items():
        g = got.get(name, torch.zeros_like(w)) * factor
        worst = max(worst, float((g - w).abs().max()) / max(float(w.abs().max()), 1e-12))
    return worst


# ---- every shared method agrees with PEFT ---------------------------------------------------

CASES = {
    # id: (function, sources, weights, more dipm arguments, PEFT combination_type, PEFT keyword arguments)
    "linear": ("linear", ["X", "Y"], W, "", "linear", {}),
    "cat": ("cat", ["X", "Z"], W, "", "cat", {}),
    "svd-default-rank": ("svd", ["X", "Z"], W, "", "svd", {}),
    "svd-rank3": ("svd", ["X", "Y"], W, ", rank=3", "svd", {"svd_rank": 3}),
    "ties": ("ties", ["X", "Y"], W, ", density=0.5", "ties", {"density": 0.5}),
    "ties-frequency": ("ties", ["X", "Y", "X"], [0.7, -0.4, 1.0], ', density=0.6, majority_sign_method="frequency"',
                       "ties", {"density": 0.6, "majority_sign_method": "frequency"}),
    "magnitude_prune": ("magnitude_prune", ["X", "Y"], W, ", density=0.3", "magnitude_prune", {"density": 0.3}),
    "dare_linear": ("dare_linear", ["X", "Y"], W, ", density=1", "dare_linear", {"density": 1.0}),
    "dare_ties": ("dare_ties", ["X", "Y"], W, ", density=1", "dare_ties", {"density": 1.0}),
    "ties_svd": ("ties_svd", ["X", "Y"], W, ", density=0.5", "ties_svd", {"density": 0.5}),
    "ties_svd-frequency": ("ties_svd", ["X", "Z"], [1.0, 1.0],
                           ', density=0.4, majority_sign_method="frequency", rank=5',
                           "ties_svd", {"density": 0.4, "majority_sign_method": "frequency", "svd_rank": 5}),
    "magnitude_prune_svd": ("magnitude_prune_svd", ["X", "Y"], W, ", density=0.5, rank=6", "magnitude_prune_svd",
                            {"density": 0.5, "svd_rank": 6}),
    "dare_linear_svd": ("dare_linear_svd", ["X", "Y"], W, ", density=1", "dare_linear_svd", {"density": 1.0}),
    "dare_ties_svd": ("dare_ties_svd", ["X", "Y"], W, ", density=1, rank=2", "dare_ties_svd",
                      {"density": 1.0, "svd_rank": 2}),
    "rank_pattern-ties": ("ties", ["P", "Q"], [1.0, 0.5], ", density=0.5", "ties", {"density": 0.5}),
    "embedding-linear": ("linear", ["E1", "E2"], W, "", "linear", {}),
    "embedding-ties_svd": ("ties_svd", ["E1", "E2"], W, ", density=0.5, rank=3", "ties_svd",
                           {"density": 0.5, "svd_rank": 3}),
}


def case_expr(case: str) -> str:
    fn, names, weights, more, _, _ = CASES[case]
    return f"{fn}([{', '.join(names)}], {weights}{more})"


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_peft_add_weighted_adapter(srcs, model, case):
    _, names, weights, _, combination_type, kw = CASES[case]
    want = peft_merge(model, names, weights, combination_type, **kw)
    assert want, "PEFT merged no module"
    got = ours(case_expr(case), srcs, dtype="float32")
    assert max_diff(got, want) < 1e-5, case
    assert set(got) <= set(want)  # no module PEFT does not have


def test_negation_and_task_arithmetic_match_peft(srcs, model):
    assert max_diff(ours("-X", srcs), peft_merge(model, ["X"], [-1.0], "linear")) < 1e-6
    assert max_diff(ours("negate(X, Y, lam=0.3)", srcs), peft_merge(model, ["X", "Y"], [1.0, -0.3], "cat")) < 1e-6
    assert max_diff(ours("task_arithmetic(X, Z, lam=2)", srcs), peft_merge(model, ["X", "Z"], [1.0, 2.0], "cat")) \
        < 1e-6


def test_linear_is_not_a_sum_of_updates(srcs):
    """PEFT's √-weight convention has cross terms: linear([x, y], [1, 1]) is not x + y."""
    lin, total = ours("linear([X, Y], [1, 1])", srcs), ours("X + Y", srcs)
    name = next(n for n in lin if "q_proj" in n)
    assert not torch.allclose(lin[name], total[name], atol=1e-3)
    # one adapter: √(w·s)·B @ sign·√(w·s)·A = w·s·B·A exactly
    assert_same(values('save(linear([X], [-0.3]), "o")', srcs), values('save(-0.3 * X, "o")', srcs))


# ---- where PEFT 0.21.2 is wrong -------------------------------------------------------------

@pytest.mark.parametrize("method,kw,new_rank", [
    ("linear", {}, 4), ("ties", {"density": 0.5}, 4), ("svd", {"svd_rank": 3}, 3), ("cat", {}, 8),
    ("ties_svd", {"density": 0.5}, 4),
])
def test_rslora_sources_peft_is_sqrt_new_rank_too_large(srcs, model, method, kw, new_rank):
    """PEFT's merged adapter inherits use_rslora with r = alpha = new_rank: scaling √new_rank, not 1."""
    args = {"density": ", density=0.5", "svd_rank": ", rank=3"}
    expr = f"{method}([R, X], [0.7, -0.4]{''.join(args[k] for k in kw)})"
    got = ours(expr, srcs)
    peft_rs = peft_merge(model, ["R", "X"], W, method, **kw)
    assert max_diff(got, peft_rs, factor=math.sqrt(new_rank)) < 1e-5  # PEFT = √new_rank · ours, exactly
    assert max_diff(got, peft_rs) > 0.4
    # with the non-rsLoRA source first PEFT's scaling is right, and agrees with us
    swapped = expr.replace("[R, X], [0.7, -0.4]", "[X, R], [-0.4, 0.7]")
    assert max_diff(ours(swapped, srcs), peft_merge(model, ["X", "R"], W[::-1], method, **kw)) < 1e-5
    if method == "cat":  # and ours is the exact weighted sum of the sources' own deltas
        assert max_diff(got, peft_merge(model, ["X", "R"], W[::-1], "cat")) < 1e-5


def test_rank_pattern_sources_load_in_peft_where_peft_output_does_not(srcs, model, tmp_path):
    import peft

    want = peft_merge(model, ["P", "Q"], [0.7, -0.4], "linear")  # PEFT's in-memory numbers are right…
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.base_model.add_weighted_adapter(["P", "Q"], [0.7, -0.4], "pq", combination_type="linear")
    model.save_pretrained(str(tmp_path / "peft"), selected_adapters=["pq"])
    model.delete_adapter("pq")
    with pytest.raises(RuntimeError, match="size mismatch"):  # …but its saved adapter cannot be loaded
        peft.PeftModel.from_pretrained(tiny_llama(0), str(tmp_path / "peft" / "pq"))

    script = tmp_path / "m.dipm"
    script.write_text(f'save(linear([load("{srcs["P"]}"), load("{srcs["Q"]}")], [0.7, -0.4]), "out")\n')
    assert main(["run", str(script), "-q"]) == 0
    loaded = peft.PeftModel.from_pretrained(tiny_llama(0), str(tmp_path / "out"))
    got = {n.removeprefix(PREFIX): m.get_delta_weight("default").double() for n, m in loaded.named_modules()
           if isinstance(m, peft.tuners.lora.LoraLayer) and "default" in m.r}
    assert max_diff(got, want) < 1e-5
    assert {m.r["default"] for n, m in loaded.named_modules() if n.endswith("v_proj") and hasattr(m, "r")} == {2}


def test_unequal_ranks_are_a_runtime_error_with_position(srcs, model, tmp_path, capsys):
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        peft_merge(model, ["X", "P"], [1.0, 1.0], "linear")  # PEFT: a bare torch error
    script = tmp_path / "m.dipm"
    script.write_text(f'X = load("{srcs["X"]}")\nP = load("{srcs["P"]}")\nsave(ties([X, P], density=0.5), "o")\n')
    assert main(["run", str(script)]) == 1
    err = capsys.readouterr().err
    assert f"{script}:3:6: error: ties: the adapters' LoRA ranks differ (item 1: rank 4, item 2: rank 2)" in err
    assert "svd(" in err and "(module model.layers.0.self_attn.v_proj)" in err
    assert not (tmp_path / "o").exists()
    # the svd family and cat take any ranks
    assert max_diff(ours("svd([X, P], [1, 1])", srcs), peft_merge(model, ["X", "P"], [1.0, 1.0], "svd")) < 1e-5


def test_single_source_merges_are_the_published_method_not_peft_linear_fallback(srcs, model):
    """PEFT turns any one-adapter merge into `linear` (ignoring density and svd_rank); we do not."""
    pruned = ours("magnitude_prune([X], [1], density=0.25)", srcs)
    fallback = peft_merge(model, ["X"], [1.0], "magnitude_prune", density=0.25)
    assert max_diff(ours("X", srcs), fallback) < 1e-6
    name = next(iter(fallback))
    assert not torch.allclose(pruned[name], fallback[name], atol=1e-4)


# ---- front-end checks -----------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("linear([X + Y, X])", "item 1 of 'xs' is a computed Delta, not an adapter"),
    ("ties([X, select(Y, \"q_proj\")], density=0.5)", "item 2 of 'xs' is a computed Delta, not an adapter"),
    ("linear([dir(X)])", "item 1 of 'xs' is a computed Dir[out], not an adapter"),
    ("svd([X + Y, X])", "give rank=N for computed updates"),
    ("ties([X, Y], density=1.5)", "density must be in [0, 1], got 1.5"),
    ("dare_linear([X, Y], density=0)", "density must be in (0, 1]"),
    ("ties([X, Y], [1], density=0.5)", "2 items but 1 weights"),
    ('ties([X, Y], density=0.5, majority_sign_method="sum")', "majority_sign_method must be"),
    ("ties([X, Y])", "missing the argument 'density'"),
    ("svd([X, Y], rank=0)", "'rank' must be at least 1"),
    ("dare_ties([X, Y], density=0.5, seed=1.5)", "'seed' must be a whole number"),
    ("svd(X)", "'xs' must be a list"),
])
def test_type_errors(srcs, text, message):
    with pytest.raises(DipmTypeError) as info:
        compile(ScriptText(f'save({text}, "o")\n', "<t>"), {"X": str(srcs["X"]), "Y": str(srcs["Y"])}, verify=True)
    assert message in info.value.message
    assert info.value.span is not None and info.value.span.line == 1


def test_hint_for_a_misspelt_sign_method(srcs):
    with pytest.raises(DipmTypeError) as info:
        compile(ScriptText('save(ties([X, Y], density=0.5, majority_sign_method="count"), "o")\n', "<t>"), {"X": str(srcs["X"]), "Y": str(srcs["Y"])})
    assert info.value.hint == 'did you mean "frequency"?'


def test_computed_updates_with_rank_and_explain(srcs):
    got = ours("svd([X + Y, -X], [1, 2], rank=2)", srcs)
    want = ours("lowrank(Y - X, 2)", srcs)
    assert max_diff(got, want) < 1e-7
    program, _ = compile(ScriptText('save(ties_svd([X, Y], density=0.5), "o")\n', "<t>"), {"X": str(srcs["X"]), "Y": str(srcs["Y"])}, verify=True)
    from dipm_lang.ir.graph import print_program

    listing = print_program(program)
    assert 'ties_svd %' in listing and "weights=[1, 1]" in listing and "density=0.5" in listing


# ---- DARE: seeded, statistically right, schedule-independent ---------------------------------

def _factors(text: str, srcs, **options):
    program, _ = compile(ScriptText(text, "<t>"), {k: str(v) for k, v in srcs.items() if k in text}, verify=True)
    opts = RunOptions(device="cpu", **options)
    result = execute(plan(program, opts, check_outputs=False), opts)
    return {Path(s.node.attr("path")).name: s.modules for s in result.saves}


@pytest.mark.parametrize("density", [0.3, 0.8])
def test_dare_keeps_a_density_fraction_and_rescales(srcs, density):
    # delta space: the result is mask ⊙ ΔW / density (rank ≥ min(m, n) keeps everything)
    got = ours(f"dare_linear_svd([X], [1], density={density}, seed=7, rank=64)", srcs)
    full = ours("X", srcs)
    kept = 0.0
    for name, w in full.items():
        keep = (got[name] / w) > 0.5 / density
        assert torch.allclose(got[name], keep * w / density, atol=1e-12 * float(w.abs().max()), rtol=0)
        kept += float(keep.double().mean()) / len(full)
    assert abs(kept - density) < 0.03  # 4 modules × 1024 entries
    # factor space: A' = √(w·s)·mask⊙A/density (and B alike), per factor
    out = _factors(f'save(dare_linear([X], [1], density={density}, seed=7), "o")', srcs, dtype="float64")["o"]
    plain = _factors('save(linear([X], [1]), "o")', srcs, dtype="float64")["o"]
    for which in ("A", "B"):
        r = torch.cat([(getattr(out[n], which) / getattr(plain[n], which)).flatten() for n in plain])
        keep = r.abs() > 0.5
        assert torch.allclose(r[keep], torch.tensor(1 / density, dtype=torch.float64), rtol=1e-8)
        assert abs(float(keep.double().mean()) - density) < 0.06  # 4 modules × 128 entries


DARE = ['dare_linear([X, Y], [0.7, -0.4], density=0.5, seed=3)',
        'dare_ties([X, Y, X], [0.7, -0.4, 1], density=0.6, majority_sign_method="frequency", seed=3)',
        'dare_linear_svd([X, Y], [0.7, -0.4], density=0.5, seed=3, rank=3)',
        'dare_ties_svd([X, Z], [0.7, -0.4], density=0.7, seed=3)']


@pytest.mark.parametrize("expr", DARE)
def test_dare_is_schedule_independent(srcs, expr):
    """The same masks whatever the batching (dense: one module per group; factored: batches, and
    batches split differently by a `select` elsewhere in the program), dtype and optimisation level."""
    text = f'save({expr}, "o")\n'
    reference = values(text, srcs, level=0, dense=True)
    assert_same(values(text, srcs, level=2), reference, rtol=1e-9)
    assert_same(values(text, srcs, level=0), reference, rtol=1e-9)
    assert_same(values(text, srcs, level=2, dtype="float32"), reference, rtol=2e-5)
    split = by_folder(values(text + 'save(select(X, layers=[0, 0]), "s")\n', srcs))
    assert_same({"o": split["o"]}, by_folder(reference), rtol=1e-9)
    other_seed = ours(expr.replace("seed=3", "seed=4"), srcs)
    first = by_folder(reference)["o"]
    assert any(not torch.allclose(other_seed[n], first[n], atol=1e-6) for n in first)


# ---- factored ≡ dense reference, -O0 ≡ -O2, for every method ---------------------------------

ALL = [case_expr(c) for c in sorted(CASES) if "embedding" not in c] + DARE + [
    "cat([dir(X), dir(Y)], [2, -1])", "cat([dir(X)])", "svd([X + Y, transfer(X, Z)], [1, 0.5], rank=5)",
    "ties_svd([X + Y, -Z], [1, 0.5], density=0.5, rank=4)", "magnitude_prune([X], [2], density=0)"]


@pytest.mark.parametrize("expr", ALL)
def test_factored_matches_dense_reference(srcs, expr):
    text = f'save({expr}, "o")\n'
    reference = values(text, srcs, level=0, dense=True)
    assert_same(values(text, srcs, level=2), reference, rtol=1e-9)
    assert_same(values(text, srcs, level=0), reference, rtol=1e-9)


def test_outputs_load_in_peft(srcs, tmp_path):
    import peft

    script = tmp_path / "m.dipm"
    text = (f'X = load("{srcs["X"]}")\nY = load("{srcs["Y"]}")\n'
            f'save(ties([X, Y], [1, 1], density=0.5), "{tmp_path / "t"}")\n'
            f'save(svd([X, Y], [0.5, 0.5]), "{tmp_path / "s"}")\n'
            f'save(dare_ties_svd([X, Y], [1, 1], density=0.5, seed=1), "{tmp_path / "d"}")\n')
    script.write_text(text)
    assert main(["run", str(script), "-q"]) == 0
    expected = by_folder(values(text, {}))
    for out in ("t", "s", "d"):
        loaded = peft.PeftModel.from_pretrained(tiny_llama(0), str(tmp_path / out))
        got = {n.removeprefix(PREFIX): m.get_delta_weight("default").double() for n, m in loaded.named_modules()
               if isinstance(m, peft.tuners.lora.LoraLayer) and "default" in m.r}
        want = expected[out]
        assert max_diff(got, want) < 1e-5, out


def test_svd_merge_of_huge_modules_stays_factored(tmp_path):
    """200,000 × 200,000 at rank 4: a dense ΔW would need 160 GB; svd merges on the factors."""
    from adapters import huge_adapter

    src, tgt = huge_adapter(tmp_path / "src", 200_000, 4, 1), huge_adapter(tmp_path / "tgt", 200_000, 4, 2)
    script = tmp_path / "t.dipm"
    script.write_text(f'save(svd([load("{src}"), load("{tgt}")], [0.5, -0.5], rank=3), "out")\n'
                      f'save(cat([load("{src}"), load("{tgt}")], [0.5, -0.5]), "cat")\n')
    assert main(["run", str(script), "-q"]) == 0
    from dipm_lang.io.reader import open_adapter

    assert [m.rank for m in open_adapter(tmp_path / "out").modules.values()] == [3]
    assert [m.rank for m in open_adapter(tmp_path / "cat").modules.values()] == [8]


def test_missing_kernel_context_is_a_clear_error(srcs):
    from dipm_lang.backend.baselines import merge_kernel
    from dipm_lang.backend.context import GroupContext
    from dipm_lang.ops.baselines import METHODS

    program, _ = compile(ScriptText('save(svd([X]), "o")\n', "<t>"), {"X": str(srcs["X"])})
    node = program.roots[0].args[0]
    with pytest.raises(ExecutionError, match="not an adapter read from a folder"):
        merge_kernel(METHODS["svd"], GroupContext(names=["m"], eps=1e-12, load=lambda n: None), node, [None])


def test_kernel_checks_ranks_too(srcs):
    """The plan refuses unequal ranks before work; the kernel itself checks again (other callers)."""
    from dipm_lang.backend.baselines import items, merge_kernel
    from dipm_lang.backend.context import GroupContext
    from dipm_lang.io.reader import open_adapter, read_module
    from dipm_lang.ops.baselines import METHODS

    infos = {str(srcs[k]): open_adapter(srcs[k]) for k in "XP"}
    program, _ = compile(ScriptText('save(dare_ties([X, P], density=0.5), "o")\n', "<t>"), {k: str(srcs[k]) for k in "XP"})
    node = program.roots[0].args[0]
    name = "model.layers.1.self_attn.v_proj"
    args = [read_module(infos[a.attr("path")], name) for a in items(node)]
    args = [type(x)(x.B[None], x.A[None]) for x in args]
    ctx = GroupContext(names=[name], eps=1e-12, load=lambda n: None, adapter=lambda n: infos[n.attr("path")])
    with pytest.raises(ExecutionError, match=r"ranks differ \(item 1: rank 4, item 2: rank 2\)"):
        merge_kernel(METHODS["dare_ties"], ctx, node, args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(srcs):
    """Same numbers on the GPU — DARE masks included (they are drawn on the CPU)."""
    text = ('save(dare_ties([X, Y], [1, -0.5], density=0.5, seed=2), "a")\n'
            'save(ties_svd([X, Z], density=0.5), "b")\nsave(svd([X, Z], [1, 1], rank=3), "c")\n'
            'save(linear([X, Y]), "d")\n')
    program, _ = compile(ScriptText(text, "<t>"), {k: str(srcs[k]) for k in "XYZ"})
    assert_same(device_values(program, "cuda"), device_values(program, "cpu"), rtol=1e-9)
