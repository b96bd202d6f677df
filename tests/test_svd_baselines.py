"""The `*_svd` baselines at scale (SPEC §7.11): merged tile by tile, truncated by a randomized SVD.

What is promised and checked here, on modules large enough for the randomized path (≥ 128 rows and
columns; smaller ones take the full SVD, as tests/test_baselines.py covers against PEFT):
- the truncation error is within 1.01× the optimal one, on flat and on decaying spectra, against
  the merged matrix computed independently with PEFT's own `merge_utils` in float64;
- `exact=true` gives PEFT's numbers (its merge functions and full SVD) to float32 precision;
- the tiled merge equals the whole-stack merge bit for bit (every method, ragged last tiles,
  absent sources), and its pruning cut equals `kthvalue` over the whole matrix — also when the
  sample's bracket misses, for matrices of ties and zeros;
- DARE's row-by-row masks are the whole-matrix masks;
- results do not depend on batching or threads; the memory budget bounds modules in flight.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from adapters import write_raw_adapter
from dipm_lang.backend import baselines as BL
from dipm_lang.backend import delta_tiles as DT
from dipm_lang.backend import randomized as rnd
from dipm_lang.backend import scratch
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.compiler import ScriptText, compile
from dipm_lang.errors import DipmTypeError
from dipm_lang.ir.graph import print_program
from dipm_lang.ops.baselines import METHODS
from dipm_lang.run import RunOptions, execute, plan
from svd_reference import F64, update
from test_run import values

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIX = "base_model.model."
SHAPES = {"model.layers.0.self_attn.q_proj": (320, 256), "model.layers.0.mlp.up_proj": (448, 256),
          "model.layers.1.self_attn.q_proj": (320, 256), "model.layers.1.mlp.up_proj": (448, 256)}


def _adapter(path: Path, spectrum: list[float], seed: int) -> Path:
    """Modules of SHAPES with ΔW = P·diag(spectrum)·Qᵀ (scale 1), stored as PEFT factors."""
    tensors = {}
    for i, (name, (m, n)) in enumerate(SHAPES.items()):
        x = update(m, n, spectrum, seed=seed * 10 + i, dtype=torch.float32)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = x.A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = x.B
    r = len(spectrum)
    return write_raw_adapter(path, tensors, {"peft_type": "LORA", "r": r, "lora_alpha": r,
                                             "target_modules": ["q_proj", "up_proj"]})


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("svd_baselines")
    flat, decaying = [1.0] * 8, [0.6 ** i for i in range(16)]
    return {"X": _adapter(root / "X", flat, 1), "Y": _adapter(root / "Y", flat, 2),
            "G": _adapter(root / "G", decaying, 3), "H": _adapter(root / "H", decaying, 4)}


def deltas(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """ΔW per module from the files (scale 1), by plain torch."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / "adapter_model.safetensors"))
    return {name: (tensors[f"{PREFIX}{name}.lora_B.weight"].to(dtype) @ tensors[f"{PREFIX}{name}.lora_A.weight"].to(dtype))
            for name in SHAPES}


def peft_merged(kind: str, tensors: list[torch.Tensor], weights: list[float], density: float,
                sign: str = "total") -> torch.Tensor:
    """The m×n matrix PEFT's add_weighted_adapter truncates, from its own merge functions."""
    from peft.utils import merge_utils

    w = torch.tensor(weights, dtype=tensors[0].dtype)
    if kind == "ties":
        return merge_utils.ties(tensors, w, density, sign)
    if kind == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, w, density)
    if kind == "dare_linear":
        return merge_utils.dare_linear(tensors, w, density)
    return merge_utils.dare_ties(tensors, w, density, sign)


def calls_of_the_sketch(monkeypatch) -> list[int]:
    calls: list[int] = []
    iterate = rnd._subspace_iteration
    monkeypatch.setattr(rnd, "_subspace_iteration", lambda *a: calls.append(1) or iterate(*a))
    return calls


# ---- accuracy of the randomized path ---------------------------------------------------------

