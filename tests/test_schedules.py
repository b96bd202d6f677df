"""Schedules (SPEC §7.2): per-module numbers equal mergekit's rule, every operator that takes a
number takes a schedule (exactly the operator with each module's number, factored ≡ dense), the
types say where a schedule may not go, constant-only rules stay sound, and recipes accept
mergekit's shapes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dipm_lang.compiler import ScriptText, compile
from dipm_lang.errors import DipmTypeError, ExecutionError
from dipm_lang.ir.modules import layer_index
from dipm_lang.ir.schedules import Ramp, Where, value_at
from dipm_lang.run import RunOptions, execute, plan
from clitools import dipm
from test_run import trio, values  # noqa: F401 - `trio` is a fixture

MERGEKIT = [0.0, 0.5, 0.3, 0.7, 1.0]  # the most-copied mergekit gradient


def mergekit_table(points: list[float], layers: int) -> list[float]:
    """mergekit's gradient, independently: piecewise-linear interpolation of the points placed evenly
    over [0, 1], sampled at each layer's position i/(L-1)."""
    xs = np.linspace(0.0, 1.0, len(points))
    positions = np.linspace(0.0, 1.0, layers) if layers > 1 else np.array([1.0])
    return [float(v) for v in np.interp(positions, xs, points)]


@pytest.mark.parametrize("layers", [1, 2, 5, 32, 80])
def test_ramp_equals_mergekits_gradient(layers):
    table = mergekit_table(MERGEKIT, layers)
    ramp = Ramp(tuple(MERGEKIT))
    for i in range(layers):
        assert value_at(ramp, f"model.layers.{i}.self_attn.q_proj", layers) == pytest.approx(table[i], abs=1e-12)
    assert value_at(ramp, "lm_head", layers) == MERGEKIT[0]  # no layer index: v0 (SPEC §7.2)
    explicit = Ramp(tuple(MERGEKIT), layers=layers)
    assert value_at(explicit, f"model.layers.{layers - 1}.mlp.up_proj", 999) == pytest.approx(table[-1])
    with pytest.raises(ValueError, match=f"layer index {layers}, but the ramp has layers={layers}"):
        value_at(explicit, f"model.layers.{layers}.mlp.up_proj", 999)


def test_where_takes_the_first_match_and_nests():
    nested = Where("q_proj", 0.1, Where(r"layers\.1\.", Ramp((0.0, 1.0)), 0.7))
    assert value_at(nested, "model.layers.1.self_attn.q_proj", 2) == 0.1
    assert value_at(nested, "model.layers.1.self_attn.v_proj", 2) == 1.0
    assert value_at(nested, "model.layers.0.self_attn.v_proj", 2) == 0.7


SCHEDULE = 'where("q_proj", ramp([0.15, 0.85]), 0.6)'  # differs by layer and by module kind

# operator that takes a number -> a program with the number written as N
TAKES_A_NUMBER = {
    "shift t": 'save(recombine(shift(dir(H), dir(T), N), mag(H)), "o")',
    "lerp t": 'save(recombine(lerp(dir(H, by="in"), dir(C, by="in"), N), mag(H, by="in")), "o")',
    "mix weights": 'save(recombine(mix([dir(H), dir(C)], [N, 1 - N]), mag(T)), "o")',
    "mean weights": 'save(recombine(dir(H), mean([mag(H), mag(T)], [N, 2])), "o")',
    "k * x": 'save(N * H - T / (N + 1), "o")',
    "unlearn strength": 'save(unlearn(T, strength=N), "o")',
    "mag arithmetic": 'save(recombine(dir(C), max(mag(C) * N, N / 10)), "o")',
    "svd weights": 'save(svd([H, T], [N, -0.5], rank=3), "o")',
    "ties_svd density": 'save(ties_svd([H, T], [1, N], density=N), "o")',
    "dare_linear_svd density": 'save(dare_linear_svd([H, T], density=N, rank=4, seed=3), "o")',
    "save rank": 'save(H + T, "o", rank=N)',
}
SCHEDULES = {"save rank": 'where("q_proj", ramp([1, 3]), 2)'}  # ranks must be whole numbers


