"""Adapter I/O: PEFT folders read exactly as PEFT reads them, written so PEFT loads them back.

Every reference number comes from PEFT itself (`get_delta_weight` of a loaded `PeftModel`),
never from a constant in this file.
"""

from __future__ import annotations

import json
import pickle
import struct
import shutil
from pathlib import Path

import pytest
import torch

from adapters import PREFIX, folder_digest, make_peft_adapter, peft_deltas, tiny_llama, write_raw_adapter
from dipm_lang.backend.lowrank import LowRank
from dipm_lang.errors import AdapterError
from dipm_lang.io import peft_config
from dipm_lang.io.reader import check_compatible, open_adapter, read_module
from dipm_lang.io.writer import (
    commit_staged,
    discard_staged,
    prepare_output,
    stage_adapter,
    write_adapter,
)

Q0 = "model.layers.0.self_attn.q_proj"


def _raises(match_path: Path | str, *words: str):
    """Context manager: an AdapterError whose text names `match_path` and contains `words`."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(AdapterError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            text = str(self.info.value)
            assert str(Path(match_path).name) in text, text
            for word in words:
                assert word.lower() in text.lower(), text
            return handled

    return _Check()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _lora_config(r: int = 2, **extra) -> dict:
    return {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"], **extra}


def _q_factors(r: int = 2, m: int = 32, n: int = 32, dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        f"{PREFIX}{Q0}.lora_A.weight": torch.randn(r, n, generator=gen).to(dtype),
        f"{PREFIX}{Q0}.lora_B.weight": torch.randn(m, r, generator=gen).to(dtype),
    }


# --------------------------------------------------------------------------- PEFT semantics


@pytest.mark.parametrize(
    "keys",
    [["q_proj"], ["layers.1.self_attn.q_proj", "q_proj"], ["proj"], [r"layers\.\d\.mlp\..*"], ["k_proj", "self_attn.q_proj"]],
)
def test_pattern_key_matches_peft(keys: list[str]) -> None:
    from peft.utils.other import get_pattern_key

    names = [Q0, "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj", "xq_proj", "q_proj"]
    for name in names:
        assert peft_config.get_pattern_key(keys, name) == get_pattern_key(keys, name)


def test_rslora_and_pattern_scales() -> None:
    settings = peft_config.parse_settings(
        {"r": 4, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"v_proj": 9}, "alpha_pattern": {"q_proj": 3}}
    )
    assert settings.scale("model.layers.0.self_attn.v_proj") == pytest.approx(8 / 9**0.5)
    assert settings.scale(Q0) == pytest.approx(3 / 4**0.5)


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("variant", ["basic", "wide", "rslora", "patterns", "bf16", "embedding"])
def test_read_matches_peft(peft_adapters: dict[str, Path], variant: str) -> None:
    path = peft_adapters[variant]
    info = open_adapter(path)
    reference = peft_deltas(path)
    assert set(info.modules) == set(reference)
    for name, (delta, scaling, rank, kind) in reference.items():
        module = info.modules[name]
        assert (module.rank, module.kind) == (rank, kind)
        assert module.scale == pytest.approx(scaling, rel=1e-12)
        value = read_module(info, name)
        assert value.B.dtype == torch.float32 and value.A.shape == (rank, module.in_features)
        # PEFT returns an embedding's delta in weight layout [vocab, dim]; ours is the file's B @ A.
        expected = delta.T if kind == "embedding" else delta
        torch.testing.assert_close(value.B @ value.A, expected, atol=1e-6, rtol=1e-5)


def test_adapter_info_fields(peft_adapters: dict[str, Path]) -> None:
    info = open_adapter(peft_adapters["bf16"])
    assert info.dtype == torch.bfloat16
    assert info.path == peft_adapters["bf16"].resolve()
    assert info.target_modules == json.loads((info.path / "adapter_config.json").read_text())["target_modules"]
    import hashlib

    assert info.sha256 == hashlib.sha256((info.path / "adapter_model.safetensors").read_bytes()).hexdigest()
    embedding = open_adapter(peft_adapters["embedding"])
    # PEFT stores the embedding's own weight beside its factors; it is not part of the update.
    assert all(key.endswith(".base_layer.weight") for key in embedding.ignored_keys) and embedding.ignored_keys


def test_read_module_dtype_and_fold(peft_adapters: dict[str, Path]) -> None:
    info = open_adapter(peft_adapters["patterns"])
    name = "model.layers.1.self_attn.q_proj"
    low = read_module(info, name, dtype=torch.float64)
    from safetensors import safe_open

    with safe_open(str(info.weights_file), "pt") as handle:
        raw_b = handle.get_tensor(info.modules[name].b_key).double()
    torch.testing.assert_close(low.B, raw_b * info.modules[name].scale)
    assert read_module(info, name, dtype=torch.bfloat16).A.dtype == torch.bfloat16


def test_legacy_bin_is_read_like_safetensors(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "legacy")
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "adapter_model.safetensors")), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    legacy, original = open_adapter(folder), open_adapter(peft_adapters["basic"])
    assert legacy.weights_file.name == "adapter_model.bin"
    for name in original.modules:
        torch.testing.assert_close(read_module(legacy, name).B, read_module(original, name).B, atol=0, rtol=0)


# --------------------------------------------------------------------------- read errors


def test_missing_folder(tmp_path: Path) -> None:
    with _raises(tmp_path / "nowhere", "not found"):
        open_adapter(tmp_path / "nowhere")


def test_missing_config(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    (folder / "adapter_config.json").unlink()
    with _raises(folder / "adapter_config.json", "missing"):
        open_adapter(folder)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_config(peft_adapters: dict[str, Path], tmp_path: Path, text: str) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    (folder / "adapter_config.json").write_text(text)
    with _raises(folder / "adapter_config.json"):
        open_adapter(folder)


def test_unknown_peft_type(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    _edit_config(folder, peft_type="IA3")
    with _raises(folder / "adapter_config.json", "IA3"):
        open_adapter(folder)


def test_dora_opens_only_when_config_and_file_agree(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    """A DoRA adapter opens (its meaning needs base weights: the planner asks for them, see
    test_base_language.py); use_dora without magnitude vectors, or one without use_dora, is refused."""
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    _edit_config(folder, use_dora=True)
    with _raises(folder / "adapter_config.json", "lora_magnitude_vector", "use_dora"):
        open_adapter(folder)
    # A magnitude vector in the file is refused when the config does not say DoRA.
    tensors = _q_factors()
    tensors[f"{PREFIX}{Q0}.lora_magnitude_vector"] = torch.ones(32)
    raw = write_raw_adapter(tmp_path / "b", tensors, _lora_config())
    with _raises(raw / "adapter_model.safetensors", "DoRA"):
        open_adapter(raw)
    good = write_raw_adapter(tmp_path / "c", tensors, _lora_config(use_dora=True))
    info = open_adapter(good)
    assert info.dora and info.modules[Q0].m_key == f"{PREFIX}{Q0}.lora_magnitude_vector"
    assert torch.equal(info.read_magnitudes([Q0])[0], torch.ones(32))
    tensors[f"{PREFIX}{Q0}.lora_magnitude_vector"] = torch.ones(31)
    wrong = write_raw_adapter(tmp_path / "d", tensors, _lora_config(use_dora=True))
    with _raises(wrong / "adapter_model.safetensors", "magnitude", "[32]"):
        open_adapter(wrong)


def test_lora_bias_is_refused(tmp_path: Path) -> None:
    folder = write_raw_adapter(tmp_path / "a", _q_factors(), _lora_config(lora_bias=True))
    with _raises(folder / "adapter_config.json", "bias"):
        open_adapter(folder)
    tensors = _q_factors()
    tensors[f"{PREFIX}{Q0}.lora_B.bias"] = torch.ones(32)
    folder = write_raw_adapter(tmp_path / "b", tensors, _lora_config())
    with _raises(folder / "adapter_model.safetensors", "bias"):
        open_adapter(folder)


def test_truncated_safetensors(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-17])
    with _raises(weights, "safetensors"):
        open_adapter(folder)


def _rewrite_header(weights: Path, edit) -> None:
    data = weights.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def test_header_whose_offsets_lie(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    weights = folder / "adapter_model.safetensors"

    def stretch(header: dict) -> None:
        key = next(k for k in header if k != "__metadata__")
        start, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = [start, end + 8]

    _rewrite_header(weights, stretch)
    with _raises(weights, "safetensors"):
        open_adapter(folder)


def test_header_length_that_lies(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    for bad in (length + 40, 2**40, 3):
        weights.write_bytes(struct.pack("<Q", bad) + data[8:])
        with _raises(weights, "safetensors"):
            open_adapter(folder)


def test_integer_dtype(tmp_path: Path) -> None:
    tensors = {k: (v * 10).to(torch.int32) for k, v in _q_factors().items()}
    folder = write_raw_adapter(tmp_path / "a", tensors, _lora_config())
    with _raises(folder / "adapter_model.safetensors", "floating", "int32"):
        open_adapter(folder)


def test_nan_is_caught_at_read(tmp_path: Path) -> None:
    tensors = _q_factors()
    tensors[f"{PREFIX}{Q0}.lora_B.weight"][3, 1] = float("nan")
    folder = write_raw_adapter(tmp_path / "a", tensors, _lora_config())
    info = open_adapter(folder)  # the header is fine; values are only seen when read
    with _raises(folder / "adapter_model.safetensors", Q0, "NaN"):
        read_module(info, Q0)
    assert torch.isnan(read_module(info, Q0, check_finite=False).B).any()


def test_rank_mismatch_with_config(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(peft_adapters["basic"], tmp_path / "a")
    _edit_config(folder, r=5)
    with _raises(folder / "adapter_model.safetensors", "rank 4", "5"):
        open_adapter(folder)
    folder = _copy(peft_adapters["patterns"], tmp_path / "b")
    _edit_config(folder, rank_pattern={"v_proj": 6})  # layer 1 q_proj (rank 2) loses its entry
    with _raises(folder / "adapter_model.safetensors", "model.layers.1.self_attn.q_proj"):
        open_adapter(folder)


def test_unknown_key_and_missing_factor(tmp_path: Path) -> None:
    tensors = _q_factors()
    tensors["model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(2, 32)
    folder = write_raw_adapter(tmp_path / "a", tensors, _lora_config())
    with _raises(folder / "adapter_model.safetensors", "unknown key", "lora_A.default.weight"):
        open_adapter(folder)
    tensors = _q_factors()
    del tensors[f"{PREFIX}{Q0}.lora_B.weight"]
    folder = write_raw_adapter(tmp_path / "b", tensors, _lora_config())
    with _raises(folder / "adapter_model.safetensors", "lacks its B"):
        open_adapter(folder)


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_evil_pickle_never_runs(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(_lora_config()))
    marker = tmp_path / "pwned"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(folder / "adapter_model.bin", "wb") as handle:
            pickle.dump({f"{PREFIX}{Q0}.lora_A.weight": _Evil(marker)}, handle, protocol=protocol)
        with _raises(folder / "adapter_model.bin", "pickle"):
            open_adapter(folder)
    # And through torch's own zip container.
    torch.save({f"{PREFIX}{Q0}.lora_A.weight": _Evil(marker)}, folder / "adapter_model.bin")
    with _raises(folder / "adapter_model.bin", "pickle"):
        open_adapter(folder)
    assert not marker.exists()


# --------------------------------------------------------------------------- compatibility


def test_check_compatible_union(peft_adapters: dict[str, Path]) -> None:
    basic, wide = open_adapter(peft_adapters["basic"]), open_adapter(peft_adapters["wide"])
    union = check_compatible([basic, wide])
    assert set(union) == set(basic.modules) | set(wide.modules)
    assert list(union) == sorted(union, key=lambda n: (int(n.split(".")[2]), n))  # layer order
    for name, shape in union.items():
        owner = basic if name in basic.modules else wide
        assert shape == owner.modules[name].shape


def test_shape_mismatch_between_adapters(tmp_path: Path) -> None:
    a = write_raw_adapter(tmp_path / "first", _q_factors(m=32), _lora_config())
    b = write_raw_adapter(tmp_path / "second", _q_factors(m=16), _lora_config())
    with _raises(b, "first", "32x32", "16x32"):
        check_compatible([open_adapter(a), open_adapter(b)])


def test_base_model_mismatch(tmp_path: Path) -> None:
    a = write_raw_adapter(tmp_path / "first", _q_factors(), _lora_config(base_model_name_or_path="org/llama-a"))
    b = write_raw_adapter(tmp_path / "second", _q_factors(), _lora_config(base_model_name_or_path="org/llama-b"))
    c = write_raw_adapter(tmp_path / "third", _q_factors(), _lora_config())
    infos = [open_adapter(p) for p in (a, b, c)]
    with _raises(b, "first", "llama-a", "llama-b"):
        check_compatible(infos)
    assert check_compatible([infos[0], infos[2]]) == {Q0: (32, 32)}  # unset agrees with anything
    assert check_compatible(infos, ignore_base_model=True) == {Q0: (32, 32)}


# --------------------------------------------------------------------------- writing


def _random_modules(seed: int, ranks: dict[str, int]) -> dict[str, LowRank]:
    base = tiny_llama(0)
    shapes = {name: tuple(module.weight.shape) for name, module in base.named_modules() if name in ranks}
    gen = torch.Generator().manual_seed(seed)
    return {
        name: LowRank(B=torch.randn(shapes[name][0], r, generator=gen), A=torch.randn(r, shapes[name][1], generator=gen))
        for name, r in ranks.items()
    }


MIXED_RANKS = {
    Q0: 4,
    "model.layers.0.self_attn.v_proj": 4,
    "model.layers.1.self_attn.q_proj": 4,
    "model.layers.1.self_attn.k_proj": 7,
    "model.layers.0.mlp.down_proj": 2,
    "model.layers.1.mlp.up_proj": 1,
}


def test_write_loads_in_peft(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    modules = _random_modules(11, MIXED_RANKS)
    modules["model.layers.0.self_attn.o_proj"] = LowRank(B=torch.zeros(32, 0), A=torch.zeros(0, 32))
    template = open_adapter(peft_adapters["basic"])
    out = write_adapter(tmp_path / "out", modules, template=template, dtype=torch.float32,
                        metadata=METADATA, recipe="x = load(\"a\")\nsave(x, \"out\")", force=False)
    reference = peft_deltas(out)
    assert set(reference) == set(MIXED_RANKS)  # the rank-0 module is left out
    for name, (delta, scaling, rank, _) in reference.items():
        value = modules[name]
        assert (rank, scaling) == (MIXED_RANKS[name], 1.0)
        torch.testing.assert_close(delta, value.B @ value.A, atol=1e-6, rtol=0)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] and config["use_rslora"] is False
    assert sorted(config["target_modules"]) == sorted(MIXED_RANKS)
    assert config["task_type"] == template.config.get("task_type")
    assert config["init_lora_weights"] is True

    back = open_adapter(out)
    for name in MIXED_RANKS:
        value = read_module(back, name)
        assert torch.equal(value.B, modules[name].B) and torch.equal(value.A, modules[name].A)
    from safetensors import safe_open

    with safe_open(str(back.weights_file), "pt") as handle:
        assert handle.metadata() == {"format": "pt", **METADATA}
    card = (out / "README.md").read_text()
    assert "save(x, \"out\")" in card and "dipm_lang" in card
    assert "- `x`: `basic`, sha256 `ff00`" in card  # inputs by name and hash …
    assert str(template.path.parent) not in card and str(tmp_path) not in card  # … never by local path


METADATA = {"dipm.recipe_sha256": "abc", "dipm_inputs": json.dumps({"x": {"source": "basic", "sha256": "ff00"}})}


def test_write_embedding_from_template(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    template = open_adapter(peft_adapters["embedding"])
    modules = {name: read_module(template, name) for name in template.modules}
    out = write_adapter(tmp_path / "emb", modules, template=template, dtype=torch.float32,
                        metadata={}, recipe="", force=False)
    original, written = peft_deltas(peft_adapters["embedding"]), peft_deltas(out)
    assert written.keys() == original.keys()
    for name, (delta, _, _, kind) in written.items():
        assert kind == original[name][3]
        torch.testing.assert_close(delta, original[name][0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_write_half_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    modules = _random_modules(3, {Q0: 3})
    out = write_adapter(tmp_path / "half", modules, template=None, dtype=dtype, metadata={}, recipe="", force=False)
    info = open_adapter(out)
    assert info.dtype == dtype
    torch.testing.assert_close(read_module(info, Q0, dtype=dtype).B, modules[Q0].B.to(dtype), atol=0, rtol=0)


def test_an_update_zero_everywhere_is_written_as_rank_1_zeros(tmp_path: Path) -> None:
    """A valid adapter that changes nothing (PEFT's own linear([X, X], [1, -1]), a sweep's λ = 0):
    every module rank 1, all zeros, and PEFT loads it."""
    zero = {Q0: LowRank(B=torch.zeros(32, 0), A=torch.zeros(0, 32)),
            "model.layers.1.self_attn.v_proj": LowRank(B=torch.zeros(16, 0), A=torch.zeros(0, 32))}
    out = write_adapter(tmp_path / "zero", zero, template=None, dtype=torch.float32, metadata={}, recipe="",
                        force=False)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 1 and sorted(config["target_modules"]) == sorted(zero)
    deltas = peft_deltas(out)
    assert set(deltas) == set(zero)
    for name, (delta, _, rank, _) in deltas.items():
        assert rank == 1 and delta.shape == (zero[name].m, zero[name].n) and not bool(delta.any())


def test_a_result_with_no_modules_is_an_error(tmp_path: Path) -> None:
    with _raises(tmp_path / "none", "no modules"):
        write_adapter(tmp_path / "none", {}, template=None, dtype=torch.float32, metadata={}, recipe="", force=False)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_input_folders(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    source = _copy(peft_adapters["basic"], tmp_path / "in")
    before = folder_digest(source)
    modules = _random_modules(1, {Q0: 2})
    for dest, words in ((source, "input"), (source / "sub", "inside"), (tmp_path, "contains")):
        with _raises(dest, words):
            write_adapter(dest, modules, template=open_adapter(source), dtype=torch.float32, metadata={},
                          recipe="", force=True)
    assert folder_digest(source) == before


def test_prepare_output_checks(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "adapter_config.json").write_text("{}")
    with _raises(existing, "already exists"):
        prepare_output(existing, inputs=[], force=False)
    prepare_output(existing, inputs=[], force=True)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with _raises(stranger, "not an adapter folder"):
        prepare_output(stranger, inputs=[], force=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with _raises(blocker / "out", "not a folder"):
        prepare_output(blocker / "out", inputs=[], force=False)
    prepare_output(tmp_path / "new" / "deeper" / "out", inputs=[], force=False)  # parents are creatable


def test_force_replaces_existing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    first = _random_modules(1, {Q0: 2})
    write_adapter(dest, first, template=None, dtype=torch.float32, metadata={}, recipe="", force=False)
    second = _random_modules(2, {Q0: 3})
    with _raises(dest, "already exists"):
        write_adapter(dest, second, template=None, dtype=torch.float32, metadata={}, recipe="", force=False)
    assert open_adapter(dest).modules[Q0].rank == 2
    write_adapter(dest, second, template=None, dtype=torch.float32, metadata={}, recipe="", force=True)
    assert open_adapter(dest).modules[Q0].rank == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folders left


def test_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dipm_lang.io import writer

    real_add = writer.SafetensorsWriter.add

    def broken_add(self, name, tensor):
        real_add(self, name, tensor)  # some bytes are in the staged file already
        raise OSError("disk full")

    monkeypatch.setattr(writer.SafetensorsWriter, "add", broken_add)
    dest = tmp_path / "nested" / "out"
    with _raises(dest, "disk full"):
        write_adapter(dest, _random_modules(1, {Q0: 2}), template=None, dtype=torch.float32, metadata={},
                      recipe="", force=False)
    assert list(tmp_path.iterdir()) == []  # no output, no temp folder, no created parent


def test_failed_commit_restores_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dipm_lang.io import writer

    old = tmp_path / "b"
    write_adapter(old, _random_modules(1, {Q0: 2}), template=None, dtype=torch.float32, metadata={}, recipe="",
                  force=False)
    old_digest = folder_digest(old)
    staged = [
        stage_adapter(tmp_path / name, _random_modules(5, {Q0: 3}), template=None, dtype=torch.float32,
                      metadata={}, recipe="", force=True)
        for name in ("a", "b", "c")
    ]
    real_replace, calls = writer.os.replace, []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if Path(dst).name == "c":  # the last output fails to move in
            raise OSError("device busy")
        return real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", flaky_replace)
    with _raises(tmp_path / "c", "device busy"):
        commit_staged(staged)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # "a" rolled back, temps removed
    assert folder_digest(old) == old_digest


def test_discard_staged(tmp_path: Path) -> None:
    staged = stage_adapter(tmp_path / "x" / "out", _random_modules(1, {Q0: 2}), template=None,
                           dtype=torch.float32, metadata={}, recipe="", force=False)
    assert staged.temp_dir.exists() and not staged.destination.exists()
    discard_staged([staged])
    assert list(tmp_path.iterdir()) == []


def test_pattern_keys_match_one_module_in_peft(tmp_path: Path) -> None:
    """`a.b` is a suffix of `c.a.b`: its rank_pattern key must not capture `c.a.b`."""
    import peft

    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = torch.nn.Linear(8, 6)

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = Inner(), torch.nn.Module()
            self.c.a = Inner()

    gen = torch.Generator().manual_seed(0)
    modules = {name: LowRank(B=torch.randn(6, r, generator=gen), A=torch.randn(r, 8, generator=gen))
               for name, r in (("a.b", 3), ("c.a.b", 2), ("c.a", 0))}
    modules.pop("c.a")
    out = write_adapter(tmp_path / "o", modules, template=None, dtype=torch.float32, metadata={}, recipe="",
                        force=False)
    model = peft.PeftModel.from_pretrained(Outer(), str(out))
    seen = 0
    for name, layer in model.named_modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            value = modules[name.removeprefix(PREFIX)]
            assert layer.r["default"] == value.A.shape[0] and layer.scaling["default"] == 1.0
            torch.testing.assert_close(layer.get_delta_weight("default"), value.B @ value.A)
            seen += 1
    assert seen == 2


def test_shared_inputs_unchanged(peft_adapters: dict[str, Path], peft_adapter_digests: dict) -> None:
    """Runs last in this file: nothing above wrote into the shared adapter folders."""
    for name, path in peft_adapters.items():
        assert folder_digest(path) == peft_adapter_digests[name]
