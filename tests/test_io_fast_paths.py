"""The fast paths of adapter I/O agree exactly with the plain ones.

`read_modules` reads a batch of modules straight from the file into one stack, `all_finite`
replaces `isfinite().all()`, and input hashes are computed once, in the background, and shared.
Each is checked against the straightforward computation, and against the failures it must catch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import PREFIX, write_raw_adapter
from dipm_lang.errors import AdapterError
from dipm_lang.io import digest
from dipm_lang.io.finite import all_finite, any_nonzero, first_non_finite
from dipm_lang.io.reader import open_adapter, read_module, read_modules
from dipm_lang.io.safetensors_file import SafetensorsWriter, header_bound
from safetensors.torch import load_file

LAYERS = 5


def _modules_adapter(path: Path, dtype: torch.dtype = torch.float32, r: int = 3) -> Path:
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for layer in range(LAYERS):
        for proj, (m, n) in (("q_proj", (24, 16)), ("v_proj", (24, 16)), ("up_proj", (40, 16))):
            name = f"{PREFIX}model.layers.{layer}.mlp.{proj}" if proj == "up_proj" else \
                f"{PREFIX}model.layers.{layer}.self_attn.{proj}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(r, n, generator=gen).to(dtype)
            tensors[f"{name}.lora_B.weight"] = torch.randn(m, r, generator=gen).to(dtype)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 5, "target_modules": ["q_proj", "v_proj", "up_proj"],
              "alpha_pattern": {"v_proj": 7}}
    return write_raw_adapter(path, tensors, config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compute", [torch.float32, torch.float64])
def test_read_modules_equals_the_file_and_the_scales(tmp_path: Path, dtype, compute) -> None:
    folder = _modules_adapter(tmp_path / "a", dtype)
    info = open_adapter(folder)
    stored = load_file(str(folder / "adapter_model.safetensors"))
    names = [n for n in info.modules if n.endswith("v_proj")]  # scale 7/3, not 1
    stack = read_modules(info, names, dtype=compute)
    assert stack.B.shape == (len(names), 24, 3) and stack.B.dtype == compute
    for i, name in enumerate(names):
        module = info.modules[name]
        want_b = (stored[module.b_key].to(torch.float64 if compute == torch.float64 else torch.float32)
                  * module.scale).to(compute)
        assert torch.equal(stack.B[i], want_b)
        assert torch.equal(stack.A[i], stored[module.a_key].to(compute))
        single = read_module(info, name, dtype=compute)
        assert torch.equal(single.B, stack.B[i]) and torch.equal(single.A, stack.A[i])


def test_read_modules_refuses_mixed_shapes(tmp_path: Path) -> None:
    info = open_adapter(_modules_adapter(tmp_path / "a"))
    with pytest.raises(ValueError, match="one shape"):
        read_modules(info, ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"])


def test_nan_in_a_batch_names_its_module(tmp_path: Path) -> None:
    folder = _modules_adapter(tmp_path / "a")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    bad = "model.layers.3.self_attn.q_proj"
    tensors[f"{PREFIX}{bad}.lora_A.weight"][1, 2] = float("inf")
    folder = write_raw_adapter(tmp_path / "b", tensors, {"peft_type": "LORA", "r": 3, "lora_alpha": 5,
                                                        "target_modules": ["q_proj", "v_proj", "up_proj"]})
    info = open_adapter(folder)
    names = [n for n in info.modules if n.endswith("q_proj")]
    with pytest.raises(AdapterError, match=f"{bad}.*factor A has NaN or Inf"):
        read_modules(info, names)


def test_a_file_changed_after_opening_is_refused(tmp_path: Path) -> None:
    folder = _modules_adapter(tmp_path / "a")
    info = open_adapter(folder)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, new content
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(info.stamp[1] + 10**9, info.stamp[1] + 10**9))
    with pytest.raises(AdapterError, match="changed since the adapter was opened"):
        read_module(info, "model.layers.0.self_attn.q_proj")


def test_a_truncated_file_is_an_error_not_garbage(tmp_path: Path) -> None:
    folder = _modules_adapter(tmp_path / "a")
    info = open_adapter(folder)
    weights = folder / "adapter_model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    # Even if the stamp were not checked, reading past the end must fail, not return zeros.
    object.__setattr__(info, "stamp", None)
    last = list(info.modules)[-1]
    with pytest.raises(AdapterError, match="ends early"):
        read_module(info, last)


# --------------------------------------------------------------------------- all_finite


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 3000), where=st.floats(0, 1, exclude_max=True),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_all_finite_agrees_with_isfinite(size: int, where: float, value: float, dtype) -> None:
    x = torch.randn(size, dtype=torch.float64).to(dtype)
    x[int(where * size)] = value
    assert all_finite(x) == bool(torch.isfinite(x).all())
    stack = x.reshape(1, -1).expand(3, -1).clone()
    stack[0] = 1.0
    assert first_non_finite(stack) == (None if all_finite(x) else 1)


def test_all_finite_of_empty() -> None:
    assert all_finite(torch.empty(0, 5))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 3000), nonzero_at=st.none() | st.floats(0, 1, exclude_max=True),
       value=st.sampled_from([float("nan"), float("inf"), -1e-45, 5e-324, 2.0, -0.0]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.bool]))
def test_any_nonzero_agrees_with_any(size: int, nonzero_at: float | None, value: float, dtype) -> None:
    x = torch.zeros(size, dtype=torch.float64)
    if nonzero_at is not None and size:
        x[int(nonzero_at * size)] = value
    x = x.to(dtype) if dtype.is_floating_point else x.nan_to_num(0.0, 7.0, -7.0).to(dtype)
    assert any_nonzero(x) == bool(x.any())


# --------------------------------------------------------------------------- digests


def test_digest_is_the_file_sha256_and_is_shared(tmp_path: Path) -> None:
    folder = _modules_adapter(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    digest.prefetch([str(folder)])
    first, second = open_adapter(folder), open_adapter(folder)
    assert first.digest is second.digest  # one hash per unchanged file, whoever asks
    assert first.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest.sha256_file(weights, chunk_size=7) == first.sha256  # chunking does not matter


def test_a_changed_file_gets_a_new_digest(tmp_path: Path) -> None:
    folder = _modules_adapter(tmp_path / "a")
    before = open_adapter(folder).sha256
    _modules_adapter(tmp_path / "b", r=2)
    (folder / "adapter_model.safetensors").write_bytes((tmp_path / "b" / "adapter_model.safetensors").read_bytes())
    (folder / "adapter_config.json").write_bytes((tmp_path / "b" / "adapter_config.json").read_bytes())
    after = open_adapter(folder)
    assert after.sha256 != before
    assert after.sha256 == hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_digest_is_computed_once_under_concurrent_demand(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = digest.sha256_file
    monkeypatch.setattr(digest, "sha256_file", lambda path: calls.append(path) or real(path))
    target = digest.FileDigest(_modules_adapter(tmp_path / "a") / "adapter_model.safetensors")
    target.start()
    target.start()
    digest.start_all([target])
    values = {target.value() for _ in range(3)}
    assert len(values) == 1 and len(calls) == 1


def test_prefetch_skips_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "dir_as_weights" / "adapter_model.safetensors").mkdir(parents=True)
    digest.prefetch([str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "dir_as_weights")])


def test_an_unreadable_file_reports_at_value_time(tmp_path: Path) -> None:
    target = digest.FileDigest(tmp_path / "gone.safetensors").start()
    with pytest.raises(AdapterError, match="cannot read"):
        target.value()


# --------------------------------------------------------------------------- streaming writer


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return {"b.weight": torch.randn(3, 4, generator=g), "a": torch.randn(5, generator=g).to(torch.bfloat16),
            "c": torch.randn(2, 2, generator=g).double(), "d": torch.randn(1, 7, generator=g).half()}


def test_streamed_file_loads_with_its_metadata_whatever_the_order(tmp_path: Path) -> None:
    from safetensors import safe_open

    tensors, metadata = _tensors(), {"format": "pt", "k": "v" * 50}
    bound = header_bound([(k, v.dtype, v.dim()) for k, v in tensors.items()], metadata)
    files = []
    for order in (["c", "a", "d", "b.weight"], ["b.weight", "d", "c", "a"]):
        writer = SafetensorsWriter(tmp_path / f"{order[0]}.safetensors", bound)
        for name in order:
            writer.add(name, tensors[name])
        writer.finish(metadata)
        files.append(writer.path)
        back = load_file(str(writer.path))
        assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)
        with safe_open(str(writer.path), "pt") as handle:
            assert handle.metadata() == metadata
    assert files[0].stat().st_size == files[1].stat().st_size  # same reserve, data in another order


def test_a_header_longer_than_reserved_relocates_the_data(tmp_path: Path) -> None:
    tensors = _tensors()
    writer = SafetensorsWriter(tmp_path / "x.safetensors", 8)  # far too small: a module nobody announced
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.finish({"format": "pt"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_runs_stream_their_outputs_batch_by_batch(tmp_path: Path, monkeypatch) -> None:
    """`dipm run` writes each batch as it is done and keeps none of the output in memory."""
    from dipm_lang.run import pipeline
    from dipm_lang.run.options import RunOptions
    from dipm_lang.compiler import ScriptText, compile
    from dipm_lang.io import writer

    folder = _modules_adapter(tmp_path / "a")
    calls = []
    real_add = writer.AdapterStage.add
    monkeypatch.setattr(writer.AdapterStage, "add", lambda self, modules, **kw: calls.append(len(modules))
                        or real_add(self, modules, **kw))
    real_execute = pipeline.execute
    held = []
    monkeypatch.setattr(pipeline, "execute", lambda *a, **k: held.append(real_execute(*a, **k)) or held[-1])
    program, _ = compile(ScriptText(f'x = load("{folder}")\nsave(dir(x) + x, "{tmp_path / "out"}")\n'))
    pipeline.run_program(program, RunOptions(threads=2))
    assert len(calls) >= 2 and sum(calls) == 3 * LAYERS  # one call per batch (two module shapes at least)
    assert all(not save.modules for save in held[0].saves)  # written and dropped
    assert set(load_file(str(tmp_path / "out" / "adapter_model.safetensors"))) == {
        f"{PREFIX}{name}.lora_{part}.weight" for name in open_adapter(folder).modules for part in "AB"}


def test_a_batch_of_mixed_stored_dtypes_is_read_right(tmp_path: Path) -> None:
    """Modules of one shape may be stored in different dtypes; a batch reads each as stored."""
    folder = _modules_adapter(tmp_path / "a")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for key in list(tensors):
        if "layers.1." in key or "layers.3." in key:
            tensors[key] = tensors[key].to(torch.bfloat16)
    folder = write_raw_adapter(tmp_path / "mixed", tensors, {"peft_type": "LORA", "r": 3, "lora_alpha": 3,
                                                            "target_modules": ["q_proj", "v_proj", "up_proj"]})
    info = open_adapter(folder)
    names = [n for n in info.modules if n.endswith("q_proj")]
    stack = read_modules(info, names)
    for i, name in enumerate(names):
        module = info.modules[name]
        assert torch.equal(stack.A[i], tensors[module.a_key].float())
        assert torch.equal(stack.B[i], tensors[module.b_key].float())


def test_batches_computed_ahead_of_the_writer_are_bounded() -> None:
    """Workers compute at most a few batches ahead of the batch being written: when writing is the
    slow part (a sweep writes many outputs per batch), computed batches must not pile up in memory."""
    import threading
    import time

    from dipm_lang.backend.executor import ExecutionResult
    from dipm_lang.backend.parallel import run_batches

    lock = threading.Lock()
    computed, written = [], []
    ahead = []

    class Counting:  # the executor's interface, as run_batches uses it
        on_group = None

        def run(self, groups):
            with lock:
                computed.append(groups[0][0])
                ahead.append(len(computed) - len(written))
            return ExecutionResult([], {})

    def slow_writer(part):
        time.sleep(0.01)
        with lock:
            written.append(1)

    batches = [[f"m{i}"] for i in range(40)]
    run_batches(Counting(), batches, threads=2, on_part=slow_writer)
    assert computed and sorted(computed) == sorted(b[0] for b in batches) and len(written) == 40
    assert max(ahead) <= 2 + 1 + 1  # the window (workers + 1), plus the batch being written
