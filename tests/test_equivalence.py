"""The backends agree on random programs (the one generator of tests/programs.py) run on small real
PEFT adapters: numbers (O0 ≡ O2 ≡ the dense float64 reference, to float32 precision) and failures
(a program that fails at run time fails the same way, naming the same module, in every backend).

The adapters are conftest's `quartet` (ranks, scale conventions and module sets differ); `INPUTS`
groups them into rank classes.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipm_lang.backend.executor import Executor
from dipm_lang.compiler import ScriptText, lower, optimize
from dipm_lang.errors import DipmError, DipmTypeError
from dipm_lang.frontend.ast import Attr, BinOp, Call, ExprStmt, Keyword, ListExpr, Name, Number, Script, String
from dipm_lang.frontend.printer import print_script
from dipm_lang.ir.node import Node, Program
from dipm_lang.ir import signature as S
from dipm_lang.ir.signature import UpdateList
from dipm_lang.ir.types import DELTA, NUM, dir_t, factor_t, mag_t
from dipm_lang.ops import OPERATORS
from backends import Values, run
from programs import IMAGE_MODEL_ONLY, Generator, Inputs, Scope, called, literal, number_literal, pick, written_operators

INPUTS = Inputs((("H", "G"), ("T",), ("C",)))
NUMERIC = Generator(inputs=INPUTS, numeric=True)

CI = settings(deadline=None, derandomize=True, max_examples=12, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
SLOW = settings(CI, max_examples=300)


# ---- running a program ------------------------------------------------------------------------

DELTA_SHADOW = 2.0 ** -24  # float32's unit roundoff
TRUNCATING = {op.name for op in OPERATORS if op.name != "save" and any(p.name == "rank" for p in op.static_params)}
"""Operators that end with a truncated SVD (they take a `rank`; so does `save`): in float32 their
results carry errors relative to the whole matrix, so even a unit that is exactly zero comes out
at ~1e-8."""


@contextmanager
def rounding_shadow(seed: int) -> Iterator[None]:
    """Run the dense reference with every operator's result perturbed by a random error of float32's
    unit roundoff: relative to each entry (the load results too), or to the whole matrix for the
    `TRUNCATING` ones and before a `save(…, rank=N)` — what float32 rounding at each step of the program does to its result. The
    difference from the exact reference is the program's own sensitivity to float32 rounding, unit by
    unit: large where it cancels, or normalises a unit that only exact arithmetic keeps at zero."""
    generator = torch.Generator().manual_seed(seed)
    original_apply = Executor._apply

    def noise(value: torch.Tensor) -> torch.Tensor:
        return (torch.rand(value.shape, generator=generator, dtype=torch.float64) * 2 - 1).to(value.dtype)

    def normwise(value: torch.Tensor) -> torch.Tensor:
        return value + DELTA_SHADOW * noise(value) * value.norm() / max(1, value.numel()) ** 0.5

    def apply(self, node, args, ctx):
        if node.op == "save":  # save(…, rank=N) truncates too
            if node.attr("rank") is not None and isinstance(args[0], torch.Tensor):
                args = [normwise(args[0])]
            return original_apply(self, node, args, ctx)
        value = original_apply(self, node, args, ctx)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            value = normwise(value) if node.op in TRUNCATING else value * (1 + DELTA_SHADOW * noise(value))
        return value

    Executor._apply = apply
    try:
        yield
    finally:
        Executor._apply = original_apply


# Tolerances. Both backends compute the same formulas; the factored one in float32 (the default) or
# float64, the reference in float64 on m×n matrices. Rounding errors are relative to the values
# they are made in — the operands — and a program can amplify them (x − x·(1+ε) cancels, `dir`
# divides by a unit's norm), so a tolerance from the result's norm alone would be wrong both ways.
# Instead `rounding_shadow` measures each program's amplification on the reference itself: one
# rounding (≤ u relative) per operator result. The factored kernels round more often per operator
# (QR, Gram matrices and products summing up to 64 terms: ~√64·u each), so:
#   ‖factored − reference‖ ≤ SENSITIVITY·(u_dtype/u_32)·‖shadow − reference‖ + OUTPUT·u_dtype·‖reference‖ + FLOOR
# per module and save. Measured over 300 programs (the slow test's), the ratio
# ‖factored − reference‖ / (shadow term + u·‖reference‖) reached 77 in float32 (a rank-1 `save`
# truncation of a 32×32 merge: QR and SVD in float32, ~100·u of the result); its median is ~1, its
# 99th percentile ~20. SENSITIVITY and OUTPUT leave a 6× margin over the maximum. 512·u32 is 3e-5 of the norms involved, still
# float32 precision; a wrong formula errs by O(‖result‖). FLOOR (relative to the module's input
# norms) covers exact cancellations (x − x) that the shadow keeps exact but factor concatenation
# leaves at ~1e-16, and float64 runs, whose errors (~1e-12 at most) it dominates. In float32 the same
# cancellation leaves the rounding of the factor products themselves, ~√(2r)·u of the operands (the
# shadow cannot see it: both operands are one node, perturbed alike): CANCELLATION·u of the input
# norms, 3.8e-6 of them, still far below a wrong formula's O(‖operands‖). Measured: 0.8·u·Σ‖ΔW‖ for
# `svd(xs=[H, H], weights=[1, -1])`.
SENSITIVITY = 512.0
OUTPUT = 512.0
FLOOR = 1e-9
CANCELLATION = 64.0
UNIT = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}


def assert_close(got: Values, want: Values, shadow: Values, inputs_norm: dict[str, float], *, dtype: str,
                 label: str) -> None:
    for row in differences(got, want, shadow, inputs_norm, dtype=dtype, label=label):
        assert row["error"] <= row["tol"], row


def differences(got: Values, want: Values, shadow: Values, inputs_norm: dict[str, float], *, dtype: str,
                label: str) -> list[dict]:
    """Per save and module: the error, its tolerance and what the tolerance is made of."""
    assert got.keys() == want.keys() == shadow.keys(), label
    unit = UNIT[dtype]
    rows = []
    for path in want:
        modules = got[path].keys() | want[path].keys()  # a module one side lacks is a zero update there
        for module in sorted(modules):
            like = want[path].get(module, got[path].get(module))
            zero = torch.zeros_like(like)
            d = want[path].get(module, zero)
            f, s = got[path].get(module, zero), shadow[path].get(module, zero)
            assert torch.isfinite(f).all() and torch.isfinite(d).all(), (label, path, module)
            error, sensitivity = float((f - d).norm()), float((s - d).norm())
            tol = (SENSITIVITY * sensitivity * unit / DELTA_SHADOW + OUTPUT * unit * float(d.norm())
                   + max(FLOOR, CANCELLATION * unit) * (1.0 + inputs_norm.get(module, 0.0)))
            rows.append(dict(label=label, path=path, module=module, error=error, tol=tol,
                             sensitivity=sensitivity * unit / DELTA_SHADOW, norm=float(d.norm())))
    return rows


@pytest.fixture(scope="module")
def inputs_norm(quartet) -> dict[str, float]:
    return input_norms(quartet)


def input_norms(quartet: Path) -> dict[str, float]:
    """Σ over the inputs of ‖ΔW‖ per module."""
    text = "".join(f'{n} = load("adapters/{n}")\nsave({n}, "norm/{n}")\n' for n in INPUTS.names)
    values = run(lower(ScriptText(text, str(quartet / "prog.dipm"))), dense=True)
    out: dict[str, float] = {}
    for modules in values.values():
        for module, w in modules.items():
            out[module] = out.get(module, 0.0) + float(w.norm())
    return out


def check_equivalence(text: str, quartet: Path, inputs_norm: dict[str, float], dtypes=("float32",),
                      check=assert_close) -> None:
    program = lower(ScriptText(text, str(quartet / "prog.dipm")))
    o0, _ = optimize(program, level=0, verify=True)
    o2, _ = optimize(program, level=2, verify=True)
    reference = run(o0, dense=True)
    with rounding_shadow(seed=len(text)):
        shadow = run(o0, dense=True)
    check(run(o2, dense=True), reference, shadow, inputs_norm, dtype="float64", label="dense O2")
    for dtype in dtypes:
        check(run(o0, dtype=dtype), reference, shadow, inputs_norm, dtype=dtype, label=f"O0 {dtype}")
        check(run(o2, dtype=dtype), reference, shadow, inputs_norm, dtype=dtype, label=f"O2 {dtype}")


@st.composite
def numeric_scripts(draw) -> str:
    return print_script(NUMERIC.script(draw, depth=3, max_saves=2))


@CI
@given(text=numeric_scripts())
def test_optimized_and_unoptimized_match_the_dense_reference(quartet, inputs_norm, text):
    check_equivalence(text, quartet, inputs_norm, dtypes=("float32", "float64"))


def test_the_tolerance_is_float32_precision_of_the_operands(quartet, inputs_norm):
    """A result off by 1e-4 of its norm in one module fails the check; a result that cancels to
    zero (T − T) gets a tolerance from its operands' norms, not from its own (zero) norm."""
    text = ('H = load("adapters/H")\nT = load("adapters/T")\nsave(T, "out/t")\n'
            'save(detox(H, T, t=0.3) + lowrank(T, 2), "out/a")\nsave(dir(T - T, by="in") + T - T, "out/b")\n')
    program = lower(ScriptText(text, str(quartet / "prog.dipm")))
    reference = run(program, dense=True)
    with rounding_shadow(seed=1):
        shadow = run(program, dense=True)
    factored = run(program)
    assert_close(factored, reference, shadow, inputs_norm, dtype="float32", label="as computed")
    t, a, b = (str(quartet / "out" / name) for name in "tab")
    rows = differences(factored, reference, shadow, inputs_norm, dtype="float32", label="cancelled")
    for row in rows:
        if row["path"] == b:
            operand = float(reference[t][row["module"]].norm())
            assert row["norm"] == 0.0 and 1e-6 * operand < row["tol"] < 1e-4 * operand, (row, operand)
    module = sorted(factored[a])[0]
    factored[a][module] = factored[a][module] * (1 + 1e-4)
    with pytest.raises(AssertionError):
        assert_close(factored, reference, shadow, inputs_norm, dtype="float32", label="off by 1e-4")


