"""The optimisation passes, one contract at a time (STYLE.md practice 11).

Programs are tiny scripts over two inputs `h` and `g`. Results are compared through `show`, a
one-line s-expression of the saved value (`mul(0.25, h)`), so every expectation reads as the
algebra it checks. Numeric soundness of the rules (results unchanged) needs the backend and is
tested elsewhere.
"""

from __future__ import annotations

import pytest

from collections import Counter

from dipm_lang.compiler import PASSES, ScriptText, lower, optimize, verify
from dipm_lang.ir.numbers import const_eval
from dipm_lang.ir.patterns import P, Rule
from dipm_lang.ops import OPERATORS
from dipm_lang.ir.graph import format_attr, to_networkx
from dipm_lang.ir.node import Node, Program
from dipm_lang.passes.cse import cse
from dipm_lang.passes.dce import dce
from dipm_lang.passes.fuse import fuse
from dipm_lang.passes.rewrite import RewriteLoopError, rewrite

SIMPLIFY_RULES = OPERATORS.simplify_rules()
simplify = dict(PASSES)["simplify"]

RULES = {rule.name: rule for rule in SIMPLIFY_RULES}
INPUTS = 'h = load("h")\ng = load("g")\n'


def show(node: Node) -> str:
    """`op[attr=value,…](operands…)`; constants as numbers, inputs by name."""
    if node.op == "const":
        return format_attr(node.value)
    if node.op == "load":
        return node.attr("name")
    attrs = ",".join(f"{k}={format_attr(v)}" for k, v in node.attrs if v is not None)
    return node.op + (f"[{attrs}]" if attrs else "") + "(" + ", ".join(show(a) for a in node.args) + ")"


def program(body: str) -> Program:
    """The script `h, g = inputs; save(BODY, "o")`, lowered."""
    return lower(ScriptText(INPUTS + f'save({body}, "o")\n', "t.dipm"))


def saved(p: Program, index: int = 0) -> str:
    return show(p.roots[index].args[0])


def apply_rule(name: str, body: str) -> tuple[str, str, list[str]]:
    """(value before, value after, rules fired) for one rule on the CSE'd program."""
    before = cse(program(body))
    fired: Counter[str] = Counter()
    after = rewrite(before, [RULES[name]], fired=fired)
    verify(after, after=name)
    return saved(before), saved(after), list(fired.elements())


def optimized(text: str) -> Program:
    result, _ = optimize(lower(ScriptText(INPUTS + text, "t.dipm")), verify=True)
    return result


# ---- simplification rules: each fires where it should ---------------------------------------

D = 'dir[by="out"]'
M = 'mag[by="out"]'

FIRES = [
    ("reverse-reverse", "reverse(reverse(dir(h)))", f"reverse(reverse({D}(h)))", f"{D}(h)"),
    ("recombine-dir-mag", 'recombine(dir(h, by="in"), mag(h, by="in"))',
     'recombine(dir[by="in"](h), mag[by="in"](h))', "h"),
    ("recombine-dir-mag", "recombine(dir(h), mag(h))", f'recombine({D}(h), {M}(h))', "h"),
    ("shift-0", "shift(dir(h), dir(g), 0)", f"shift({D}(h), {D}(g), 0)", f"{D}(h)"),
    ("shift-1", "shift(dir(h), dir(g), 1)", f"shift({D}(h), {D}(g), 1)", f"{D}(g)"),
    ("shift-same", "shift(dir(h), dir(h), 0.3)", f"shift({D}(h), {D}(h), 0.3)", f"{D}(h)"),
    ("lerp-0", "lerp(dir(h), dir(g), 0)", f"lerp({D}(h), {D}(g), 0)", f"{D}(h)"),
    ("lerp-1", "lerp(dir(h), dir(g), 1)", f"lerp({D}(h), {D}(g), 1)", f"{D}(g)"),
    ("lerp-same", "lerp(dir(h), dir(h), 2.5)", f"lerp({D}(h), {D}(h), 2.5)", f"{D}(h)"),
    ("dir-of-dir", "dir(dir(h))", f"{D}({D}(h))", f"{D}(h)"),
    ("dir-of-dir", 'dir(reverse(dir(h, by="in")), by="in")', 'dir[by="in"](reverse(dir[by="in"](h)))',
     'reverse(dir[by="in"](h))'),
    ("neg-neg", "--h", "neg(neg(h))", "h"),
    ("one-times", "1 * h", "mul(1, h)", "h"),
    ("scale-left", "h * 2", "mul(h, 2)", "mul(2, h)"),
    ("scale-left", "recombine(dir(h), mag(h) * 2)", f'recombine({D}(h), mul({M}(h), 2))',
     f'recombine({D}(h), mul(2, {M}(h)))'),
    ("div-to-mul", "h / 4", "div(h, 4)", "mul(0.25, h)"),
    ("scale-scale", "2 * (3 * h)", "mul(2, mul(3, h))", "mul(6, h)"),
    ("fold-add", "(1 + 2) * h", "mul(add(1, 2), h)", "mul(3, h)"),
    ("fold-sub", "(5 - 2) * h", "mul(sub(5, 2), h)", "mul(3, h)"),
    ("fold-mul", "(2 * 3) * h", "mul(mul(2, 3), h)", "mul(6, h)"),
    ("fold-div", "(3 / 4) * h", "mul(div(3, 4), h)", "mul(0.75, h)"),
    ("fold-neg", "-2 * h", "mul(neg(2), h)", "mul(-2, h)"),
]


