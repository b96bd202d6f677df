"""Shared fixtures: tiny PEFT adapters and image-model LoRA files built once per test session; one torch thread on request;
the experiments' smoke runs, started in the background when the session starts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adapters import folder_digest, make_peft_adapter, tiny_llama
from base_models import make_finetune, save_model
from background import Job, SmokeRun

# name -> make_peft_adapter keyword arguments; together they cover the config semantics.
ADAPTER_VARIANTS: dict[str, dict] = {
    "basic": dict(seed=1, r=4, alpha=8),
    "wide": dict(seed=2, r=8, alpha=16,
                 target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "rslora": dict(seed=3, r=4, alpha=8, use_rslora=True),
    "patterns": dict(seed=4, r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"),
                     rank_pattern={"layers.1.self_attn.q_proj": 2, "v_proj": 6},
                     alpha_pattern={"q_proj": 3, "layers.0.self_attn.v_proj": 5.5}),
    "bf16": dict(seed=5, r=4, alpha=8, dtype=torch.bfloat16),
    "embedding": dict(seed=6, r=4, alpha=4, target_modules=("embed_tokens", "q_proj")),
}


_DIGESTS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="session")
def peft_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One PEFT-saved adapter folder per entry of ADAPTER_VARIANTS (read-only for tests)."""
    root = tmp_path_factory.mktemp("peft_adapters")
    built = {name: make_peft_adapter(root / name, **kwargs) for name, kwargs in ADAPTER_VARIANTS.items()}
    # Hash them at once, before any test can touch them.
    _DIGESTS.update({name: folder_digest(path) for name, path in built.items()})
    return built


@pytest.fixture(scope="session")
def peft_adapter_digests(peft_adapters: dict[str, Path]) -> dict[str, dict[str, str]]:
    """File hashes of every shared adapter, taken right after they were built."""
    return _DIGESTS


@pytest.fixture(scope="session")
def diffusion_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny image-model LoRA files (tests/diffusion_fixtures.py: PEFT's tuners, diffusers' savers and
    converters), built once per session for the formats' tests and the language's (read-only for tests)."""
    import diffusion_fixtures as fx

    root = tmp_path_factory.mktemp("diffusion")
    return {
        "sd_diffusers_peft": fx.sd_diffusers_peft(root),
        "sd_diffusers_scripts": fx.sd_diffusers_scripts(root),
        "sd_kohya_converted": fx.sd_kohya_converted(root),
        "sdxl_kohya": fx.sdxl_kohya(root),
        "sd_loha": fx.sd_lycoris(root, "loha"),
        "sd_lokr": fx.sd_lycoris(root, "lokr"),
        "flux_diffusers": fx.flux_diffusers_peft(root),
    }


@pytest.fixture(scope="session")
def quartet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `adapters/{H,G,T,C}`, the base model `base` and a fine-tune of it `tuned`; a
    script written as `<folder>/prog.dipm` loads them by relative paths. They differ in rank, scale
    convention and module set: H and G have equal ranks wherever both have a module (one rank
    class: factor merges, `lora` and factor sums may mix them), T has rank 8, C a `rank_pattern` (rank 2 in `v_proj`) and an `alpha_pattern`; G and T
    have a `down_proj` that H and C lack, C an `o_proj` that the others lack."""
    root = tmp_path_factory.mktemp("quartet")
    make_peft_adapter(root / "adapters" / "H", seed=21, r=4, alpha=8)
    make_peft_adapter(root / "adapters" / "G", seed=22, r=4, alpha=16, use_rslora=True,
                      target_modules=("q_proj", "v_proj", "down_proj"))
    make_peft_adapter(root / "adapters" / "T", seed=23, r=8, alpha=16, target_modules=("q_proj", "v_proj", "down_proj"))
    make_peft_adapter(root / "adapters" / "C", seed=24, r=4, alpha=4, target_modules=("q_proj", "v_proj", "o_proj"),
                      rank_pattern={"v_proj": 2}, alpha_pattern={"layers.0.self_attn.q_proj": 3})
    # base weights (SPEC §7.8): the model the adapters were made on, and a fine-tune of it for extract
    save_model(tiny_llama(0), root / "base")
    make_finetune(tiny_llama(0), root / "tuned", seed=25, targets=("q_proj", "v_proj"), rank=2, noise=0.01)
    return root


@pytest.fixture
def one_torch_thread():
    """torch computes with one intra-op thread during the test (restored afterwards).

    Why: on tensors this small, a second OpenMP thread only adds hand-offs; on a busy machine it
    spins waiting for a descheduled peer. test_kernels took 19 s of CPU with 2 threads, 3 s with
    1. dipm's own runs pin their kernels to one thread anyway (backend/parallel.py); a run that
    takes its worker count from torch's setting runs its batches one after another here, the
    parallel path being tested with explicit thread counts (test_determinism, test_io_fast_paths).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- the experiments' smoke runs, in the background -------------------------------------------

# fixture (awaited by the experiment's tests) -> the package under examples/experiments/
SMOKE_RUNS = {"detox_smoke_run": "detox_miniature", "multitask_smoke_run": "multitask_miniature"}

SMOKE_DRIVER = """\
import importlib, sys
from pathlib import Path
root = Path(sys.argv[1])
for name in sys.argv[2:]:  # in turn, sharing one --cache: the toy base model is trained once
    main = importlib.import_module(f"examples.experiments.{name}.__main__").main
    for out in ("first", "second"):  # the second run finds the base model the first one cached
        code = main(["--preset", "smoke", "--out", str(root / name / out), "--cache", str(root / "cache"), "--quiet"])
        if code:
            sys.exit(code)
    (root / name / "done").write_text("")
"""


def _awaited_runs(item: pytest.Item) -> set[str]:
    return set(SMOKE_RUNS) & set(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests awaiting the background runs go last (a stable sort: the others keep their order)."""
    items.sort(key=lambda item: bool(_awaited_runs(item)))


@pytest.fixture(scope="session", autouse=True)
def smoke_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, SmokeRun]]:
    """Each experiment's `--preset smoke` twice (cold, then from the cached base model), one experiment
    after the other in one process started with the session — only those whose fixture a collected
    test uses (the experiment's tests wait for theirs with `SmokeRun.wait`)."""
    wanted = set().union(*(_awaited_runs(item) for item in request.session.items))
    names = [name for fixture, name in SMOKE_RUNS.items() if fixture in wanted]
    if not names:
        yield {}
        return
    root = tmp_path_factory.mktemp("experiments")
    job = Job([sys.executable, "-c", SMOKE_DRIVER, str(root), *names], log=root / "log.txt")
    try:
        yield {fixture: SmokeRun(root / name / "first", root / name / "second", root / "cache", job,
                                 root / name / "done")
               for fixture, name in SMOKE_RUNS.items() if name in names}
    finally:
        job.stop()


@pytest.fixture(scope="session")
def detox_smoke_run(smoke_runs: dict[str, SmokeRun]) -> SmokeRun:
    """`python -m examples.experiments.detox_miniature --preset smoke`, cold and again (test_experiment.py)."""
    return smoke_runs["detox_smoke_run"]


@pytest.fixture(scope="session")
def multitask_smoke_run(smoke_runs: dict[str, SmokeRun]) -> SmokeRun:
    """`python -m examples.experiments.multitask_miniature --preset smoke`, after the detox one, sharing its
    base model, and again (test_multitask_experiment.py)."""
    return smoke_runs["multitask_smoke_run"]
