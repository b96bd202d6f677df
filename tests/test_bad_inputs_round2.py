"""The bad-input suite, round two (issue 12): whole classes of hostile input nothing checked before.

Same rules as `test_bad_inputs.py` — the real `dipm` CLI in a subprocess; the SPEC's exit code; a
one-screen message naming the position or the offending file; no traceback; the working folder
exactly as it was. The classes: path strings the OS rejects, special files where text is read,
outputs that would land somewhere surprising, text that would drive the terminal, options outside
their range. At the end, the same audit's non-errors: byte-order marks and CRLF line endings work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from clitools import dipm, snapshot
from test_bad_inputs import MAX_LINES, Case, both, script

H = 'h = load("H")\n'


def fifo(name: str) -> Callable[[Path], None]:
    return lambda d: os.mkfifo(d / name)


def folder(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir()


def link(name: str, target: str) -> Callable[[Path], None]:
    return lambda d: os.symlink(target, d / name)


def text(name: str, content: str | bytes) -> Callable[[Path], None]:
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    return lambda d: (d / name).write_bytes(data)


def big_comment_file(name: str, size: int) -> Callable[[Path], None]:
    line = "# " + "x" * 1022 + "\n"
    return text(name, line * (size // len(line) + 1))


def adapter_with_fifo_config(d: Path) -> None:
    shutil.copytree(d / "H", d / "X")
    (d / "X" / "adapter_config.json").unlink()
    os.mkfifo(d / "X" / "adapter_config.json")


def existing(name: str, *files: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).mkdir()
        for file in files:
            (d / name / file).write_text("mine\n")
    return setup


LONG = "a" * 300
CASES: dict[str, Case] = {
    # ---- path strings the OS rejects or cannot resolve (exit 2, positioned where written) ----
    "nul_in_a_load_path": Case(script('h = load("H\\x00.bak")\nsave(h, "o")\n'), ("run", "s.dipm"), 2,
                               r"s\.dipm:1:10: error: 'H\\x00\.bak': the path contains a NUL character"),
    "nul_in_a_save_path": Case(script(H + 'save(h, "o\\x00ut")\n'), ("run", "s.dipm"), 2,
                               r"s\.dipm:2:9: error: 'o\\x00ut': the path contains a NUL character"),
    "nul_in_a_yaml_input": Case(text("r.yaml", 'inputs: {H: "H\\0x"}\noutputs: {o: 2 * H}\n'),
                                ("run", "r.yaml"), 2, r"r\.yaml:1:\d+: error: input 'H': the path contains a NUL"),
    "name_too_long": Case(script(H + f'save(h, "{LONG}")\n'), ("run", "s.dipm"), 2,
                          r"s\.dipm:2:9: error: 'a+'?.*300 bytes long; file names may have at most 255"),
    "unknown_user": Case(script('h = load("~nosuchuser_dipm/H")\nsave(h, "o")\n'), ("run", "s.dipm"), 2,
                         r"s\.dipm:1:10: error: .*no user named 'nosuchuser_dipm'"),
    "unknown_user_in_set": Case(script('h = load()\nsave(h, "o")\n'),
                                ("run", "s.dipm", "--set", "h=~nosuchuser_dipm/H"), 2,
                                r"<command line>:1:1: error: --set h=…: no user named 'nosuchuser_dipm'"),
    "unknown_user_in_import": Case(script('import "~nosuchuser_dipm/lib.dipm"\n' + H + 'save(h, "o")\n'),
                                   ("check", "s.dipm"), 2, r"s\.dipm:1:1: error: cannot import .*no user named"),
    "control_character_in_a_script_argument": Case(script(H), ("check", "s\x01.dipm"), 2,
                                                   r"error: s\\x01\.dipm: cannot read the script: No such file"),
    # ---- special files where text is read: never hang, never read without bound ----
    "import_a_fifo": Case(both(script('import "lib.dipm"\n' + H + 'save(h, "o")\n'), fifo("lib.dipm")),
                          ("check", "s.dipm"), 2, r"s\.dipm:1:1: error: cannot import 'lib\.dipm': this is a FIFO"),
    "import_a_folder": Case(both(script('import "lib.dipm"\n' + H + 'save(h, "o")\n'), folder("lib.dipm")),
                            ("check", "s.dipm"), 2, r"s\.dipm:1:1: error: cannot import 'lib\.dipm': this is a folder"),
    "import_a_device": Case(both(script('import "zero.dipm"\n' + H + 'save(h, "o")\n'), link("zero.dipm", "/dev/zero")),
                            ("check", "s.dipm"), 2, r"s\.dipm:1:1: error: cannot import 'zero\.dipm': this is a device"),
    "import_a_fifo_in_the_sandbox": Case(both(script('import "lib.dipm"\n' + H + 'save(h, "o")\n'), fifo("lib.dipm")),
                                         ("check", "s.dipm", "--sandbox", "."), 2,
                                         r"s\.dipm:1:1: error: cannot import 'lib\.dipm': this is a FIFO"),
    "import_an_endless_file": Case(both(script('import "big.dipm"\n' + H + 'save(h, "o")\n'),
                                        big_comment_file("big.dipm", 2**20 + 10)),
                                   ("check", "s.dipm"), 2,
                                   r"s\.dipm:1:1: error: cannot import 'big\.dipm': the file is larger than"),
    "imports_together_too_large": Case(both(script('import "a.dipm"\nimport "b.dipm"\n' + H + 'save(h, "o")\n'),
                                            big_comment_file("a.dipm", 600_000), big_comment_file("b.dipm", 600_000)),
                                       ("check", "s.dipm"), 2, r"s\.dipm:2:1: error: the program reads more than"),
    "script_is_a_fifo": Case(fifo("s.dipm"), ("check", "s.dipm"), 2,
                             r"error: s\.dipm: cannot read the script: this is a FIFO"),
    "script_is_a_folder": Case(folder("s.dipm"), ("run", "s.dipm"), 2,
                               r"error: s\.dipm: cannot read the script: this is a folder"),
    "recipe_is_a_fifo": Case(fifo("r.yaml"), ("run", "r.yaml"), 2,
                             r"r\.yaml: error: cannot read the config: this is a FIFO"),
    "adapter_config_is_a_fifo": Case(both(script('x = load("X")\nsave(x, "o")\n'), adapter_with_fifo_config),
                                     ("run", "s.dipm"), 1, r"s\.dipm:1:5: error: .*/X/adapter_config\.json: cannot read the config: "
                                                           r"this is a FIFO"),
    # ---- outputs ----
    "output_inside_another_output": Case(script(H + 'save(h, "out")\nsave(2 * h, "out/inner")\n'), ("run", "s.dipm"), 2,
                                         r"s\.dipm:3:1: error: one output would be inside another: "),
    "output_is_a_dangling_symlink": Case(both(script(H + 'save(h, "out")\n'), link("out", "elsewhere/x")),
                                         ("run", "s.dipm", "--force"), 1,
                                         r".*out: error: the output path is a symbolic link to 'elsewhere/x', "
                                         r"which does not exist"),
    "force_over_a_folder_of_other_files": Case(both(script(H + 'save(h, "out")\n'), existing("out", "notes.txt")),
                                               ("run", "s.dipm", "--force"), 1,
                                               r".*/out: error: the output exists and is not an adapter folder "
                                               r"\(it holds notes\.txt\)"),
    "force_over_an_adapter_with_extra_files": Case(
        both(script(H + 'save(h, "out")\n'), existing("out", "adapter_config.json", "tokenizer.json")),
        ("run", "s.dipm", "--force"), 1, r".*/out: error: the output exists and holds more than an adapter "
                                         r"\(it holds tokenizer\.json\)"),
    "plot_over_an_existing_file": Case(text("plot.png", "mine"), ("inspect", "H", "--plot", "plot.png"), 1,
                                       r".*/plot\.png: error: the output already exists \(use --force"),
    "plot_inside_an_input": Case(script(""), ("inspect", "H", "--plot", "H/plot.png", "--force"), 1,
                                 r".*/H/plot\.png: error: refusing to write inside the input"),
    # ---- text from inputs reaching a terminal: escaped, never sent ----
    "escape_sequence_in_a_path": Case(script('h = load("H\\x1b[2J\\x1b]0;pwned\\x07")\nsave(h, "o")\n'),
                                      ("run", "s.dipm"), 1,
                                      r"s\.dipm:1:5: error: .*H\\x1b\[2J\\x1b\]0;pwned\\x07: adapter folder not found"),
    # ---- every option outside its range: a usage error ----
    "eps_nan": Case(script(H + 'save(h, "o")\n'), ("run", "s.dipm", "--eps", "nan"), 2, r"usage: |.*--eps"),
    "eps_negative": Case(script(H + 'save(h, "o")\n'), ("run", "s.dipm", "--eps", "-1"), 2, r"usage: |.*--eps"),
    "threads_zero": Case(script(H + 'save(h, "o")\n'), ("run", "s.dipm", "--threads", "0"), 2, r"usage: |.*--threads"),
    "rank_zero": Case(script(""), ("eval", "2 * h", "--set", "h=H", "-o", "o", "--rank", "0"), 2,
                      r"usage: |.*--rank"),
    "level_out_of_range": Case(script(H + 'save(h, "o")\n'), ("check", "s.dipm", "-O", "7"), 2, r"usage: |.*-O"),
    "unknown_dtype": Case(script(H + 'save(h, "o")\n'), ("run", "s.dipm", "--dtype", "float8"), 2,
                          r"usage: |.*--dtype"),
    "unknown_device": Case(script(H + 'save(h, "o")\n'), ("run", "s.dipm", "--device", "tpu:0"), 2,
                           r"error: unknown device 'tpu:0'"),
    "set_number_not_finite": Case(script(H + 't = 0.3\nsave(transfer(h, h, t=t), "o")\n'),
                                  ("run", "s.dipm", "--set", "t=inf"), 2, r"error: --set t=inf: 't' must be a finite"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, peft_adapters: dict[str, Path]):
    def one(name: str):
        work = tmp_path_factory.mktemp(name)
        shutil.copytree(peft_adapters["basic"], work / "H")
        CASES[name].setup(work)
        before = snapshot(work)
        result = dipm(*CASES[name].args, cwd=work, timeout=60)
        return work, before, snapshot(work), result

    with ThreadPoolExecutor(max_workers=min(8, max(2, os.cpu_count() or 2))) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(outcomes, name: str) -> None:
    case = CASES[name]
    work, before, after, result = outcomes[name]
    assert result.code == case.code, (result.code, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    lines = result.err.splitlines()
    assert 1 <= len(lines) <= MAX_LINES, result.err
    assert re.match(case.first, result.first), (result.first, case.first)
    assert all(ch.isprintable() or ch in "\t" for line in lines for ch in line), "unprintable text reached the terminal"
    assert after == before  # no output, no temporary folder, inputs byte-identical


def test_a_library_imported_many_times_is_parsed_once(tmp_path, monkeypatch):
    from dipm_lang.compiler import ScriptFile, lower
    from dipm_lang.frontend import lower as lowering

    (tmp_path / "lib.dipm").write_text("def twice(x) = 2 * x\n")
    (tmp_path / "mid.dipm").write_text('import "lib.dipm"\ndef four(x) = twice(twice(x))\n')
    (tmp_path / "s.dipm").write_text('import "lib.dipm"\n' * 300 + 'import "mid.dipm"\n' * 50 +
                                     'h = load("h")\nsave(four(h), "o")\n')
    parsed = []
    real = lowering.parse_script
    monkeypatch.setattr(lowering, "parse_script", lambda text, file="<input>": parsed.append(file) or real(text, file))
    program = lower(ScriptFile(tmp_path / "s.dipm"))
    assert sorted(Path(f).name for f in parsed if not f.startswith("<stdlib>")) == ["lib.dipm", "mid.dipm"]
    assert len(program.roots) == 1


@pytest.mark.parametrize("encoding", ["bom", "crlf", "bom+crlf"])
def test_byte_order_marks_and_crlf_line_endings_are_fine(tmp_path, peft_adapters, encoding):
    source = f'h = load("{peft_adapters["basic"]}")\n# a comment\nsave(2 * h, "out")\n'
    recipe = f'inputs:\n  h: {peft_adapters["basic"]}\noutputs:\n  out_yaml: 2 * h\n'
    for name, content in (("s.dipm", source), ("r.yaml", recipe)):
        if "crlf" in encoding:
            content = content.replace("\n", "\r\n")
        data = content.encode("utf-8")
        if "bom" in encoding:
            data = b"\xef\xbb\xbf" + data
        (tmp_path / name).write_bytes(data)
        result = dipm("run", name, "-q", cwd=tmp_path, timeout=120)
        assert result.code == 0, (name, result.err)
    assert (tmp_path / "out" / "adapter_config.json").exists() and (tmp_path / "out_yaml").is_dir()
