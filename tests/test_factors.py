"""Factors as values (SPEC §7.3), three rules the property tests found broken:

- `.A` / `.B` of a computed value is a type error (its factors depend on the implementation: the
  unoptimized `(H - H).B` had rank 8, the fused one rank 4, so `lora((H - H).B, H.A)` failed at -O0
  and ran at -O2);
- the dense reference computes `x.A`, `x.B` and `lora` (it raised "no dense reference", so no
  program with factors could be checked, nor fail the same way in both backends);
- a module one adapter lacks is a zero factor of its partner's shape (both backends raised a
  rank or shape mismatch there), and a shape mismatch names one module's shapes (the factored
  message showed the batch dimension).
"""

from __future__ import annotations

import pytest
import torch

from dipm_lang.compiler import ScriptText, lower, optimize
from dipm_lang.errors import DipmTypeError, ExecutionError
from backends import run

LOADS = 'H = load("adapters/H")\nG = load("adapters/G")\nT = load("adapters/T")\nC = load("adapters/C")\n'
DOWN = "model.layers.0.mlp.down_proj"  # G and T have it, H and C do not
Q = "model.layers.0.self_attn.q_proj"


def outputs(quartet, body: str, **options) -> dict[str, torch.Tensor]:
    program, _ = optimize(lower(ScriptText(LOADS + f'save({body}, "out")\n', str(quartet / "prog.dipm"))),
                          level=options.pop("level", 2), verify=True)
    (values,) = run(program, **options).values()
    return values


@pytest.mark.parametrize("body", ["lora((H - H).B, H.A)", "lora(H.B, dir(H).A)", "(2 * H).A", "lowrank(H, 2).B"])
def test_factors_of_a_computed_value_are_a_type_error(quartet, body):
    with pytest.raises(DipmTypeError, match="needs an adapter"):
        lower(ScriptText(LOADS + f'save({body if body.startswith("lora") else f"lora(H.B, {body})"}, "o")\n',
                         str(quartet / "prog.dipm")))


@pytest.mark.parametrize("options", [dict(dense=True), dict(dtype="float64"), dict(dtype="float64", level=0)])
def test_lora_of_an_adapters_own_factors_is_the_adapter(quartet, options):
    both = outputs(quartet, "lora(H.B, H.A) - H", **options)
    twice = outputs(quartet, "lora(2 * H.B, H.A / 4)", **options)
    H = outputs(quartet, "H", **options)
    for name in H:
        assert float(both[name].norm()) <= 1e-12 * float(H[name].norm())
        torch.testing.assert_close(twice[name], H[name] / 2, rtol=1e-12, atol=0)


def test_factors_of_lora_are_its_factors_and_have_no_dense_reference(quartet):
    # lora(B, A).B is B (SPEC §7.3); the dense reference holds m×n values, from which it cannot
    # recover factors, so it reads adapters' factors only
    H = outputs(quartet, "H", dtype="float64")
    again = outputs(quartet, "lora(lora(2 * H.B, H.A).B, H.A)", dtype="float64")
    for name in H:
        torch.testing.assert_close(again[name], 2 * H[name], rtol=1e-12, atol=0)
    with pytest.raises(ExecutionError, match="factors of adapters only"):
        outputs(quartet, "lora(lora(2 * H.B, H.A).B, H.A)", dense=True)


@pytest.mark.parametrize("options", [dict(dense=True), dict(dtype="float64")])
def test_a_module_one_adapter_lacks_is_a_zero_factor(quartet, options):
    G = outputs(quartet, "G", **options)
    assert float(outputs(quartet, "lora(H.B, G.A)", **options)[DOWN].norm()) == 0.0
    torch.testing.assert_close(outputs(quartet, "lora(H.B + G.B, G.A)", **options)[DOWN], G[DOWN], rtol=1e-12, atol=0)
    torch.testing.assert_close(outputs(quartet, "lora(G.B, G.A - H.A)", **options)[DOWN], G[DOWN], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dense", [False, True])
def test_factors_of_different_ranks_fail_before_any_tensor_is_read(quartet, dense, monkeypatch):
    # the headers tell: the plan names the operator, both adapters' ranks and the first module both
    # have (natural order); no tensor is read (a read would raise here)
    from dipm_lang.io.reader import AdapterInfo

    monkeypatch.setattr(AdapterInfo, "read", lambda *a, **k: pytest.fail("a tensor was read"))
    for body, label in [("lora(H.B + T.B, H.A)", "+"), ("lora(H.B, T.A)", "lora"),
                        ("lora(shift(dir(H.B), dir(T.B), 0.5), H.A)", "shift"),
                        ("lora(recombine(dir(H.B, by=\"in\"), mag(T.B, by=\"in\")), H.A)", "recombine")]:
        with pytest.raises(ExecutionError) as error:
            outputs(quartet, body, dense=dense)
        message = str(error.value)
        assert f"{label}: factors of different ranks meet here" in message, message
        assert "adapters/H has rank 4" in message and "adapters/T has rank 8" in message, message
        assert f"(module {Q})" in message, message


@pytest.mark.parametrize("batch", [(), (3,)])
def test_the_kernels_name_one_modules_shapes(batch):
    # where the headers cannot tell (factors of align), the kernels' own check names one module's
    # shapes, without the batch dimension the factored backend stacks in front
    from dipm_lang.backend import arith
    from dipm_lang.backend.factor_units import fill_missing

    four, eight = torch.zeros(*batch, 32, 4), torch.zeros(*batch, 32, 8)
    with pytest.raises(ExecutionError, match=r"factor shapes differ: \(32, 4\) and \(32, 8\)"):
        arith.plain("add", four, eight, factors=True)
    with pytest.raises(ExecutionError, match=r"factor shapes differ: \(32, 4\) and \(32, 8\)"):
        fill_missing([four, eight], [-1, -1], [2, 2])
    with pytest.raises(ExecutionError, match=r"factor shapes differ: \(4,\) and \(8,\)"):
        fill_missing([torch.zeros(*batch, 4), torch.zeros(*batch, 8)], [-1, -1], [1, 1])
    widened = fill_missing([torch.zeros(*batch, 32, 0), torch.ones(*batch, 32, 4), torch.ones(*batch, 7)],
                           [-1, -1, None], [2, 2, 1])
    assert widened[0].shape == (*batch, 32, 4) and not widened[0].any() and widened[2].shape == (*batch, 7)


@pytest.mark.parametrize("options", [dict(dense=True), dict(dtype="float64"), dict(dtype="float64", level=0)])
def test_a_missing_modules_zero_factor_scaled_by_a_schedule_stays_a_zero_factor(quartet, options):
    # a schedule is one number per module ([G]); it was taken for a factor of another shape, so
    # H.A / ramp(…) in a module H lacks became a 1×1 "factor" and the sum with G.A failed
    G = outputs(quartet, "G", **options)
    scaled = outputs(quartet, "lora(G.B, G.A + H.A / ramp([0.5, 2]))", **options)
    torch.testing.assert_close(scaled[DOWN], G[DOWN], rtol=1e-12, atol=0)
    halved = outputs(quartet, "lora(G.B, G.A / ramp([0.5, 2], layers=2))", **options)
    torch.testing.assert_close(halved[DOWN], G[DOWN] / 0.5, rtol=1e-12, atol=0)  # layer 0: values[0]