def test_an_exact_cancellation_in_float32_is_within_the_operands_rounding(quartet, inputs_norm):
    """H − H through PEFT's svd merge is zero exactly in float64; in float32 it leaves the factor
    products' rounding (found by the slow random run), which the tolerance allows, and no more: the
    same result off by 1e-4 of the operands fails."""
    text = 'H = load("adapters/H")\nsave(svd(xs=[H, H], weights=[1, -1]), "out/c")\n'
    check_equivalence(text, quartet, inputs_norm, dtypes=("float32",))
    program = lower(ScriptText(text, str(quartet / "prog.dipm")))
    reference = run(program, dense=True)
    factored = run(program, dtype="float32")
    out = str(quartet / "out" / "c")
    module = sorted(reference[out])[0]
    factored[out][module] = factored[out][module] + 1e-4 * inputs_norm[module] / factored[out][module].numel() ** 0.5
    with pytest.raises(AssertionError):
        assert_close(factored, reference, reference, inputs_norm, dtype="float32", label="off by 1e-4")


def test_numeric_programs_cover_every_operator():
    """The numeric programs (which must run without error) still write every operator and `by`."""
    seen: set[str] = set()
    texts = []

    # 600 scripts: with ~100 written operators drawn evenly by `focused`, 200 and then 400 left one out
    # by chance whenever the table grew (the rarest are drawn ~4 times per 400)
    @settings(CI, max_examples=600)
    @given(script=st.composite(lambda draw: NUMERIC.script(draw, depth=3, max_saves=2))())
    def collect(script):
        called(script, seen)
        texts.append(print_script(script))

    collect()
    wanted = {op.name for op in written_operators(OPERATORS)} - set(IMAGE_MODEL_ONLY)  # test_lora_files.py runs those
    assert wanted <= seen, wanted - seen
    for by in BYS:
        assert any(f'"{by}"' in text for text in texts), by