def _per_module(text: str, trio, dense: bool) -> dict[str, torch.Tensor]:
    (result,) = values(text, trio, dense=dense).values()
    return result


@pytest.mark.parametrize("case", sorted(TAKES_A_NUMBER))
def test_every_number_takes_a_schedule_exactly_module_by_module(trio, case):  # noqa: F811
    """With a schedule, each module's result is exactly that of the operator with the module's own
    number; factored and dense agree."""
    template = TAKES_A_NUMBER[case]
    schedule = SCHEDULES.get(case, SCHEDULE)
    scheduled = template.replace("N", schedule)
    got = _per_module(scheduled, trio, dense=False)
    dense = _per_module(scheduled, trio, dense=True)
    layers = 1 + max(layer_index(name) for name in got)
    number_of = {name: _evaluate(schedule, name, layers) for name in got}
    for number in sorted(set(number_of.values())):
        alone = _per_module(template.replace("N", repr(number)), trio, dense=True)
        for name, value in number_of.items():
            if value == number:
                want = alone.get(name, torch.zeros_like(got[name]))
                scale = max(float(want.abs().max()), 1e-3)
                assert torch.allclose(got[name], want, atol=1e-5 * scale, rtol=0), (case, name, number)
                assert torch.allclose(dense[name], want, atol=1e-9 * scale, rtol=0), (case, name, number)
    assert len(set(number_of.values())) > 1, "the schedule must actually vary over these modules"


def _evaluate(text: str, module: str, layers: int) -> float:
    """The schedule's number for a module (a schedule is a compile-time constant of the language)."""
    from dipm_lang.frontend.lower import Lowerer
    from dipm_lang.frontend.parser import parse_expression
    from dipm_lang.ir.numbers import const_eval

    lowerer = Lowerer()
    node = lowerer.expr(parse_expression(text, "<n>"), lowerer.module("<n>", text))
    return value_at(const_eval(node), module, layers)


@pytest.mark.parametrize("text, message", [
    ('save(lowrank(H, ramp([1, 2])), "o")', "lowrank: 'rank' must be one number for every module, got a schedule"),
    ('save(dare_ties([H, H], density=0.5, seed=where("q", 1, 2)), "o")', "'seed' must be one number for every module"),
    ('save(select(H, layers=[0, ramp([0, 1])]), "o")', "'layers' must be [first, last]"),
    ('save(recombine(dir(H), mag(H) + ramp([0, 1])), "o")', None),  # allowed: a schedule is a number
])
def test_schedules_are_typed(trio, text, message):  # noqa: F811
    external = {"H": str(trio["H"])}
    if message is None:
        compile(ScriptText(text, "<t>"), external)
        return
    with pytest.raises(DipmTypeError, match=re.escape(message)):
        compile(ScriptText(text, "<t>"), external)


def test_constant_only_rules_do_not_fire_on_a_schedule(trio):  # noqa: F811
    """shift(d, e, 0) -> d is sound only where t is 0 for every module; ramp([0, 1]) is 0 on layer 0
    only, so the shift stays, and each layer gets its own endpoint."""
    text = 'save(recombine(shift(dir(H), dir(T), ramp([0, 1])), mag(H)), "o")'
    program, _ = compile(ScriptText(text, "<t>"), {k: str(trio[k]) for k in "HT"})
    assert any(node.op == "shift" for node in program.nodes())
    got = _per_module(text, trio, dense=False)
    at_0 = _per_module('save(recombine(dir(H), mag(H)), "o")', trio, dense=True)
    at_1 = _per_module('save(recombine(dir(T), mag(H)), "o")', trio, dense=True)
    for name, value in got.items():
        want = (at_0 if layer_index(name) == 0 else at_1).get(name, torch.zeros_like(value))
        assert torch.allclose(value, want, atol=1e-5 * max(float(want.abs().max()), 1e-3)), name