@pytest.mark.parametrize("rule, body, before, after", FIRES)
def test_rule_fires(rule, body, before, after):
    got_before, got_after, fired = apply_rule(rule, body)
    assert got_before == before
    assert got_after == after
    assert fired == [rule]


def test_every_rule_has_a_firing_case():
    assert {case[0] for case in FIRES} == set(RULES)


# ---- … and keeps still where it must ----------------------------------------------------------

STAYS = [
    ("reverse-reverse", "reverse(dir(h))"),
    ("recombine-dir-mag", "recombine(dir(h), mag(g))"),             # magnitudes of another update
    ("recombine-dir-mag", "recombine(reverse(dir(h)), mag(h))"),
    ("recombine-dir-mag", 'recombine(dir(h, by="in"), mag(h, by="in") * 2)'),
    ("recombine-dir-mag", "recombine(dir(dir(h)), mag(dir(h)))"),   # would turn a Delta into a Dir
    ("shift-0", "shift(dir(h), dir(g), 0.5)"),
    ("shift-1", "shift(dir(h), dir(g), 0.5)"),
    ("shift-same", "shift(dir(h), dir(g), 0.5)"),
    ("shift-same", "shift(dir(h), reverse(dir(h)), 0.5)"),
    ("lerp-0", "lerp(dir(h), dir(g), 0.5)"),
    ("lerp-1", "lerp(dir(h), dir(g), 0.5)"),
    ("lerp-same", "lerp(dir(h), reverse(dir(h)), 0.5)"),   # antiparallel: the path crosses zero
    ("dir-of-dir", 'dir(dir(h), by="in")'),  # a Dir[out] normalised per column is another direction
    ("dir-of-dir", 'dir(dir(h, by="matrix"))'),
    ("dir-of-dir", "dir(h)"),
    ("neg-neg", "-h"),
    ("neg-neg", "--dir(h)"),      # --d is a Delta, d a Dir: the driver refuses a change of type
    ("one-times", "2 * h"),
    ("one-times", "1 * dir(h)"),  # likewise: 1 * d is a Delta
    ("scale-left", "2 * h"),
    ("scale-left", "h + g"),
    ("div-to-mul", "recombine(dir(h), mag(h) / mag(g))"),  # not a division by a number
    ("scale-scale", "2 * (h * 3)"),  # the inner scaling is not in canonical form (scale-left's job)
    ("scale-scale", "2 * h"),
    ("fold-add", "h + g"),
    ("fold-sub", "h - g"),
    ("fold-mul", "2 * h"),
    ("fold-div", "h / 2"),
    ("fold-neg", "-h"),
]


@pytest.mark.parametrize("rule, body", STAYS)
def test_rule_does_not_fire(rule, body):
    before, after, fired = apply_rule(rule, body)
    assert fired == []
    assert after == before


def test_every_rule_has_a_non_firing_case():
    assert {case[0] for case in STAYS} == set(RULES)


def test_rules_compose_to_a_fixed_point():
    p = simplify(cse(program("recombine(reverse(reverse(dir(h))), mag(h)) + 1 * (h * (6 / 3)) / 4")))
    # reverse∘reverse, then recombine(dir, mag); 6/3 folds, scalings move left and merge
    assert saved(p) == "add(h, mul(0.5, h))"
    assert p.notes and p.notes[-1].startswith("simplify: ")


def test_simplify_interns_as_it_rebuilds():
    # as lowered, the two dir(h) are different nodes (unique ids); the driver's rebuild interns
    # them, so shift-same, which compares identity, still fires without a CSE pass first
    p = simplify(program("shift(dir(h), dir(h), 0.5)"))
    assert saved(p) == f"{D}(h)"


def test_the_driver_stops_rules_that_never_settle():
    flip = Rule("flip", P("mul"), lambda node: node.replace(args=node.args[::-1]))  # k * m <-> m * k, both Mag
    with pytest.raises(RewriteLoopError):
        rewrite(cse(program("recombine(dir(h), 2 * mag(h))")), [flip])