ACCURACY = {
    # id: (expression, PEFT merge kind, sources, weights, density, rank)
    # flat: rank-8 sources of equal singular values, pruned to 40 %: the cut at 12 falls in a flat noise floor
    "ties-flat": ('ties_svd([X, Y], [0.7, 0.5], density=0.4, rank=12)', "ties", "XY", [0.7, 0.5], 0.4, 12),
    "magnitude_prune-flat": ('magnitude_prune_svd([X, Y], [1, -0.6], density=0.3, rank=10)', "magnitude_prune",
                             "XY", [1.0, -0.6], 0.3, 10),
    # decaying: geometric spectra 0.6^i, kept (density 1) or barely pruned: the cut at 6 falls in the decay
    "dare_linear-decaying": ('dare_linear_svd([G, H], [0.8, 0.4], density=1, rank=6)', "dare_linear", "GH",
                             [0.8, 0.4], 1.0, 6),
    "ties-decaying": ('ties_svd([G, H], [1, 1], density=0.9, majority_sign_method="frequency", rank=5)', "ties",
                      "GH", [1.0, 1.0], 0.9, 5),
    "dare_ties-decaying": ('dare_ties_svd([G, H], [0.5, 1], density=1, rank=7)', "dare_ties", "GH", [0.5, 1.0],
                           1.0, 7),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(ACCURACY))
def test_randomized_truncation_is_within_one_percent_of_the_optimum(big, case, dtype, monkeypatch):
    expr, kind, sources, weights, density, rank = ACCURACY[case]
    calls = calls_of_the_sketch(monkeypatch)
    got = next(iter(values(f'save({expr}, "o")\n', big, dtype=dtype).values()))
    assert len(calls) == len(SHAPES), "every module took the randomized path"
    inputs = [deltas(big[s], F64) for s in sources]
    sign = "frequency" if "frequency" in expr else "total"
    floor = 16 * torch.finfo(getattr(torch, dtype)).eps
    for name in SHAPES:
        merged = peft_merged(kind, [d[name] for d in inputs], weights, density, sign)
        s = torch.linalg.svdvals(merged)
        optimum = float(s[rank:].norm() / s.norm())
        error = float((merged - got[name]).norm() / s.norm())
        assert optimum > 1e-3, "the cut is in the spectrum, not past its end"
        assert error <= 1.01 * optimum + floor, (name, error, optimum)
        assert torch.linalg.matrix_rank(got[name], rtol=1e-4) == rank


@pytest.mark.parametrize("expr,kind,density", [
    ('ties_svd([X, G], [0.7, 0.5], density=0.4, rank=12, exact=true)', "ties", 0.4),
    ('magnitude_prune_svd([X, Y], [1, -0.6], density=0.3, rank=10, exact=true)', "magnitude_prune", 0.3),
    ('dare_ties_svd([G, H], [0.5, 1], density=1, rank=7, exact=true)', "dare_ties", 1.0),
])
def test_exact_true_is_peft_full_svd(big, expr, kind, density, monkeypatch):
    """PEFT: the merge functions on float32 ΔWᵢ, `torch.linalg.svd`, U_k·S_k and Vh_k."""
    calls = calls_of_the_sketch(monkeypatch)
    got = next(iter(values(f'save({expr}, "o")\n', big, dtype="float32").values()))
    assert not calls
    names = expr[expr.index("[") + 1:expr.index("]")].split(", ")
    weights = [float(w) for w in expr.split("[")[2].split("]")[0].split(",")]
    rank = int(expr.split("rank=")[1].split(",")[0])
    inputs = [deltas(big[s], torch.float32) for s in names]
    for name in SHAPES:
        merged = peft_merged(kind, [d[name] for d in inputs], weights, density)
        U, S, Vh = torch.linalg.svd(merged)  # PEFT's full_matrices=True
        want = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        assert float((got[name] - want.double()).abs().max()) < 1e-5 * float(want.abs().max()), name


