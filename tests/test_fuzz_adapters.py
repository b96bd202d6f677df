"""Fuzzing the adapter loader: hostile safetensors headers and adapter configs.

Adapters come from hubs and colleagues, so every byte of `adapter_model.safetensors` and every
value in `adapter_config.json` is untrusted. Whatever the mutation, `open_adapter`, `read_module`
and `check_compatible` either succeed or raise `AdapterError` naming the file — never a
`KeyError`, `TypeError`, `json` error, `SafetensorError`, `RecursionError` or `RuntimeError`, and
never a hang (a hostile `rank_pattern` regex is refused before it is matched).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import PREFIX, write_raw_adapter
from dipm_lang.errors import AdapterError
from dipm_lang.io.reader import check_compatible, open_adapter, read_module
from dipm_lang.io.writer import build_config

FUZZ = settings(deadline=None, derandomize=True, max_examples=300, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

NAMES = ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj")
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
          "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}
KNOWN_KEYS = ("peft_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules",
              "fan_in_fan_out", "use_dora", "lora_bias", "init_lora_weights", "base_model_name_or_path",
              "task_type", "revision", "auto_mapping", "modules_to_save", "layers_to_transform")


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name in NAMES:
        out[f"{PREFIX}{name}.lora_A.weight"] = torch.randn(2, 6, generator=gen)
        out[f"{PREFIX}{name}.lora_B.weight"] = torch.randn(5, 2, generator=gen)
    return out


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[bytes, bytes]:
    """The bytes of a small valid adapter: (config JSON, safetensors file)."""
    folder = write_raw_adapter(tmp_path_factory.mktemp("valid") / "a", _tensors(), CONFIG)
    open_adapter(folder)  # sanity: the unmutated adapter is fine
    return (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "a"


def exercise(folder: Path) -> None:
    """Everything a run does with an input before and while computing; only AdapterError may escape."""
    try:
        info = open_adapter(folder)
        check_compatible([info, info])
        build_config({name: (module.rank, module.kind) for name, module in info.modules.items()}, info)
        for name in info.modules:
            read_module(info, name)
    except AdapterError as e:
        assert e.message and e.path, e  # says what is wrong, and where


def write(folder: Path, config: bytes, weights: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_bytes(config)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def header_of(data: bytes) -> tuple[int, dict]:
    length = struct.unpack("<Q", data[:8])[0]
    return length, json.loads(data[8:8 + length])


def with_header(data: bytes, header: object, *, length: int | None = None) -> bytes:
    old, _ = header_of(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data[8 + old:]


# ---- strategies --------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                         st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "LORA",
                                          "(.*)*x", "[", ".*", "q_proj", "default"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@st.composite
def byte_edits(draw, data: bytes, end: int) -> bytes:
    """`data` with a few bytes flipped, inserted, deleted or overwritten in `data[:end]`."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, min(end, len(out)) - 1)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        if edit == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del out[i:i + draw(st.integers(1, 8))]
        else:
            out[i] = draw(st.sampled_from(b'{}[]",:0123456789 \x00\xff-eE.'))
    return bytes(out)


@st.composite
def header_edits(draw, data: bytes) -> bytes:
    """A structurally edited header: a field of one tensor (or the metadata) replaced by any JSON."""
    _, header = header_of(data)
    keys = sorted(header)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        edit = draw(st.sampled_from(["field", "drop_field", "drop_key", "rename", "replace", "offset", "shape"]))
        entry = header.get(key)
        if edit == "field" and isinstance(entry, dict):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(json_values)
        elif edit == "drop_field" and isinstance(entry, dict) and entry:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        elif edit == "drop_key":
            header.pop(key, None)
        elif edit == "rename":
            header[draw(st.sampled_from([key + "x", key.replace("lora_A", "lora_B"), "__metadata__", "",
                                         key.replace(".weight", ".default.weight")]))] = header.pop(key, None)
        elif edit == "replace":
            header[key] = draw(json_values)
        elif edit == "offset" and isinstance(entry, dict) and "data_offsets" in entry:
            entry["data_offsets"] = [draw(st.integers(-1, 2**64)), draw(st.integers(-1, 2**64))]
        elif edit == "shape" and isinstance(entry, dict) and "shape" in entry:
            entry["shape"] = draw(st.lists(st.integers(-1, 2**40), max_size=4))
    length = draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    return with_header(data, header, length=length)


# ---- safetensors ------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_mutated_header_bytes(valid, target, data):
    config, weights = valid
    length, _ = header_of(weights)
    mutated = data.draw(byte_edits(weights, 8 + length))
    exercise(write(target, config, mutated))


@FUZZ
@given(data=st.data())
def test_mutated_header_fields(valid, target, data):
    config, weights = valid
    exercise(write(target, config, data.draw(header_edits(weights))))


@FUZZ
@given(length=st.integers(0, 2**64 - 1), cut=st.integers(0, 600))
def test_lying_length_and_truncation(valid, target, length, cut):
    config, weights = valid
    mutated = struct.pack("<Q", length) + weights[8:]
    exercise(write(target, config, mutated[:len(mutated) - cut] if cut else mutated))


# ---- adapter_config.json ----------------------------------------------------------------------

@FUZZ
@given(changes=st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, min_size=1, max_size=4),
       drop=st.lists(st.sampled_from(KNOWN_KEYS), max_size=2))
def test_config_values_of_any_type(valid, target, changes, drop):
    _, weights = valid
    config = {**CONFIG, **changes}
    for key in drop:
        config.pop(key, None)
    exercise(write(target, json.dumps(config).encode(), weights))


@FUZZ
@given(data=st.data())
def test_mutated_config_bytes(valid, target, data):
    config, weights = valid
    exercise(write(target, data.draw(byte_edits(config, len(config))), weights))


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,                     # nesting: json raises RecursionError
    '{"r": ' + "9" * 5000 + "}",                        # an int too long for int(): ValueError
    '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN}',
    "\ufeff{}",                                          # a byte-order mark
], ids=["deep", "huge-int", "nan", "bom"])
def test_config_texts_json_rejects(valid, target, text):
    _, weights = valid
    exercise(write(target, text.encode(), weights))


@pytest.mark.parametrize("key", ["(.*)*x", "(\\w+)+!", "(a*)*b", ".*.*.*.*.*.*.*.*.*.*x"])
def test_catastrophic_pattern_keys_are_refused_quickly(valid, target, key):
    """A hostile rank_pattern key would make Python's `re` (and PEFT) backtrack for hours."""
    import time

    _, weights = valid
    start = time.perf_counter()
    write(target, json.dumps({**CONFIG, "rank_pattern": {key: 2}}).encode(), weights)
    with pytest.raises(AdapterError, match="exponential|too many"):
        open_adapter(target)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("key", ["q_proj", "model.layers.0.self_attn.q_proj", r"layers\.\d+\.self_attn\.(q|v)_proj",
                                 "^model.layers.1.self_attn.v_proj", "layers.[0-9]+.mlp.*"])
def test_ordinary_pattern_keys_still_work(valid, target, key):
    _, weights = valid
    write(target, json.dumps({**CONFIG, "rank_pattern": {key: 2}}).encode(), weights)
    open_adapter(target)