def test_trace_prints_each_rule(capsys):
    rewrite(cse(program("reverse(reverse(dir(h)))")), SIMPLIFY_RULES, trace=True)
    assert capsys.readouterr().err == "rewrite: reverse-reverse\n"


def test_simplify_never_builds_an_infinite_constant():
    # 1e200 * (1e200 * x) must not become inf * x: that would turn zero entries into nan
    p = simplify(cse(program("1e200 * (1e200 * h)")))
    assert saved(p) == "mul(1e+200, mul(1e+200, h))"
    p = simplify(cse(program("h / 1e-310")))
    assert saved(p) == "div(h, 1e-310)"


# ---- CSE -------------------------------------------------------------------------------------

def test_cse_merges_equal_subterms():
    p = program("dir(h) + dir(h)")
    add = p.roots[0].args[0]
    assert add.args[0] is not add.args[1]
    merged = cse(p)
    add = merged.roots[0].args[0]
    assert add.args[0] is add.args[1]
    assert len(merged.nodes()) == len(p.nodes()) - 1


def test_cse_keeps_both_ordered_operands_of_a_shift():
    p = cse(lower(ScriptText('A = load("a")\nsave(shift(dir(A), dir(A), 0.3), "o")\n', "t.dipm")))
    shift = p.roots[0].args[0]
    assert shift.op == "shift" and len(shift.args) == 3
    assert shift.args[0] is shift.args[1] and shift.args[0].op == "dir"
    graph = to_networkx(p)
    (d,) = [i for i, data in graph.nodes(data=True) if data["op"] == "dir"]
    (s,) = [i for i, data in graph.nodes(data=True) if data["op"] == "shift"]
    assert sorted(key for _, v, key in graph.out_edges(d, keys=True) if v == s) == [0, 1]  # both positions
    verify(p)


def test_cse_respects_operand_order_and_attributes():
    p = cse(program("shift(dir(h), dir(g), 0.5) + shift(dir(g), dir(h), 0.5) + dir(h, by=\"in\") + dir(h)"))
    shifts = {id(n) for n in p.nodes() if n.op == "shift"}
    dirs = [n for n in p.nodes() if n.op == "dir"]
    assert len(shifts) == 2
    assert sorted((n.attr("by"), n.args[0].attr("name")) for n in dirs) == [("in", "h"), ("out", "g"), ("out", "h")]


def test_cse_keeps_spans_of_merged_nodes():
    p = cse(program("dir(h) + dir(h)"))
    d = p.roots[0].args[0].args[0]
    assert p.spans[d].file == "t.dipm" and p.spans[d].line == 3


# ---- DCE -------------------------------------------------------------------------------------

def test_dce_removes_unused_bindings_and_inputs():
    p = lower(ScriptText('h = load("h")\ng = load("g")\nunused = dir(g) + h\nsave(h, "o")\n', "t.dipm"))
    assert set(p.bindings) == {"h", "g", "unused"}
    assert len(p.nodes()) == 5  # h, g, dir(g), dir(g) + h, save
    out = dce(p)
    assert [n.op for n in out.nodes()] == ["load", "save"]
    assert set(out.inputs) == {"h"}
    assert out.bindings == {}
    assert all(n in {*out.nodes()} for n in out.spans)
    verify(out)


def test_dce_keeps_named_results():
    p = lower(ScriptText(INPUTS + 'x = dir(g)\nsave(h, "o")\n', "t.dipm"))
    p.results["kept"] = p.bindings["x"]
    out = dce(p)
    assert "kept" in out.results and any(n.op == "dir" for n in out.nodes())


# ---- fusion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, fused", [
    ("h + 2 * g - h / 4", "lincomb[coeffs=[0.75, 2]](h, g)"),
    ("h + h", "lincomb[coeffs=[2]](h)"),                    # duplicate terms merge
    ("h + g + h + g + g", "lincomb[coeffs=[2, 3]](h, g)"),
    ("-h", "lincomb[coeffs=[-1]](h)"),
    ("(h - g) / 2", "lincomb[coeffs=[0.5, -0.5]](h, g)"),
    ("h - h", "lincomb[coeffs=[0]](h)"),                    # all terms cancel: a zero update, not h
    ("(h - g) + (h - g)", "lincomb[coeffs=[2, -2]](h, g)"),  # one node read twice by one user: absorbed
    ("dir(h) + g", f"lincomb[coeffs=[1, 1]]({D}(h), g)"),     # a Dir is a term, not a tree to flatten
    ("recombine(reverse(dir(h)), mag(g))", f'unit_scale[by="out",coeff=-1,normalize=True](h, {M}(g))'),
    ('recombine(dir(h, by="in"), mag(g, by="in"))', 'unit_scale[by="in",coeff=1,normalize=True](h, mag[by="in"](g))'),
    ("3 * recombine(reverse(dir(h)), mag(g))", f'unit_scale[by="out",coeff=-3,normalize=True](h, {M}(g))'),
    ("recombine(shift(dir(h), dir(g), 0.5), mag(h))",
     f'unit_scale[by="out",coeff=1,normalize=False](shift({D}(h), {D}(g), 0.5), {M}(h))'),
    ("reverse(dir(h))", 'unit_scale[by="out",coeff=-1,normalize=True](h)'),
])
def test_fuse(body, fused):
    p = optimized(f'save({body}, "o")\n')
    assert saved(p) == fused