@pytest.mark.slow
@SLOW
@given(text=numeric_scripts())
def test_optimized_and_unoptimized_match_the_dense_reference_many(quartet, inputs_norm, text):
    check_equivalence(text, quartet, inputs_norm, dtypes=("float32", "float64"))


# ---- exception parity -------------------------------------------------------------------------------
#
# What can fail at run time (read from the kernels): `mean` whose weights sum to zero
# (backend/arith.weighted_mean), `lora(B, A)` of factors of different ranks (ops/deltas), factor
# arithmetic of different ranks (arith.plain) — both found earlier, from the headers, when the factors
# are the adapters' own (run/factor_ranks.py) —, factor merges of adapters of unequal rank
# (planning.check_factor_merge_ranks, before any tensor is read), and division by zero in the
# arithmetic kernels. The last one never comes from a script: the lowering refuses every zero
# divisor (`mag(x) / 0`, `x / (1 - 1)`, a name bound to 0) at compile time, and the passes rely on
# it (fuse folds `x / k` into a coefficient 1/k); only hand-built IR reaches the kernels' check.

ZERO_SUM = ((1.0, -1.0), (-0.5, 0.5), (2.0, -1.0, -1.0), (0.5, 0.25, -0.75))
BYS = ("out", "in", "matrix")
FACTOR_MERGES = sorted(op.name for op in OPERATORS if op.callable and any(
    isinstance(p.kind, UpdateList) and p.kind.adapters for p in op.params))


