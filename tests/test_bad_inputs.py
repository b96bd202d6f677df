"""The bad-input suite (issue 6): the `dipm` CLI on hostile and broken input.

For every case: the exit code of SPEC §6 (2 usage/syntax/type, 1 runtime), a message of at most
a screen that names the position (`file:line:col`) or the offending file, no Python traceback,
and the working folder exactly as it was — no output folder, no hidden temporary folder, every
input byte-identical (a snapshot of the whole tree, hidden entries included, before and after).
Cases run `main` in this process (clitools.run_main); those in SUBPROCESS run the real program,
for its own exit codes and where a regression could hang or exhaust the process reading the input.
Then the write path under fire, with real processes: a run killed with SIGKILL or SIGTERM while it
writes, and a run whose disk fills up (RLIMIT_FSIZE in the child), never leave a partial output
at the destination.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from adapters import PREFIX, write_raw_adapter
from clitools import Result, cli_env, command, dipm, hidden_entries, run_main, snapshot

Q0 = "model.layers.0.self_attn.q_proj"
MAX_LINES = 15
HX = 'h = load("H")\nx = load("X")\nsave(h + x, "out")\n'  # runs a bad adapter X next to a good one


@dataclass
class Case:
    setup: Callable[[Path], None]  # writes s.dipm and any bad adapter into the working folder
    args: tuple[str, ...]
    code: int
    first: str                     # regex the first line of stderr must match (re.match)


def script(text: str | bytes, name: str = "s.dipm") -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in setups:
            s(d)
    return setup


# ---- bad adapters (X), built next to a good copy of the shared PEFT adapter (H) ----------------

def _factors(m: int = 32, n: int = 32, r: int = 4, dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"{PREFIX}{Q0}.lora_A.weight": torch.randn(r, n, generator=gen).to(dtype),
            f"{PREFIX}{Q0}.lora_B.weight": torch.randn(m, r, generator=gen).to(dtype)}


CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


def raw(tensors: dict[str, torch.Tensor], config: dict | None = None) -> Callable[[Path], None]:
    return lambda d: write_raw_adapter(d / "X", tensors, config or CONFIG) and None


def copy_of_h(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        shutil.copytree(d / "H", d / "X")
        edit(d / "X")
    return setup


def truncate(x: Path) -> None:
    weights = x / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-17])


def _rewrite_header(x: Path, edit: Callable[[dict], None], length_delta: int = 0) -> None:
    weights = x / "adapter_model.safetensors"
    data = weights.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    weights.write_bytes(struct.pack("<Q", len(text) + length_delta) + text + data[8 + length:])


def lying_offsets(x: Path) -> None:
    def stretch(header: dict) -> None:
        key = sorted(k for k in header if k != "__metadata__")[0]
        start, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = [start, end + 64]
    _rewrite_header(x, stretch)


def lying_length(x: Path) -> None:
    _rewrite_header(x, lambda header: None, length_delta=2**40)


def fifo_weights(x: Path) -> None:
    (x / "adapter_model.safetensors").unlink()
    os.mkfifo(x / "adapter_model.safetensors")  # opening it for reading would wait for a writer forever


def device_weights(x: Path) -> None:
    (x / "adapter_model.safetensors").unlink()
    os.symlink("/dev/zero", x / "adapter_model.safetensors")  # an endless read


def edit_config(**changes) -> Callable[[Path], None]:
    def edit(x: Path) -> None:
        path = x / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


def config_text(text: str) -> Callable[[Path], None]:
    return lambda x: (x / "adapter_config.json").write_text(text) and None


def nan_factors() -> dict[str, torch.Tensor]:
    tensors = _factors()
    tensors[f"{PREFIX}{Q0}.lora_B.weight"][3, 1] = float("nan")
    return tensors


def inf_factors() -> dict[str, torch.Tensor]:
    tensors = _factors()
    tensors[f"{PREFIX}{Q0}.lora_A.weight"][0, 5] = float("inf")
    return tensors


class _Evil:
    """Unpickling this would create the file PWNED: proof that the payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(d: Path) -> None:
    x = d / "X"
    x.mkdir()
    (x / "adapter_config.json").write_text(json.dumps(CONFIG))
    torch.save({f"{PREFIX}{Q0}.lora_A.weight": _Evil(str(d / "PWNED")),
                f"{PREFIX}{Q0}.lora_B.weight": torch.zeros(32, 4)}, x / "adapter_model.bin")