def test_results_do_not_depend_on_batching_or_threads(big, monkeypatch):
    text = ('save(ties_svd([X, Y], [0.7, 0.5], density=0.4, rank=12), "a")\n'
            'save(dare_ties_svd([G, Y], density=0.6, seed=5, rank=9), "b")\n')
    split = text + 'save(select(X, layers=[0, 0]), "c")\n'  # cuts the batches differently
    program, _ = compile(ScriptText(text, "<t>"), {k: str(v) for k, v in big.items() if k in text})
    runs = []
    for source, threads in ((text, 1), (text, 2), (split, 2)):
        program, _ = compile(ScriptText(source, "<t>"), {k: str(v) for k, v in big.items() if k in source})
        options = RunOptions(device="cpu", dtype="float32", threads=threads)
        result = execute(plan(program, options, check_outputs=False), options)
        runs.append({s.node.attr("path"): {k: (v.B, v.A) for k, v in s.modules.items()} for s in result.saves[:2]})
    for other in runs[1:]:
        for path, modules in runs[0].items():
            for name, (b, a) in modules.items():
                assert torch.equal(b, other[path][name][0]) and torch.equal(a, other[path][name][1]), (path, name)


def test_half_precision_runs_merge_in_float32(big):
    """bfloat16 compute: no half-precision SVD on the CPU, so the m×n work is float32 — and the result
    is a near-optimal truncation of the merge of the bfloat16-rounded inputs (PEFT's merge in float64)."""
    from safetensors.torch import load_file

    got = next(iter(values('save(ties_svd([X, Y], [0.7, 0.5], density=0.4, rank=12), "o")\n', big,
                           dtype="bfloat16").values()))
    inputs = []
    for source in "XY":
        t = load_file(str(big[source] / "adapter_model.safetensors"))
        inputs.append({name: t[f"{PREFIX}{name}.lora_B.weight"].bfloat16().to(F64)
                       @ t[f"{PREFIX}{name}.lora_A.weight"].bfloat16().to(F64) for name in SHAPES})
    for name in SHAPES:
        merged = peft_merged("ties", [d[name] for d in inputs], [0.7, 0.5], 0.4)
        s = torch.linalg.svdvals(merged)
        optimum = float(s[12:].norm() / s.norm())
        # the factors are written back in bfloat16: up to ~2⁻⁸ relative on top of the truncation
        assert float((merged - got[name]).norm() / s.norm()) <= 1.01 * optimum + 2 ** -8, name


# ---- the tiled merge and its pruning cut -----------------------------------------------------


def _sources(m: int, n: int, ranks: list[int], dtype: torch.dtype, seed: int) -> list[LowRank]:
    g = torch.Generator().manual_seed(seed)
    return [LowRank(torch.randn(m, r, generator=g, dtype=F64).to(dtype), torch.randn(r, n, generator=g, dtype=F64).to(dtype))
            for r in ranks]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,density,sign", [
    ("ties_svd", 0.5, "total"), ("ties_svd", 0.3, "frequency"), ("magnitude_prune_svd", 0.7, None),
    ("dare_linear_svd", 0.6, None), ("dare_ties_svd", 0.8, "frequency"), ("ties_svd", 0.0, "total"),
    ("ties_svd", 1.0, "total")])