RANKS_MEET = "factors of different ranks meet here"  # found in the plan, from the headers (run/factor_ranks.py)


def _other_class(draw, cls):
    return pick(draw, [c for c in INPUTS.classes if c != cls])


def _mean_zero_weights(draw, scope):
    by = pick(draw, BYS)
    weights = pick(draw, ZERO_SUM)
    mags = [NUMERIC.expr(draw, mag_t(by), 1, scope)[0] for _ in weights]
    mean = Call("mean", (ListExpr(tuple(mags)), ListExpr(tuple(number_literal(w) for w in weights))), ())
    direction = NUMERIC.expr(draw, dir_t(by), 1, scope)[0]
    return Call("recombine", (direction, mean), ()), ("mean: the weights sum to zero",)


def _lora_ranks(draw, scope):
    b_class = pick(draw, INPUTS.classes)
    a_class = _other_class(draw, b_class)
    b = NUMERIC.expr(draw, factor_t("B"), 1, scope, rank_class=b_class)[0]
    a = NUMERIC.expr(draw, factor_t("A"), 1, scope, rank_class=a_class)[0]
    return Call("lora", (b, a), ()), ("lora: B has rank", RANKS_MEET)


def _factor_sum_ranks(draw, scope):
    first = pick(draw, INPUTS.classes)
    second = _other_class(draw, first)
    which = pick(draw, "AB")
    x = NUMERIC.expr(draw, factor_t(which), 1, scope, rank_class=first)[0]
    y = NUMERIC.expr(draw, factor_t(which), 1, scope, rank_class=second)[0]
    total = BinOp(pick(draw, "+-"), x, y)
    other = Attr(Name(pick(draw, first)), "A" if which == "B" else "B")
    args = (total, other) if which == "B" else (other, total)
    # the sum fails where both have the module at different ranks; where only one has it, it is that
    # one's factor (the other's is zero, SPEC §7.3), and lora may fail there first
    return Call("lora", args, ()), ("factor shapes differ", "lora: B has rank", RANKS_MEET)


def _factor_merge_ranks(draw, scope):
    name = pick(draw, FACTOR_MERGES)
    first = pick(draw, INPUTS.classes)
    names = [pick(draw, first), pick(draw, _other_class(draw, first))]
    if draw(st.booleans()):
        names.reverse()
    sig = NUMERIC.signatures[DELTA][[s.op.name for s in NUMERIC.signatures[DELTA]].index(name)]
    extra = tuple(Keyword(p.name, literal(NUMERIC.static(draw, p, sig))) for p in sig.op.call_params
                  if p.static and p.default is S.REQUIRED)
    return Call(name, (ListExpr(tuple(Name(n) for n in names)),), extra), ("the adapters' LoRA ranks differ",)


FAILURES = {"mean-zero-weights": _mean_zero_weights, "lora-ranks": _lora_ranks,
            "factor-sum-ranks": _factor_sum_ranks, "factor-merge-ranks": _factor_merge_ranks}


@st.composite
def failing_scripts(draw, kind: str) -> tuple[str, tuple[str, ...]]:
    """A valid numeric script with one failing update of class `kind` placed in a save (alone or
    inside a valid expression that keeps it), and the message fragment expected."""
    script = NUMERIC.script(draw, depth=2, max_saves=2)
    failing, expected = FAILURES[kind](draw, Scope())
    wrap = draw(st.integers(0, 3))
    if wrap == 1:
        failing = BinOp("+", failing, NUMERIC.update(draw, 1, Scope()))
    elif wrap == 2:
        failing = BinOp("*", Number(2.0), failing)
    elif wrap == 3:
        by = pick(draw, BYS)
        failing = Call("recombine", (Call("dir", (failing,), (Keyword("by", String(by)),)),
                                     NUMERIC.expr(draw, mag_t(by), 1, Scope())[0]), ())
    statements = list(script.statements)
    first_save = next(i for i, s in enumerate(statements) if isinstance(s, ExprStmt))
    at = draw(st.integers(first_save, len(statements)))
    statements.insert(at, ExprStmt(Call("save", (failing, String("out/fail")), ())))
    return print_script(Script(tuple(statements))), expected


def outcome(program: Program, *, dense: bool) -> tuple[str, str] | None:
    """The error a run raises (class and rendered message, with position and module), or None."""
    try:
        run(program, dense=dense)
    except DipmError as e:
        return type(e).__name__, str(e)
    return None


