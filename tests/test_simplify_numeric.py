"""Each simplification rule is numerically sound: the program with the rule applied computes
the same adapters as the program without any optimisation (dense float64 reference)."""

from __future__ import annotations

import pytest

from dipm_lang.compiler import ScriptText, compile
from dipm_lang.ops import OPERATORS

SIMPLIFY_RULES = OPERATORS.simplify_rules()
from test_run import assert_same, trio, values  # noqa: F401 - `trio` is a fixture

# rule name -> a program in which it fires
PROGRAMS = {
    "reverse-reverse": 'save(recombine(reverse(reverse(dir(H))), mag(C)), "o")',
    "recombine-dir-mag": 'save(recombine(dir(T, by="in"), mag(T, by="in")), "o")',
    "shift-0": 'save(recombine(shift(dir(H), dir(T), 0), mag(H)), "o")',
    "shift-1": 'save(recombine(shift(dir(H), dir(T), 1), mag(H)), "o")',
    "shift-same": 'save(recombine(shift(dir(C), dir(C), 0.7), mag(H)), "o")',
    "lerp-0": 'save(recombine(lerp(dir(H), dir(T), 0), mag(H)), "o")',
    "lerp-1": 'save(recombine(lerp(dir(H, by="in"), dir(T, by="in"), 1), mag(C, by="in")), "o")',
    "lerp-same": 'save(recombine(lerp(dir(C), dir(C), 1.7), mag(H)), "o")',
    "dir-of-dir": 'save(recombine(dir(dir(H, by="matrix"), by="matrix"), mag(T, by="matrix")), "o")',
    "neg-neg": 'save(--H, "o")',
    "one-times": 'save(1 * T, "o")',
    "scale-left": 'save(H * 3, "o")',
    "div-to-mul": 'save(C / 4, "o")',
    "scale-scale": 'save(2 * (3 * H), "o")',
    "fold-add": 'save((1 + 2) * H, "o")',
    "fold-sub": 'save((1 - 3) * H, "o")',
    "fold-mul": 'save((2 * 3) * H, "o")',
    "fold-div": 'save((1 / 4) * H, "o")',
    "fold-neg": 'save(recombine(shift(dir(H), dir(T), -(0.5)), mag(H)), "o")',
}


def test_every_rule_has_a_program():
    assert {rule.name for rule in SIMPLIFY_RULES} == set(PROGRAMS)


@pytest.mark.parametrize("rule", sorted(PROGRAMS))
def test_rule_fires_and_is_sound(trio, rule):  # noqa: F811
    text = PROGRAMS[rule]
    program, _ = compile(ScriptText(text, "<t>"), {k: str(v) for k, v in trio.items() if k in text})
    assert any(rule in note for note in program.notes), program.notes
    reference = values(text, trio, level=0, dense=True)
    assert_same(values(text, trio, level=2), reference)
    assert_same(values(text, trio, level=2, dense=True), reference)


def test_number_functions_run(trio):  # noqa: F811
    text = 'save(recombine(shift(dir(H), dir(T), max(0.1, min(0.4, 0.2))), mag(H)), "o")'
    want = 'save(recombine(shift(dir(H), dir(T), 0.2), mag(H)), "o")'
    assert_same(values(text, trio, level=0), values(want, trio, level=0, dense=True))