def test_tiled_merge_is_the_whole_stack_merge_bit_for_bit(method, density, sign, dtype, monkeypatch):
    monkeypatch.setattr(DT, "TILE_BYTES", 3 * 2 * 3 * 52 * dtype.itemsize)  # 3 rows: 37 = 12·3 + 1
    xs = _sources(37, 52, [4, 0, 6], dtype, seed=len(method))  # the middle source is absent here
    weights = [0.7, 1.3, -0.4]
    m, n = 37, 52
    keep, masks = None, None
    if METHODS[method].random:
        keep = torch.stack([BL.dare_keep(2, "mod", i, "delta", (m, n), density) for i in range(3)])
        masks = [BL.dare_rows(2, "mod", i, "delta", n) for i in range(3)]
    assert DT.tile_rows(m, n, 3, dtype.itemsize) == 3
    got = DT.merge_delta(METHODS[method], xs, weights, density, sign, masks)
    # the whole stack of the same entries: a GEMM's bits depend on its shape, so rows come from the
    # tiles' GEMMs (tile_rows depends only on the shapes), equal to B·A to rounding
    stack = torch.stack([torch.cat([DT.delta_tile(x, a, b) for a, b in DT.row_tiles(m, 3)]) for x in xs])
    assert torch.allclose(stack, torch.stack([x.dense() for x in xs]), rtol=0, atol=1e2 * torch.finfo(dtype).eps)
    want = BL.combine(METHODS[method], stack, torch.tensor(weights, dtype=dtype), density, sign, keep)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_merge_keeps_or_drops_the_very_entries_the_cut_was_taken_on(dtype, monkeypatch):
    """Both passes build each tile by its own GEMM; the merge writes them into its stack, whose slots
    must start where a fresh tensor would (MKL's bits depend on the output's alignment), or an entry
    at the cut could be one ulp off the entry that was counted."""
    made: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    original = DT.delta_tile

    def recording(x, start, stop, out=None):
        tile = original(x, start, stop, out=out)
        made.setdefault((id(x), start, stop), []).append(tile.clone())
        return tile

    monkeypatch.setattr(DT, "delta_tile", recording)
    monkeypatch.setattr(DT, "TILE_BYTES", 2 * 3 * 5 * 1001 * dtype.itemsize)  # 5 rows of 1001 columns
    xs = _sources(97, 1001, [7, 12, 5], dtype, seed=4)
    DT.merge_delta(METHODS["ties_svd"], xs, [1.0, 0.5, -0.7], 0.3, "total")
    assert len(made) == 3 * 20
    for key, tiles in made.items():
        assert len(tiles) >= 2 and all(torch.equal(t, tiles[0]) for t in tiles[1:]), key


def _cut(W: torch.Tensor, density: float) -> float:
    """PEFT's magnitude_based_pruning cut: the k-th largest |entry|, k = int(density·N)."""
    flat = W.abs().reshape(-1)
    k = int(density * flat.numel())
    if density >= 1:
        return 0.0
    if k == 0:
        return math.inf
    return float(flat.kthvalue(flat.numel() - k + 1).values)


def _matrices() -> dict[str, LowRank]:
    g = torch.Generator().manual_seed(3)
    B = torch.randn(300, 5, generator=g)
    B[::3] = 0  # a third of the rows are zero: many exact zeros
    return {
        "random": LowRank(torch.randn(300, 5, generator=g), torch.randn(5, 200, generator=g)),
        "zero rows": LowRank(B, torch.randn(5, 200, generator=g)),
        "all equal": LowRank(torch.ones(300, 1), torch.full((1, 200), 0.5)),
        "heavy rows": LowRank(torch.randn(300, 3, generator=g) * torch.exp(3 * torch.randn(300, 1, generator=g)),
                              torch.randn(3, 200, generator=g)),
        "absent": LowRank(torch.zeros(300, 0), torch.zeros(0, 200)),
    }


@pytest.mark.parametrize("group", [None, 3 * 7 * 200])  # one group; groups of 3 tiles, the last partial
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 0.5, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("kind", sorted(_matrices()))
def test_pruning_cut_is_exact(kind, density, group, monkeypatch):
    if group:
        monkeypatch.setattr(DT, "GROUP_ENTRIES", group)
    x = _matrices()[kind]
    assert float(DT.magnitude_threshold(x, density, rows=7)) == _cut(x.dense(), density)


@pytest.mark.parametrize("group", [None, 2 * 11 * 200])
@pytest.mark.parametrize("miss", ["high", "low"])
def test_pruning_cut_is_exact_when_the_sample_misjudges(miss, group, monkeypatch):
    """A bracket entirely above or below the cut: the second pass over all magnitudes takes over."""
    if group:
        monkeypatch.setattr(DT, "GROUP_ENTRIES", group)
    x = _matrices()["random"]
    W = x.dense().abs()
    bracket = (float(W.max()) * 0.99, float(W.max())) if miss == "high" else (0.0, float(W.min()) + 1e-9)
    monkeypatch.setattr(DT, "_bracket", lambda *a: bracket)
    for density in (0.2, 0.5):
        assert float(DT.magnitude_threshold(x, density, rows=11)) == _cut(x.dense(), density)


