"""Resource guards (issue 6): program size, nesting depth, inlining blow-up and config bombs are
refused quickly with a positioned ResourceLimitError (exit 2), never a RecursionError or a hang; and a
huge-but-valid input stays within memory because the factored path never builds m×n.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters import huge_adapter
from clitools import cli_env, command
from dipm_lang.compiler import RecipeFile, ScriptText, compile, lower
from dipm_lang.errors import DipmError, ResourceLimitError
from dipm_lang.frontend.lower import MAX_EXPR_DEPTH, MAX_NODES
from dipm_lang.frontend.parser import MAX_PARSE_DEPTH, MAX_SOURCE_CHARS

H = 'h = load("/nowhere/H")\n'  # nothing is read while compiling


def refused(text: str, *, within: float = 30.0) -> ResourceLimitError:
    start = time.perf_counter()
    with pytest.raises(ResourceLimitError) as info:
        lower(ScriptText(text, "s.dipm"))
    assert time.perf_counter() - start < within
    assert info.value.exit_code == 2 and info.value.span is not None
    return info.value


def deep_stack(depth: int, fn):
    """Call `fn` with `depth` frames already on the stack (the guards must not depend on the caller's)."""
    return fn() if depth == 0 else deep_stack(depth - 1, fn)


# ---- inlining blow-up --------------------------------------------------------------------------

def doubling(levels: int) -> str:
    defs = "def f0(x) = dir(x)\n" + "".join(f"def f{i}(x) = f{i - 1}(x) + f{i - 1}(x)\n" for i in range(1, levels + 1))
    return H + defs + f'save(f{levels}(h), "o")\n'


def test_inlining_blowup_is_refused_quickly_at_the_call() -> None:
    error = refused(doubling(30))  # 2^30 copies of dir(x) if it were allowed
    assert error.message.startswith(f"the program is too large (more than {MAX_NODES} operations after inlining)")
    assert "while inlining f30 -> f29 -> f28 -> … -> f1 -> f0" in error.message
    assert (error.span.line, error.span.column) == (33, 6)  # save(f30(h), …): the user's call
    assert "double" in error.hint


def test_programs_under_the_limit_still_compile() -> None:
    program, _ = compile(ScriptText(doubling(12), "s.dipm"))  # 2^12 copies: fine, and CSE folds them back
    assert len(program.roots) == 1


def test_many_statements_and_long_lists() -> None:
    error = refused(H + "save(multitask([" + ", ".join(["h"] * 60_000) + ']), "o")\n')
    assert "while inlining multitask" in error.message


# ---- nesting depth -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, where", [
    (H + "save(" + "reverse(" * 5_000 + "dir(h)" + ")" * 5_000 + ', "o")\n', (2, None)),
    # 5 000 levels: beyond the parse limit and 5× Python's recursion limit (a recursive walk would crash)
    (H + "save(" + "+".join(["h"] * 5_000) + ', "o")\n', (2, 6)),
    (H + "save(" + "-" * 5_000 + 'h, "o")\n', (2, None)),
    ("x = " + "[" * 5_000 + "1" + "]" * 5_000 + "\n", (1, None)),
    (H + "def f(x) = " + "-" * 300 + "x\n" + 'save(f(h), "o")\n', (2, None)),
], ids=["calls", "operator-chain", "negations", "lists", "in-a-def"])
def test_deep_nesting_is_refused_with_its_position(text: str, where: tuple) -> None:
    for frames in (0, 600):  # also when the caller is already deep in its own stack
        error = deep_stack(frames, lambda: refused(text))
        assert "nested too deeply" in error.message, error.message
        line, column = where
        assert error.span.line == line and (column is None or error.span.column == column)


def test_depth_limits_leave_room_for_real_programs() -> None:
    ok = H + "save(" + "reverse(" * (MAX_EXPR_DEPTH // 2) + "dir(h)" + ")" * (MAX_EXPR_DEPTH // 2) + ', "o")\n'
    deep_stack(600, lambda: lower(ScriptText(ok, "s.dipm")))
    assert MAX_PARSE_DEPTH >= 2 * MAX_EXPR_DEPTH  # a call nests two parse levels: the parser is not the limit


def test_brackets_alone_cost_nothing() -> None:
    lower(ScriptText("x = " + "(" * 50_000 + "1" + ")" * 50_000 + "\n", "s.dipm"))


# ---- program and config size -------------------------------------------------------------------

def test_source_too_large() -> None:
    error = refused("#" * (MAX_SOURCE_CHARS + 1) + "\n", within=10)
    assert error.message.startswith("source is too large")


def _config_refused(tmp_path: Path, name: str, text: str) -> DipmError:
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(DipmError) as info:
        lower(RecipeFile(path))
    assert time.perf_counter() - start < 10
    assert info.value.exit_code == 2
    return info.value


def test_yaml_alias_bomb(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    error = _config_refused(tmp_path, "bomb.yaml", "\n".join(lines) + "\noutputs:\n  out: H\n")
    assert "expands to more than" in error.message and error.span.line == 5


def test_yaml_recursive_alias_and_deep_nesting(tmp_path: Path) -> None:
    assert "recursive alias" in _config_refused(tmp_path, "c.yaml", "a: &a [*a]\noutputs:\n  o: H\n").message
    deep = "x: " + "[" * 100_000 + "]" * 100_000 + "\noutputs:\n  o: H\n"
    assert "nested too deeply" in _config_refused(tmp_path, "d.yaml", deep).message
    chain = ["m0: &m0 {k: v}"] + [f"m{i}: &m{i} {{k: *m{i - 1}}}" for i in range(1, 80)]
    assert "nested more than" in _config_refused(tmp_path, "e.yaml", "\n".join(chain) + "\n").message


def test_toml_deep_nesting(tmp_path: Path) -> None:
    deep = "x = " + "[" * 100_000 + "]" * 100_000 + '\n[outputs]\no = "H"\n'
    assert "nested too deeply" in _config_refused(tmp_path, "d.toml", deep).message
    deep = "x = " + "{a = " * 5_000 + "1" + "}" * 5_000 + '\n[outputs]\no = "H"\n'
    assert "nested too deeply" in _config_refused(tmp_path, "e.toml", deep).message


# ---- huge but valid: memory stays far below the dense size --------------------------------------

SIZE, RANK = 100_000, 8


def test_huge_module_peak_memory(tmp_path: Path) -> None:
    """transfer on a 100,000 × 100,000 module (dense ΔW: 40 GB in float32) in a few hundred MB."""
    src, tgt = huge_adapter(tmp_path / "src", SIZE, RANK, 1), huge_adapter(tmp_path / "tgt", SIZE, RANK, 2)
    (tmp_path / "t.dipm").write_text(f'save(transfer(load("{src}"), load("{tgt}"), t=0.3), "out")\n'
                                     f'save(detox(load("{src}"), load("{tgt}"), t=0.5, by="in"), "out_in", rank=4)\n')
    # A wrapper process runs dipm, so RUSAGE_CHILDREN sees that one child and nothing else.
    probe = ("import resource, subprocess, sys\n"
             f"code = subprocess.run({command('run', 't.dipm', '-q', '--device', 'cpu')!r}).returncode\n"
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    dense_bytes = SIZE * SIZE * 4
    peak = peak_kib * 1024
    assert peak < 2 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"  # torch itself is ~0.3 GiB
    assert peak < dense_bytes / 20
    from dipm_lang.io.reader import open_adapter

    assert open_adapter(tmp_path / "out").modules["model.layers.0.mlp.huge_proj"].shape == (SIZE, SIZE)