def without_module(message: str) -> str:
    return re.sub(r"\(module [^)]*\)", "(module …)", message)


def without_adapters(message: str) -> str:
    """The message with the adapters it names left out (their ranks kept)."""
    return re.sub(r"\S*/adapters/\w+ has rank", "… has rank", without_module(message))


def check_parity(program: Program, expected: tuple[str, ...]) -> None:
    outcomes = {}
    for level in (0, 2):
        optimized, _ = optimize(program, level=level, verify=True)
        outcomes[level, "factored"] = outcome(optimized, dense=False)
        outcomes[level, "dense"] = outcome(optimized, dense=True)
        # the same class, message, position and module in both backends
        assert outcomes[level, "factored"] == outcomes[level, "dense"], outcomes
    failure = outcomes[0, "factored"]
    assert failure is not None and failure[0] == "ExecutionError", outcomes
    assert any(fragment in failure[1] for fragment in expected), (expected, failure)
    assert "(module " in failure[1], failure  # the module is named
    # O2 fails the same way; the module named may differ only because dead inputs leave the module
    # union at O2 (a program's first module can be one only an unused input has), and the adapter
    # named only by one of the same rank: `lerp(dir(G.A), dir(H.A), t=1)` is H's direction at O2
    assert outcomes[2, "factored"][0] == failure[0], outcomes
    assert without_adapters(outcomes[2, "factored"][1]) == without_adapters(failure[1]), outcomes


@pytest.mark.parametrize("kind", sorted(FAILURES))
@settings(CI, max_examples=6)
@given(data=st.data())
def test_run_time_failures_are_the_same_in_every_backend(quartet, kind, data):
    text, expected = data.draw(failing_scripts(kind))
    check_parity(lower(ScriptText(text, str(quartet / "prog.dipm"))), expected)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FAILURES))
@settings(CI, max_examples=100)
@given(data=st.data())
def test_run_time_failures_are_the_same_in_every_backend_many(quartet, kind, data):
    text, expected = data.draw(failing_scripts(kind))
    check_parity(lower(ScriptText(text, str(quartet / "prog.dipm"))), expected)


SENTINEL = 7919.0  # a divisor the lowering accepts, replaced by 0 in the IR


def with_zero_divisor(program: Program) -> Program:
    def rewrite(node: Node, args: tuple[Node, ...]) -> Node:
        if node.op == "const" and node.value == SENTINEL:
            return Node.make("const", (), {"value": 0.0}, NUM, unique=True)
        if all(a is b for a, b in zip(args, node.args)):
            return node
        return Node.make(node.op, args, dict(node.attrs), node.type, unique=node.uid is not None)
    return program.rebuild(rewrite)


@st.composite
def zero_divisions(draw) -> str:
    """`m / 0` for a magnitude and `k / 0` for a number, inside a valid script (as text with the
    sentinel divisor), and the division written with a divisor that is zero at compile time."""
    script = NUMERIC.script(draw, depth=2, max_saves=1)
    by = pick(draw, BYS)
    magnitude = NUMERIC.expr(draw, mag_t(by), 1, Scope())[0]
    if draw(st.booleans()):
        divided = BinOp("/", magnitude, Number(SENTINEL))
    else:  # a number divided by zero, scaling a magnitude (no rule can simplify it away)
        divided = BinOp("*", magnitude, BinOp("/", NUMERIC.number(draw, 1, Scope()), Number(SENTINEL)))
    failing = Call("recombine", (NUMERIC.expr(draw, dir_t(by), 1, Scope())[0], divided), ())
    statements = (*script.statements, ExprStmt(Call("save", (failing, String("out/fail")), ())))
    return print_script(Script(statements))


@CI
@given(text=zero_divisions(), zero=st.sampled_from(["0", "(1 - 1)", "0 * 3", "zero"]))
def test_division_by_zero_is_a_compile_time_error_and_the_kernels_agree_on_it(quartet, text, zero):
    # in a script, a zero divisor is refused before anything runs, pointing at the divisor
    written = text.replace(f"/ {int(SENTINEL)}", f"/ {zero}")
    if zero == "zero":
        written = "zero = 0\n" + written
    with pytest.raises(DipmTypeError, match="division by zero"):
        lower(ScriptText(written, str(quartet / "prog.dipm")))
    # the kernels' own check (for IR that carries a zero divisor) fails alike in both backends
    check_parity(with_zero_divisor(lower(ScriptText(text, str(quartet / "prog.dipm")))), ("division by zero",))