def test_dare_row_masks_are_the_whole_mask():
    for shape, cuts in (((37, 52), [5, 1, 17, 14]), ((5, 1000), [1, 1, 3])):
        whole = BL.dare_keep(4, "layers.0.q", 1, "delta", shape, 0.4)
        next_rows = BL.dare_rows(4, "layers.0.q", 1, "delta", shape[1])
        assert torch.equal(torch.cat([next_rows(k) < 0.4 for k in cuts]), whole)


# ---- memory: the budget bounds the modules in flight -----------------------------------------


def test_budget_waits_for_room_and_runs_an_oversized_hold_alone():
    budget = scratch.ScratchBudget(100)
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first():
        with budget.hold(70):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second():
        inside.wait(5)
        with budget.hold(40):  # 70 + 40 > 100: waits for the first
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    time.sleep(0.05)
    assert order == ["first in"]
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["first in", "first out", "second in"] and budget.peak == 70 and budget.held == 0
    with budget.hold(500):  # larger than the whole budget: runs once nothing else is held
        assert budget.held == 500


def test_modules_in_flight_are_bounded_by_the_budget(big, monkeypatch):
    """With room for one module's m×n work, two worker threads run the dense work one module at a
    time, and the results are those of an unbounded run."""
    text = 'save(ties_svd([X, Y], [0.7, 0.5], density=0.4, rank=12), "o")\n'
    program, _ = compile(ScriptText(text, "<t>"), {k: str(big[k]) for k in "XY"})
    options = RunOptions(device="cpu", dtype="float32", threads=2)
    unbounded = execute(plan(program, options, check_outputs=False), options).saves[0].modules
    one = max(BL.scratch_bytes(m, n, 4, False) for m, n in SHAPES.values())
    budget = scratch.ScratchBudget(one)
    monkeypatch.setattr(scratch, "_budget", budget)
    bounded = execute(plan(program, options, check_outputs=False), options).saves[0].modules
    assert 0 < budget.peak <= one
    for name in SHAPES:
        assert torch.equal(bounded[name].B, unbounded[name].B) and torch.equal(bounded[name].A, unbounded[name].A)


# ---- the switch exact=true -------------------------------------------------------------------


def test_exact_is_a_switch_written_true_or_false(big):
    for spelled in ("true", "True", "1"):
        program, _ = compile(ScriptText(f'save(ties_svd([X, Y], density=0.5, exact={spelled}), "o")\n', "<t>"),
                             {k: str(big[k]) for k in "XY"}, verify=True)
        assert "exact=True" in print_program(program)
    program, _ = compile(ScriptText('save(ties_svd([X, Y], density=0.5, exact=false), "o")\n', "<t>"),
                         {k: str(big[k]) for k in "XY"})
    assert "exact=False" in print_program(program)
    with pytest.raises(DipmTypeError, match="'exact' must be true or false, got 0.5") as failure:
        compile(ScriptText('save(ties_svd([X, Y], density=0.5, exact=0.5), "o")\n', "<t>"),
                {k: str(big[k]) for k in "XY"})
    assert failure.value.span is not None and failure.value.span.line == 1
    # a binding named true is the user's own value (here an adapter, which is no switch)
    with pytest.raises(DipmTypeError, match="'exact' must be a constant"):
        compile(ScriptText('true = X\nsave(ties_svd([X, Y], density=0.5, exact=true), "o")\n', "<t>"),
                {k: str(big[k]) for k in "XY"})
    with pytest.raises(DipmTypeError):  # svd is exact already: no switch
        compile(ScriptText('save(svd([X, Y], exact=true), "o")\n', "<t>"), {k: str(big[k]) for k in "XY"})
