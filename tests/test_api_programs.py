"""The Python API's compiled programs with free numbers (`program(t=0.3)`) and `dipm_lang.sweep`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dipm_lang as dl
from dipm_lang.errors import DipmTypeError, NameResolutionError, UsageError

from adapters import peft_deltas


@pytest.fixture(scope="module")
def inputs(quartet: Path) -> dict[str, Path]:
    return {name: quartet / "adapters" / name for name in ("C", "T")}


def same_values(a: dl.AdapterValue, b: dl.AdapterValue) -> None:
    assert a.keys() == b.keys() and a.type == b.type
    for name in a:
        torch.testing.assert_close(a.delta(name), b.delta(name), rtol=0, atol=0)


def test_an_expression_compiled_once_gives_its_value_for_any_number(inputs, tmp_path):
    program = dl.compile("transfer(C, T, t=t)", inputs=inputs)
    assert program.parameters == ("t",) and program.inputs == ["C", "T"] and program.is_expression
    assert "numbers t" in repr(program) and "const t" in program.explain()  # symbolic until called
    for t in (0.0, 0.3, 1.0):
        same_values(program(t=t), dl.evaluate(f"transfer(C, T, t={t!r})", **inputs))
    # the value remembers the number it was computed with
    saved = program(t=0.3).save(tmp_path / "api_t")
    card = (saved.path / "README.md").read_text()
    assert "- `t` = 0.3" in card


def test_a_script_compiled_once_runs_for_any_number(inputs, tmp_path):
    text = 'C = load("C")\nT = load("T")\nlam = 0.5\nsave(lam * transfer(C, T, t=t), "out")\n'
    (tmp_path / "C").symlink_to(inputs["C"])
    (tmp_path / "T").symlink_to(inputs["T"])
    program = dl.compile(text, file=str(tmp_path / "recipe.dipm"))
    assert program.parameters == ("t",) and program.numbers == ("t", "lam") and not program.is_expression
    program(t=0.2, lam=2.0)  # a call runs the saves; the script's own lam is overridden as --set does
    expected = dl.evaluate("2.0 * transfer(C, T, t=0.2)", **inputs)
    written = peft_deltas(tmp_path / "out")
    for name, (delta, *_rest) in written.items():
        torch.testing.assert_close(delta, expected.delta(name).float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call, error, message", [
    (lambda p: p(), UsageError, "needs a number for 't'"),
    (lambda p: p(t=0.5, x=1), UsageError, "no number named 'x'"),
    (lambda p: p(t=float("inf")), UsageError, "finite number"),
    (lambda p: p(t="0.5"), UsageError, "finite number"),
    (lambda p: p({"C": 0.5}, t=0.5), UsageError, "input 'C' is an adapter"),
    (lambda p: p.run(t=0.5), UsageError, "no saves to run"),
])
def test_wrong_calls_say_what_is_wrong(inputs, call, error, message):
    program = dl.compile("transfer(C, T, t=t)", inputs=inputs)
    with pytest.raises(error, match=message):
        call(program)


def test_a_name_used_as_an_adapter_but_never_given_is_unknown(inputs):
    with pytest.raises(NameResolutionError, match="unknown name 'Tx'") as info:
        dl.compile("transfer(C, Tx, t=t)", inputs={"C": inputs["C"]})
    assert info.value.span.column == 13  # at the name, not at the operator that refused it


def test_a_number_the_compiler_refuses_is_refused_at_the_call(inputs):
    program = dl.compile("lowrank(C, r)", inputs={"C": inputs["C"]})
    assert program(r=2).ranks
    with pytest.raises(DipmTypeError, match="whole number"):
        program(r=1.5)


def test_sweep_from_python_writes_the_points_and_returns_the_table(inputs, tmp_path):
    program = dl.compile("transfer(C, T, t=t)", inputs=inputs)
    summary = dl.sweep(program, {"t": [0.0, 0.5]}, tmp_path / "sw")
    assert summary.exit_code == 0
    assert [(row["path"], row["status"]) for row in summary.rows] == [("t=0.0", "ok"), ("t=0.5", "ok")]
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text()) == summary.rows
    for t in (0.0, 0.5):  # each point's adapter is the program's value at that point
        written = peft_deltas(tmp_path / "sw" / f"t={t}")
        value = program(t=t)
        for name, (delta, *_rest) in written.items():
            torch.testing.assert_close(delta, value.delta(name).float(), rtol=1e-5, atol=1e-7)
    again = dl.sweep(program, {"t": "0:1:0.5"}, tmp_path / "sw")  # a range, resumed
    assert again.kept == 2 and [row["path"] for row in again.rows] == ["t=0.0", "t=0.5", "t=1.0"]