def test_fuse_coefficients_match_the_arithmetic():
    p = optimized('save(0.5 * (h - 3 * g) - -g / 8, "o")\n')
    lincomb = p.roots[0].args[0]
    coeffs = dict(zip((a.attr("name") for a in lincomb.args), lincomb.attr("coeffs")))
    assert coeffs == {"h": 0.5, "g": 0.5 * -3 + 1 / 8}


def test_fuse_does_not_absorb_a_direction_with_two_users():
    p = optimized('d = dir(h)\nsave(recombine(reverse(d), mag(g)), "o1")\nsave(d, "o2")\n')
    assert saved(p, 0) == f'unit_scale[by="out",coeff=-1,normalize=False]({D}(h), {M}(g))'
    assert saved(p, 1) == f"{D}(h)"
    assert p.roots[0].args[0].args[0] is p.roots[1].args[0]  # one dir(h), computed once
    assert sum(n.op == "dir" for n in p.nodes()) == 1


def test_fuse_does_not_absorb_a_sum_with_two_users():
    p = optimized('s = h + g\nsave(s + s, "a")\nsave(s, "b")\n')
    assert saved(p, 0) == "lincomb[coeffs=[2]](lincomb[coeffs=[1, 1]](h, g))"
    assert saved(p, 1) == "lincomb[coeffs=[1, 1]](h, g)"
    assert p.roots[0].args[0].args[0] is p.roots[1].args[0]


def test_fuse_does_not_absorb_a_scaling_with_two_users():
    p = optimized('s = 2 * h\nsave(s + g, "a")\nsave(s - g, "b")\n')
    assert saved(p, 0) == "lincomb[coeffs=[1, 1]](lincomb[coeffs=[2]](h), g)"
    assert saved(p, 1) == "lincomb[coeffs=[1, -1]](lincomb[coeffs=[2]](h), g)"


def test_fuse_notes_say_what_was_fused():
    p = optimized('save(recombine(reverse(dir(h)), mag(g)), "a")\nsave(h + g, "b")\n')
    assert "fuse: recombine ∘ ±dir → unit_scale" in p.notes
    assert "fuse: 1 arithmetic op(s) → lincomb of 2 term(s)" in p.notes


# ---- pass contracts ----------------------------------------------------------------------------

CONTRACT_SCRIPT = INPUTS + (
    'a = dir(h)\nunused = mag(g)\n'
    'save(recombine(shift(a, dir(h), 0.5), mag(h)) + h / 2 - -g, "o1")\n'
    'save(detox(h, g, t=0) * 1, "o2")\n'
)


def test_node_counts_never_grow_and_each_pass_is_idempotent():
    p = lower(ScriptText(CONTRACT_SCRIPT, "t.dipm"))
    count = len(p.nodes())
    for name, run in PASSES:
        p = run(p)
        verify(p, after=name)
        assert len(p.nodes()) <= count, name
        count = len(p.nodes())
        again = run(p)
        assert [show(r) for r in again.roots] == [show(r) for r in p.roots], name
    # detox(h, g, t=0) is recombine(shift(dir h, -dir g, 0), mag h) -> recombine(dir h, mag h) -> h
    assert saved(p, 1) == "h"


def test_levels():
    p = lower(ScriptText(CONTRACT_SCRIPT, "t.dipm"))
    _, r0 = optimize(p, level=0)
    _, r1 = optimize(p, level=1)
    _, r2 = optimize(p, level=2)
    assert r0.passes == [] and r0.nodes_after == r0.nodes_before
    assert [x["name"] for x in r1.passes] == ["cse", "dce"]
    assert [x["name"] for x in r2.passes] == ["cse", "simplify", "dce", "fuse"]
    assert r2.nodes_after < r1.nodes_after < r0.nodes_after


def test_fuse_folds_only_constant_scalings():
    # every Num node is a constant the lowering has checked; fuse reads them with const_eval
    p = optimized('save(max(1, 3) * h, "o")\n')
    assert saved(p) == "lincomb[coeffs=[3]](h)"
    assert const_eval(lower(ScriptText(INPUTS + 'x = abs(-2) + min(1, 5)\nsave(h, "o")\n', "t.dipm")).bindings["x"]) == 3.0