def test_a_ramp_shorter_than_the_layers_is_an_error_before_any_tensor_is_read(trio, monkeypatch):  # noqa: F811
    from dipm_lang.io import reader

    monkeypatch.setattr(reader, "read_modules", lambda *a, **k: pytest.fail("a tensor was read"))
    text = 'save(recombine(shift(dir(H), dir(T), ramp([0, 1], layers=1)), mag(H)), "o")'
    program, _ = compile(ScriptText(text, "<t>"), {k: str(trio[k]) for k in "HT"})
    with pytest.raises(ExecutionError, match=r"module 'model\.layers\.1\..*' has layer index 1, but the ramp has "
                                             r"layers=1"):
        plan(program, RunOptions(device="cpu"), check_outputs=False)


def test_recipes_take_mergekits_parameter_shapes(trio, tmp_path):  # noqa: F811
    """YAML: a list is a ramp; a list of {filter, value} is nested wheres on literal substrings with a
    final fallback — equal to the same recipe written with ramp/where in dipm."""
    (tmp_path / "r.yaml").write_text(
        f"inputs: {{H: {trio['H']}, T: {trio['T']}}}\n"
        "parameters:\n"
        "  t: [{filter: self_attn.q, value: [0, 0.5, 1]}, {filter: '*', value: 0.3}]\n"
        "  lam: [0.2, 0.9]\n"
        "outputs:\n"
        "  yaml_out: transfer(H, T, t=t) - lam * T\n")
    (tmp_path / "r.toml").write_text(
        f'[inputs]\nH = "{trio["H"]}"\nT = "{trio["T"]}"\n'
        '[parameters]\nlam = [0.2, 0.9]\nt = [{filter = "self_attn.q", value = [0, 0.5, 1]}, {value = 0.3}]\n'
        '[outputs]\ntoml_out = "transfer(H, T, t=t) - lam * T"\n')
    (tmp_path / "s.dipm").write_text(
        f'H = load("{trio["H"]}")\nT = load("{trio["T"]}")\n'
        'save(transfer(H, T, t=where("self_attn\\\\.q", ramp([0, 0.5, 1]), 0.3)) - ramp([0.2, 0.9]) * T, '
        '"dipm_out")\n')
    for name in ("r.yaml", "r.toml", "s.dipm"):
        result = dipm("run", name, cwd=tmp_path)
        assert result.code == 0, result.err
    assert "schedule ramp([0.2, 0.9]), per layer:" in result.out  # the numbers used, shown per layer
    from adapters import peft_deltas

    want = peft_deltas(tmp_path / "dipm_out")
    for folder in ("yaml_out", "toml_out"):
        got = peft_deltas(tmp_path / folder)
        assert set(got) == set(want)
        for module in want:
            assert torch.equal(got[module][0], want[module][0]), (folder, module)


@pytest.mark.parametrize("value, message", [
    ("[{filter: q_proj, value: 1}]", "the last entry must have no filter"),
    ("[]", "expected a number"),
    ("[{filter: q_proj, value: 1, weight: 2}, {value: 0}]", "it takes 'filter' and 'value'"),
    ("'0.5'", "expected a number"),
])
def test_bad_parameter_shapes_point_into_the_recipe(tmp_path, trio, value, message):  # noqa: F811
    (tmp_path / "r.yaml").write_text(f"inputs: {{H: {trio['H']}}}\nparameters:\n  t: {value}\noutputs:\n  o: t * H\n")
    result = dipm("check", "r.yaml", cwd=tmp_path)
    assert result.code == 2 and result.first.startswith("r.yaml:3:3: error: parameter 't': "), result.err
    assert message in result.first