def plain_evil_pickle(d: Path) -> None:
    x = d / "X"
    x.mkdir()
    (x / "adapter_config.json").write_text(json.dumps(CONFIG))
    with open(x / "adapter_model.bin", "wb") as handle:
        pickle.dump({f"{PREFIX}{Q0}.lora_A.weight": _Evil(str(d / "PWNED"))}, handle, protocol=2)


def make(path: str, file: str | None = None) -> Callable[[Path], None]:
    """A folder (or, with `file`, a file) at `path`: an existing output, or a parent that is a file."""
    def setup(d: Path) -> None:
        if file is None:
            (d / path).mkdir(parents=True)
            (d / path / "adapter_config.json").write_text("{}")  # a previous output
        else:
            (d / path).parent.mkdir(parents=True, exist_ok=True)
            (d / path).write_text(file)
    return setup


H = 'h = load("H")\n'

CASES: dict[str, Case] = {
    # ---- syntax (exit 2, positioned) ----
    "syntax_missing_paren": Case(script(H + 'save(dir(h, "o")\n'), ("check", "s.dipm"), 2,
                                 r"s\.dipm:2:5: error: missing '\)' to close this '\('"),
    "syntax_unexpected_token": Case(script(H + 'save(h, , "o")\n'), ("check", "s.dipm"), 2,
                                    r"s\.dipm:2:9: error: unexpected ','"),
    "syntax_unterminated_string": Case(script('h = load("H)\nsave(h, "o")\n'), ("check", "s.dipm"), 2,
                                       r"s\.dipm:1:10: error: unterminated string"),
    "syntax_bad_character": Case(script('h = load("H") $\n'), ("check", "s.dipm"), 2,
                                 r"s\.dipm:1:15: error: unexpected character '\$'"),
    "syntax_operator_run": Case(script(H + 'x = 1 +* 2\n'), ("check", "s.dipm"), 2,
                                r"s\.dipm:2:8: error: unexpected '\*'"),
    "syntax_def_without_body": Case(script('def f(x) =\n' + H), ("check", "s.dipm"), 2,
                                    r"s\.dipm:1:11: error: unexpected end of line"),
    "syntax_keyword_after_value": Case(script(H + 'save(h, "o" = 1)\n'), ("check", "s.dipm"), 2,
                                       r"s\.dipm:2:13: error: '=' here"),
    "non_utf8": Case(script(b'h = load("H")\n# caf\xe9\nsave(h, "o")\n'), ("check", "s.dipm"), 2,
                     r"s\.dipm:2:1: error: the file is not valid UTF-8 \(byte 0xe9"),
    "nul_byte": Case(script(b'h = load("H")\nsave(h,\x00 "o")\n'), ("check", "s.dipm"), 2,
                     r"s\.dipm:2:8: error: NUL byte in source text"),
    # ---- types (exit 2, positioned) ----
    "swapped_recombine": Case(script(H + 'save(recombine(mag(h), dir(h)), "o")\n'), ("check", "s.dipm"), 2,
                              r"s\.dipm:2:6: error: recombine: the arguments look swapped"),
    "swapped_shift": Case(script(H + 'save(shift(dir(h), 0.3, dir(h)), "o")\n'), ("check", "s.dipm"), 2,
                          r"s\.dipm:2:20: error: shift: 'e' must be a direction"),
    "by_mismatch_shift": Case(script(H + 'save(shift(dir(h, by="in"), dir(h), 0.3), "o")\n'), ("check", "s.dipm"),
                              2, r"s\.dipm:2:29: error: shift: 'd' is Dir\[in\] but 'e' is Dir\[out\]"),
    "by_mismatch_recombine": Case(script(H + 'save(recombine(dir(h), mag(h, by="in")), "o")\n'),
                                  ("check", "s.dipm"), 2,
                                  r"s\.dipm:2:24: error: recombine: 'd' is Dir\[out\] but 'm' is Mag\[in\]"),
    "arity_too_many": Case(script(H + 'save(dir(h, "out", 3), "o")\n'), ("check", "s.dipm"), 2,
                           r"s\.dipm:2:20: error: dir\(\) takes 2 arguments but 3 were given"),
    "arity_missing": Case(script(H + 'save(shift(dir(h), dir(h)), "o")\n'), ("check", "s.dipm"), 2,
                          r"s\.dipm:2:6: error: shift\(\) is missing the argument 't'"),
    "arity_user_def": Case(script('def f(x, y) = x + y\n' + H + 'save(f(h), "o")\n'), ("check", "s.dipm"), 2,
                           r"s\.dipm:3:6: error: f\(\) is missing the argument 'y'"),
    "keyword_unknown": Case(script(H + 'save(dir(h, bye="out"), "o")\n'), ("check", "s.dipm"), 2,
                            r"s\.dipm:2:13: error: dir\(\) has no parameter 'bye'"),
    "keyword_bad_by": Case(script(H + 'save(dir(h, by="row"), "o")\n'), ("check", "s.dipm"), 2,
                           r"s\.dipm:2:16: error: dir: by must be one of"),
    "keyword_negative_rank": Case(script(H + 'save(h, "o", rank=-1)\n'), ("check", "s.dipm"), 2,
                                  r"s\.dipm:2:19: error: save: 'rank' must be at least 1"),
    "keyword_fractional_rank": Case(script(H + 'save(h, "o", rank=1.5)\n'), ("check", "s.dipm"), 2,
                                    r"s\.dipm:2:19: error: save: 'rank' must be a whole number"),
    "keyword_string_for_number": Case(script(H + 'save(detox(h, h, t="x"), "o")\n'), ("check", "s.dipm"), 2,
                                      r"s\.dipm:2:6: error: in detox\(…\): shift: 't' must be a number"),
    "select_redos_pattern": Case(script(H + 'save(select(h, "(\\\\w+)+!"), "o")\n'), ("check", "s.dipm"), 2,
                                 r"s\.dipm:2:16: error: select: invalid regular expression .*exponential time"),
    "bad_regex": Case(script(H + 'save(select(h, "(["), "o")\n'), ("check", "s.dipm"), 2,
                      r"s\.dipm:2:16: error: select: invalid regular expression"),
    # ---- names (exit 2, positioned) ----
    "unknown_name": Case(script(H + 'save(hh, "o")\n'), ("check", "s.dipm"), 2,
                         r"s\.dipm:2:6: error: unknown name 'hh'"),
    "unknown_function": Case(script(H + 'save(dri(h), "o")\n'), ("check", "s.dipm"), 2,
                             r"s\.dipm:2:6: error: unknown function 'dri'"),
    "recursion": Case(script('def f(x) = f(x)\n' + H + 'save(f(h), "o")\n'), ("check", "s.dipm"), 2,
                      r"s\.dipm:1:12: error: recursive call of 'f'"),
    "mutual_recursion": Case(script('def f(x) = g(x)\ndef g(x) = f(x)\n' + H + 'save(f(h), "o")\n'),
                             ("check", "s.dipm"), 2, r"s\.dipm:2:12: error: recursive call of 'f' \(f -> g -> f\)"),
    "missing_import": Case(script('import "nolib.dipm"\n' + H), ("check", "s.dipm"), 2,
                           r"s\.dipm:1:1: error: cannot import 'nolib.dipm'"),
    "missing_script": Case(lambda d: None, ("run", "nowhere.dipm"), 2,
                           r"error: nowhere\.dipm: cannot read the script"),
    "unknown_option": Case(script(H), ("run", "s.dipm", "--frobnicate"), 2, r"usage: dipm"),
    # ---- adapters (exit 1, naming the file) ----
    "missing_adapter_folder": Case(script(HX), ("run", "s.dipm"), 1, r"s\.dipm:2:\d+: error: .*/X: adapter folder not found"),
    "truncated_safetensors": Case(both(script(HX), copy_of_h(truncate)), ("run", "s.dipm"), 1,
                                  r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: not a valid safetensors file"),
    "header_lying_offsets": Case(both(script(HX), copy_of_h(lying_offsets)), ("run", "s.dipm"), 1,
                                 r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: not a valid safetensors file"),
    "header_lying_length": Case(both(script(HX), copy_of_h(lying_length)), ("run", "s.dipm"), 1,
                                r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: not a valid safetensors file"),
    "nan_tensor": Case(both(script(HX), raw(nan_factors())), ("run", "s.dipm"), 1,
                       r".*/X/adapter_model\.safetensors: error: module '.*q_proj': factor B has NaN or Inf"),
    "inf_tensor": Case(both(script(HX), raw(inf_factors())), ("run", "s.dipm"), 1,
                       r".*/X/adapter_model\.safetensors: error: module '.*q_proj': factor A has NaN or Inf"),
    "integer_tensors": Case(both(script(HX), raw({k: (10 * v).to(torch.int32) for k, v in _factors().items()})),
                            ("run", "s.dipm"), 1,
                            r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: .*must be floating point, got int32"),
    "other_base_shapes": Case(both(script(HX), raw(_factors(m=64, n=64))), ("run", "s.dipm"), 1,
                              r".*/X: error: module '.*q_proj' is 32x32 in .*/H but 64x64 in .*/X"),
    "other_base_name": Case(both(script(HX), copy_of_h(edit_config(base_model_name_or_path="org/other-7b")),
                                 lambda d: edit_config(base_model_name_or_path="org/llama-7b")(d / "H")),
                            ("run", "s.dipm"), 1, r".*/X: error: base models differ"),
    "pickle_payload": Case(both(script(HX), evil_pickle), ("run", "s.dipm"), 1,
                           r"s\.dipm:2:\d+: error: .*/X/adapter_model\.bin: refusing to load this pickle: it would call "),
    "pickle_payload_plain": Case(both(script(HX), plain_evil_pickle), ("run", "s.dipm"), 1,
                                 r"s\.dipm:2:\d+: error: .*/X/adapter_model\.bin: refusing to load this pickle"),
    "fifo_weights": Case(both(script(HX), copy_of_h(fifo_weights)), ("run", "s.dipm"), 1,
                         r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: not a regular file"),
    "device_weights": Case(both(script(HX), copy_of_h(device_weights)), ("run", "s.dipm"), 1,
                           r"s\.dipm:2:\d+: error: .*/X/adapter_model\.safetensors: not a regular file"),
    "malformed_config": Case(both(script(HX), copy_of_h(config_text("{not json"))), ("run", "s.dipm"), 1,
                             r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: malformed JSON"),
    "config_not_an_object": Case(both(script(HX), copy_of_h(config_text("[1, 2]"))), ("run", "s.dipm"), 1,
                                 r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: the config must be a JSON object"),
    "config_wrong_types": Case(both(script(HX), copy_of_h(edit_config(r="eight"))), ("run", "s.dipm"), 1,
                               r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: .*'r' must be a positive integer"),
    "config_redos_pattern": Case(both(script(HX), copy_of_h(edit_config(rank_pattern={"(.*)*x": 2}))),
                                 ("run", "s.dipm"), 1, r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: .*exponential time"),
    "unknown_peft_type": Case(both(script(HX), copy_of_h(edit_config(peft_type="IA3"))), ("run", "s.dipm"), 1,
                              r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: peft_type is 'IA3'"),
    "dora": Case(both(script(HX), copy_of_h(edit_config(use_dora=True))), ("run", "s.dipm"), 1,
                 r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: DoRA adapters"),
    "not_an_adapter_folder": Case(both(script(HX), make("X/readme.txt", "hello")), ("run", "s.dipm"), 1,
                                  r"s\.dipm:2:\d+: error: .*/X/adapter_config\.json: missing adapter_config\.json"),
    # ---- outputs (exit 1, naming the folder; nothing written) ----
    "second_save_fails": Case(both(script(H + 'save(h, "first")\nsave(2 * h, "exists")\n'), make("exists")),
                              ("run", "s.dipm"), 1,
                              r".*/exists: error: the output already exists \(use --force to replace it\)"),
    "save_into_input": Case(script(H + 'save(2 * h, "H/inner")\n'), ("run", "s.dipm", "--force"), 1,
                            r".*/H/inner: error: refusing to write inside the input adapter"),
    "save_over_input": Case(script(H + 'save(2 * h, "H")\n'), ("run", "s.dipm", "--force"), 1,
                            r".*/H: error: refusing to write over an input adapter"),
    "save_over_existing": Case(both(script(H + 'save(2 * h, "out")\n'), make("out")), ("run", "s.dipm"), 1,
                               r".*/out: error: the output already exists \(use --force to replace it\)"),
    "force_over_non_adapter": Case(both(script(H + 'save(2 * h, "out")\n'), make("out/notes.txt", "mine")),
                                   ("run", "s.dipm", "--force"), 1,
                                   r".*/out: error: the output exists and is not an adapter folder"),
    "parent_is_a_file": Case(both(script(H + 'save(2 * h, "afile/out")\n'), make("afile", "x")), ("run", "s.dipm"),
                             1, r".*/afile/out: error: cannot create the output: .*/afile is not a folder"),
    # ---- resource limits (exit 2, positioned) ----
    "inlining_blowup": Case(script(H + "def f0(x) = dir(x)\n" + "".join(
        f"def f{i}(x) = f{i - 1}(x) + f{i - 1}(x)\n" for i in range(1, 31)) + 'save(f30(h), "o")\n'),
        ("check", "s.dipm"), 2, r"s\.dipm:33:6: error: the program is too large .* while inlining f30 -> f29"),
    "nesting_depth": Case(script(H + "save(" + "reverse(" * 3000 + "dir(h)" + ")" * 3000 + ', "o")\n'),
                          ("check", "s.dipm"), 2, r"s\.dipm:2:\d+: error: expression nested too deeply"),
    "operator_chain_depth": Case(script(H + "save(" + "+".join(["h"] * 50_000) + ', "o")\n'), ("check", "s.dipm"),
                                 2, r"s\.dipm:2:6: error: expression nested too deeply"),
    "program_size": Case(script("# " + "x" * 1_200_000 + "\n"), ("check", "s.dipm"), 2,
                         r"error: s\.dipm: cannot read the script: the file is larger than 1048576 bytes"),
    # ---- eval and configs ----
    "eval_type_error": Case(lambda d: None, ("eval", "recombine(mag(H), dir(H))", "--set", "H=H"), 2,
                            r"<expr>:1:1: error: recombine: the arguments look swapped"),
    "config_bad_expression": Case(script('inputs:\n  H: H\noutputs:\n  out: dir(H) +\n', "r.yaml"),
                                  ("run", "r.yaml"), 2, r"r\.yaml:4:\d+: error: "),
}


@pytest.fixture
def work(tmp_path: Path, peft_adapters: dict[str, Path]) -> Path:
    """A working folder holding a copy of a good PEFT adapter, H."""
    shutil.copytree(peft_adapters["basic"], tmp_path / "H")
    return tmp_path


@dataclass
class Outcome:
    work: Path
    before: dict[str, str]
    after: dict[str, str]
    result: Result


# Run by the real program: a FIFO or an endless device would block or exhaust the process that
# reads it, were the guard to regress (these two also show the executable's exit code 1); a usage
# and a syntax error show its exit code 2 (argparse's exit, `entry`'s os._exit).
SUBPROCESS = ("fifo_weights", "device_weights", "unknown_option", "syntax_missing_paren")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, peft_adapters: dict[str, Path]) -> dict[str, Outcome]:
    """Every case run once: in this process one after another (each changes the working folder),
    the SUBPROCESS cases side by side meanwhile (each start imports torch: seconds of CPU)."""
    def prepare(name: str) -> tuple[Path, dict[str, str]]:
        work = tmp_path_factory.mktemp(name)
        shutil.copytree(peft_adapters["basic"], work / "H")
        CASES[name].setup(work)
        return work, snapshot(work)

    def in_subprocess(name: str, work: Path, before: dict[str, str]) -> Outcome:
        result = dipm(*CASES[name].args, cwd=work)
        return Outcome(work, before, snapshot(work), result)

    done: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=len(SUBPROCESS)) as pool:
        started = {name: pool.submit(in_subprocess, name, *prepare(name)) for name in SUBPROCESS}
        for name in CASES:
            if name not in SUBPROCESS:
                work, before = prepare(name)
                result = run_main(*CASES[name].args, cwd=work)
                done[name] = Outcome(work, before, snapshot(work), result)
        done.update({name: future.result() for name, future in started.items()})
    return {name: done[name] for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(outcomes: dict[str, Outcome], name: str) -> None:
    case, outcome = CASES[name], outcomes[name]
    result, work = outcome.result, outcome.work
    assert result.code == case.code, (result.code, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    lines = result.err.splitlines()
    assert 1 <= len(lines) <= MAX_LINES, result.err
    assert max(len(line) for line in lines) <= 2000, "one screen: no line quotes a whole hostile input"
    assert re.match(case.first, result.first), (result.first, case.first)
    assert "wrote" not in result.out
    assert not (work / "PWNED").exists(), "the pickle's payload ran"
    assert outcome.after == outcome.before  # no output, no temporary folder, inputs byte-identical


def test_every_issue_case_is_covered() -> None:
    """The issue's list, against the cases above (a guard against dropping one)."""
    wanted = ["syntax_", "swapped_", "by_mismatch", "arity_", "keyword_", "unknown_name", "recursion", "non_utf8",
              "nul_byte", "missing_adapter_folder", "truncated_safetensors", "header_lying_offsets", "nan_tensor",
              "inf_tensor", "integer_tensors", "other_base_shapes", "pickle_payload", "malformed_config",
              "unknown_peft_type", "second_save_fails", "save_into_input", "save_over_existing", "parent_is_a_file"]
    for prefix in wanted:
        assert any(name.startswith(prefix) for name in CASES), prefix
    assert sum(name.startswith("syntax_") for name in CASES) >= 5


# ---- the write path under fire ----------------------------------------------------------------

BIG_MODULES = 8


def _big_adapter(path: Path, size: int = 8192, rank: int = 64) -> Path:
    """8 modules of size×size at rank 64 (32 MiB of factors): writing its double takes a while."""
    path.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(BIG_MODULES):
        name = f"{PREFIX}model.layers.{i}.mlp.big_proj"
        tensors[f"{name}.lora_A.weight"] = torch.randn(rank, size, generator=gen)
        tensors[f"{name}.lora_B.weight"] = torch.randn(size, rank, generator=gen)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["big_proj"]}))
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return _big_adapter(tmp_path_factory.mktemp("big") / "BIG")


def _kill_while_writing(work: Path, sig: int, extra: tuple[str, ...] = ()) -> tuple[int, bool]:
    """Start `dipm run`, wait until its staging folder appears, send `sig`; (exit code, whether it was caught)."""
    proc = subprocess.Popen(command("run", "s.dipm", "-q", *extra), cwd=work, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    caught = False
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(".out.dipm-tmp-" in name for name in os.listdir(work)):
                proc.send_signal(sig)
                caught = True
                break
            time.sleep(0.001)
        proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, caught


def _assert_whole_or_absent(out: Path) -> None:
    """The destination is either not there, or a complete adapter (never a partial one)."""
    if out.exists():
        from dipm_lang.io.reader import open_adapter, read_module

        info = open_adapter(out)
        assert len(info.modules) == BIG_MODULES
        for name in info.modules:
            read_module(info, name)


def test_sigkill_while_writing_leaves_no_partial_output(work: Path, big: Path) -> None:
    (work / "s.dipm").write_text(f'x = load("{big}")\nsave(x + x, "out")\n')
    for attempt in range(3):  # a few tries: the kill must land while the output is being written
        code, caught = _kill_while_writing(work, signal.SIGKILL)
        _assert_whole_or_absent(work / "out")
        if caught and code == -signal.SIGKILL and not (work / "out").exists():
            break
        shutil.rmtree(work / "out", ignore_errors=True)
    else:
        pytest.skip("the run finished before it could be killed while writing")
    # SIGKILL cannot be cleaned up after: what is left is a hidden staging sibling (documented) ...
    leftovers = hidden_entries(work)
    assert leftovers and all(re.fullmatch(r"\.out\.dipm-tmp-\d+-\w+", name) for name in leftovers), leftovers
    # ... which the next run removes (its writer is dead) before writing the output whole.
    result = run_main("run", "s.dipm", "-q", cwd=work)
    assert result.code == 0, result.err
    _assert_whole_or_absent(work / "out")
    assert hidden_entries(work) == []


def test_sigterm_while_writing_cleans_up(work: Path, big: Path) -> None:
    (work / "s.dipm").write_text(f'x = load("{big}")\nsave(x + x, "out")\n')
    before = snapshot(work)
    for attempt in range(3):
        code, caught = _kill_while_writing(work, signal.SIGTERM)
        if caught and code == 143:
            break
        _assert_whole_or_absent(work / "out")
        shutil.rmtree(work / "out", ignore_errors=True)
    else:
        pytest.skip("the run finished before it could be stopped while writing")
    assert snapshot(work) == before  # staged folder removed on the way out: nothing at all is left


def test_killed_force_run_keeps_or_restores_the_previous_output(work: Path, big: Path) -> None:
    """A `--force` rerun killed mid-write: the old output stays whole (or comes back on the next run)."""
    (work / "s.dipm").write_text(f'x = load("{big}")\nsave(x + x, "out")\n')
    assert run_main("run", "s.dipm", "-q", cwd=work).code == 0
    old = snapshot(work / "out")
    code, caught = _kill_while_writing(work, signal.SIGKILL, ("--force",))
    if (work / "out").exists():
        _assert_whole_or_absent(work / "out")
    result = run_main("run", "s.dipm", "-q", "--force", cwd=work)
    assert result.code == 0, result.err
    assert snapshot(work / "out") == old  # deterministic: the same bytes again
    assert hidden_entries(work) == []


def test_recover_puts_back_an_output_moved_aside_by_a_killed_commit(work: Path) -> None:
    """The state a SIGKILL between a --force commit's two renames leaves: the old output aside, none in place."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (work / "s.dipm").write_text(H + 'save(2 * h, "out")\n')
    assert run_main("run", "s.dipm", "-q", cwd=work).code == 0
    old = snapshot(work / "out")
    (work / "out").rename(work / f".out.dipm-old-{dead.pid}-abc123")
    (work / f".out.dipm-tmp-{dead.pid}-def456").mkdir()  # a half-written staging folder
    (work / f".out.dipm-tmp-{dead.pid}-def456" / "adapter_model.safetensors").write_bytes(b"partial")
    result = run_main("run", "s.dipm", cwd=work)  # without --force: the restored output counts as existing
    assert result.code == 1 and "already exists" in result.first, result.err
    assert snapshot(work / "out") == old and hidden_entries(work) == []


def test_recover_leaves_a_live_runs_staging_alone(work: Path) -> None:
    other = subprocess.Popen(["sleep", "300"])  # another live process (the run itself is this one)
    try:
        live = work / f".out.dipm-tmp-{other.pid}-xyz"
        live.mkdir()
        (work / "s.dipm").write_text(H + 'save(2 * h, "out")\n')
        assert run_main("run", "s.dipm", "-q", cwd=work).code == 0
        assert live.exists()
    finally:
        other.kill()
        other.wait()


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child: writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_disk_full_while_writing(work: Path, big: Path) -> None:
    (work / "s.dipm").write_text(f'x = load("{big}")\nsave(x + x, "nested/out")\n')
    before = snapshot(work)
    result = dipm("run", "s.dipm", cwd=work, preexec_fn=_limit_file_size(1 << 20))
    assert result.code == 1, result.err
    assert re.match(r".*/nested/out: error: failed to write the output: .*File too large", result.first), result.err
    assert "Traceback" not in result.err and len(result.err.splitlines()) <= MAX_LINES
    assert snapshot(work) == before  # no output, no staging folder, no created parent
