"""Determinism (issue 6): the same script and inputs give byte-identical output folders — across
runs, and across CPU runs with different thread counts (OMP_NUM_THREADS, --threads).

MKL's GEMM and LAPACK's QR reduce long dimensions in an order that depends on the intra-op
thread count, which changed the last bits of `mix`, `orth` and `rank=N` outputs between 1 and 2
threads. dipm now runs every kernel single-threaded and parallelises across module batches
instead (dipm_lang/backend/parallel.py), so each sum has one order whatever the thread count.
The adapters below have modules of several shapes (several batches, run side by side) with
reductions over ~2000 features, long enough for MKL to split them.

The reference and the environment-variable case start the real program (OMP_NUM_THREADS and
MKL_NUM_THREADS are read when a process starts); the other runs call the CLI in this process with
torch's intra-op thread count set as those variables would set it, which is what they change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters import PREFIX, folder_digest
from clitools import cli_env, dipm, run_main
from dipm_lang.ops import OPERATORS

SHAPES = [(1536 + 128 * i, 2048 - 96 * i) for i in range(6)]  # (m, n): six groups of one module each


def _adapter(path: Path, seed: int, rank: int) -> Path:
    path.mkdir()
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (m, n) in enumerate(SHAPES):
        name = f"{PREFIX}model.layers.{i}.self_attn.q_proj"
        tensors[f"{name}.lora_A.weight"] = torch.randn(rank, n, generator=gen) / n ** 0.5
        tensors[f"{name}.lora_B.weight"] = torch.randn(m, rank, generator=gen)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"],
         "base_model_name_or_path": "synthetic"}))
    return path


SCRIPT = """\
a = load("A")
b = load("B")
c = load("C")
save(detox(a, b, t=0.3), "out/detox")
save(multitask([a, b, c], [1, 2, 3]), "out/multitask")
save(orth(dir(a), dir(b)) + 0.5 * c, "out/orth")
save(a + b - 0.5 * c, "out/truncated", rank=8)
save(transfer(a, c, t=0.7, by="in"), "out/transfer_in")
save(recombine(shift(dir(a, by="matrix"), dir(c, by="matrix"), 1.5), mag(b, by="matrix")), "out/matrix")
save(replace(a, unlearn(b), layers=[2, 4]), "out/replace")
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("determinism")
    for name, seed, rank in (("A", 1, 16), ("B", 2, 24), ("C", 3, 8)):
        _adapter(work / name, seed, rank)
    (work / "s.dipm").write_text(SCRIPT)
    return work


def _run(work: Path, *args: str, **env: str) -> dict[str, str]:
    """Run the script as a new process; the digest of every output file; the outputs are removed again."""
    result = dipm("run", "s.dipm", "--device", "cpu", "-q", *args, cwd=work, env=cli_env(**env))
    assert result.code == 0, result.err
    return _digest_and_remove(work / "out")


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count, as OMP_NUM_THREADS=count gives a new process; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_here(work: Path, *args: str, torch_threads: int) -> dict[str, str]:
    """`_run` in this process, with `torch_threads` intra-op threads."""
    with _torch_threads(torch_threads):
        result = run_main("run", "s.dipm", "--device", "cpu", "-q", *args, cwd=work)
    assert result.code == 0, result.err
    return _digest_and_remove(work / "out")


def _digest_and_remove(out: Path) -> dict[str, str]:
    import shutil

    digest = folder_digest(out)
    shutil.rmtree(out)
    return digest


@pytest.fixture(scope="module")
def reference(work: Path) -> dict[str, str]:
    digest = _run(work, OMP_NUM_THREADS="1")
    assert len([k for k in digest if k.endswith(".safetensors")]) >= 7
    return digest


def test_rerun_is_byte_identical(work: Path, reference: dict[str, str]) -> None:
    assert _run_here(work, torch_threads=1) == reference


def test_thread_count_from_the_environment_does_not_matter(work: Path, reference: dict[str, str]) -> None:
    assert _run(work, OMP_NUM_THREADS="3", MKL_NUM_THREADS="3") == reference


@pytest.mark.parametrize("threads", ["1", "4"])
def test_threads_option_does_not_matter(work: Path, reference: dict[str, str], threads: str) -> None:
    assert _run_here(work, "--threads", threads, torch_threads=2) == reference


def test_threads_option_is_checked(work: Path) -> None:
    result = run_main("run", "s.dipm", "--threads", "0", cwd=work)
    assert result.code == 2 and "--threads: must be at least 1" in result.err, result.err


def test_in_process_runs_agree_and_restore_torch_threads(work: Path) -> None:
    """The Python path (plan + execute) gives the CLI's numbers, and leaves torch's setting as it was."""
    from dipm_lang.compiler import ScriptFile, compile
    from dipm_lang.run import RunOptions, execute, plan

    program, _ = compile(ScriptFile(work / "s.dipm"))
    before = torch.get_num_threads()
    values = []
    for threads in (1, 3):
        options = RunOptions(device="cpu", threads=threads)
        result = execute(plan(program, options, check_outputs=False), options)
        values.append({s.node.attr("path"): {k: (v.B.clone(), v.A.clone()) for k, v in s.modules.items()}
                       for s in result.saves})
    assert torch.get_num_threads() == before
    for path, modules in values[0].items():
        for name, (B, A) in modules.items():
            B2, A2 = values[1][path][name]
            assert torch.equal(B, B2) and torch.equal(A, A2), (path, name)


# ---- merge baselines: DARE's randomness depends only on the seed and the module ----------------

BASELINE_SCRIPT = """\
a = load("A")
b = load("B")
save(dare_ties_svd([a, b], [1, 1], density=0.7, seed=3, rank=4), "out/dare")
save(dare_ties_svd([select(a, "q_proj"), select(b, "q_proj")], [1, 1], density=0.7, seed=3, rank=4), "out/dare_q")
save(ties_svd([a, b], [1, 2], density=0.5), "out/ties")
"""


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, peft_adapters: dict[str, Path]) -> Path:
    import shutil

    if not {"dare_ties_svd", "ties_svd"} <= set(OPERATORS.callables()):
        pytest.skip("this checkout has no merge baselines")
    work = tmp_path_factory.mktemp("baselines")
    shutil.copytree(peft_adapters["basic"], work / "A")
    shutil.copytree(peft_adapters["rslora"], work / "B")
    (work / "s.dipm").write_text(BASELINE_SCRIPT)
    return work


def test_baselines_are_deterministic_across_threads(baselines: Path) -> None:
    assert _run_here(baselines, "--threads", "1", torch_threads=1) == _run_here(baselines, "--threads", "3",
                                                                                torch_threads=3)


def test_dare_drops_depend_on_the_module_not_the_batch(baselines: Path) -> None:
    """The q_proj modules come out the same whether v_proj modules share their batches or not."""
    from dipm_lang.io.reader import open_adapter, read_module

    result = run_main("run", "s.dipm", "-q", cwd=baselines)
    assert result.code == 0, result.err
    full, only_q = open_adapter(baselines / "out" / "dare"), open_adapter(baselines / "out" / "dare_q")
    assert set(only_q.modules) == {n for n in full.modules if n.endswith("q_proj")} != set()
    for name in only_q.modules:
        x, y = read_module(full, name), read_module(only_q, name)
        assert torch.equal(x.B, y.B) and torch.equal(x.A, y.A), name
