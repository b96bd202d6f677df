"""Property tests of the front end and the passes (STYLE.md practice 13), on random well-typed
programs from the one generator of tests/programs.py (driven by the operator declarations).

Properties: print → parse round-trips; lowering succeeds and the verifier holds after lowering
and after every pass; no pass adds operations, and each is idempotent and keeps every save's type;
optimized programs print the same every time, in any process; the optimised program writes the
same folders. And on arbitrary or mangled text, the front end raises nothing but `DipmError`s.
Guards on the generator itself: every operator a script can write is generated, an operator added
to the table is generated without changing the generator, and each drawn expression has the type
the generator meant.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clitools import cli_env
from dipm_lang.compiler import PASSES, ScriptText, compile, lower, verify
from dipm_lang.errors import DipmError
from dipm_lang.frontend.ast import ExprStmt
from dipm_lang.frontend.lower import Lowerer, load_prelude
from dipm_lang.frontend.parser import parse_script
from dipm_lang.frontend.printer import print_expr, print_script
from dipm_lang.ir.graph import print_program
from dipm_lang.ir.node import Program
from dipm_lang.ir.operator import Operator, OperatorTable
from dipm_lang.ir.signature import DirOf, MagOf, Number, Param, Update
from dipm_lang.ir.types import BY_VALUES, DELTA, NUM, dir_t, mag_t
from dipm_lang.ops import OPERATORS
from programs import BASE_NAME, STDLIB, Generator, called, expressions, scripts, written_operators

settings.register_profile("dipm-ci", deadline=None, derandomize=True, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CI = settings(settings.get_profile("dipm-ci"))
SLOW = settings(CI, max_examples=2000)

FILE = "props/prog.dipm"  # relative load paths resolve against props/; nothing is read
GENERATOR = Generator()
SCRIPTS = scripts(GENERATOR)


# ---- properties of well-typed programs ----------------------------------------------------------

def save_types(program: Program) -> dict[str, object]:
    return {root.attr("path"): root.args[0].type for root in program.roots}


def operations(program: Program) -> int:
    """Nodes that compute something (constants are values, not work)."""
    return sum(node.op != "const" for node in program.nodes())


@CI
@given(scripts(GENERATOR))
def test_print_parse_round_trip(script):
    text = print_script(script)
    parsed = parse_script(text)
    assert parsed == script
    assert print_script(parsed) == text


def check_passes(script) -> None:
    text = print_script(script)
    program = lower(ScriptText(text, FILE))  # lowering succeeds: the program is well typed
    verify(program, after="lowering")
    # one save node per save statement, in order (the verifier checks they are distinct)
    assert len(program.roots) == sum(isinstance(s, ExprStmt) for s in script.statements)
    paths = [root.attr("path") for root in program.roots]
    types = save_types(program)
    for name, run in PASSES:
        before = program
        program = run(before)
        verify(program, after=name)
        # node counts never grow; simplify may add a folded constant while the one it replaces
        # stays in use (test_simplify_may_add_a_constant), but never an operation
        assert operations(program) <= operations(before), name
        if name != "simplify":
            assert len(program.nodes()) <= len(before.nodes()), name
        assert save_types(program) == types, name
        for key in set(program.bindings) & set(before.bindings):
            assert program.bindings[key].type == before.bindings[key].type, (name, key)
        once = print_program(program)
        assert print_program(run(program)) == once, f"{name} is not idempotent"
    assert [root.attr("path") for root in program.roots] == paths
    # the optimised program is a fixed point of every pass, and what compile() makes
    for name, run in PASSES:
        assert print_program(run(program)) == print_program(program), name
    assert print_program(compile(ScriptText(text, FILE), verify=True).program) == print_program(program)


@CI
@given(scripts(GENERATOR))
def test_passes_on_random_programs(script):
    check_passes(script)


@pytest.mark.slow
@SLOW
@given(scripts(GENERATOR))
def test_passes_on_many_random_programs(script):
    check_passes(script)


def test_simplify_may_add_a_constant_but_never_an_operation():
    """The contract the pass-contract property checks, on the case that drew it: `h / 3` becomes
    `h * 0.333…` while the binding `v` still holds 3, so the node count grows by one constant (a
    number, no work); the operations do not grow."""
    text = 'h = load("h")\nv = 3\nsave(h / 3, "o")\n'
    program = dict(PASSES)["cse"](lower(ScriptText(text, FILE)))
    simplified = dict(PASSES)["simplify"](program)
    def count(p, consts):
        return sum((n.op == "const") == consts for n in p.nodes())

    assert count(simplified, consts=True) == count(program, consts=True) + 1
    assert count(simplified, consts=False) == count(program, consts=False)


def optimized_listings(texts: list[str]) -> list[str]:
    return [print_program(compile(ScriptText(text, FILE)).program) for text in texts]


PRINT_PROBE = f"""
import json, sys
from dipm_lang.compiler import ScriptText, compile
from dipm_lang.ir.graph import print_program
print(json.dumps([print_program(compile(ScriptText(t, {FILE!r})).program) for t in json.load(sys.stdin)]))
"""


@functools.lru_cache(maxsize=None)
def sample(strategy, count: int) -> list:
    """`count` values of `strategy`, the same ones on every run (drawn once per session)."""
    out: list = []

    @settings(deadline=None, derandomize=True, max_examples=count, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def collect(value):
        out.append(value)

    collect()
    return out


def test_optimized_programs_print_the_same_in_every_process():
    """Compiling twice, here and in processes with other hash seeds (set and dict orders of
    strings change with them), lists the same optimized program."""
    texts = [print_script(s) for s in sample(SCRIPTS, 200)[:40]]
    here = optimized_listings(texts)
    assert optimized_listings(texts) == here
    for seed in ("1",):
        done = subprocess.run([sys.executable, "-c", PRINT_PROBE], input=json.dumps(texts), capture_output=True,
                              text=True, env=cli_env(PYTHONHASHSEED=seed))
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == here, seed


# ---- the generator itself -------------------------------------------------------------------------

def test_every_written_operator_is_generated():
    """Across a fixed sample, every operator a script can write appears (so one added to
    `dipm_lang.ops` is exercised by every property here), and every standard-library def."""
    seen: set[str] = set()
    for script in sample(SCRIPTS, 300):
        called(script, seen)
    assert {op.name for op in written_operators(OPERATORS)} <= seen, \
        {op.name for op in written_operators(OPERATORS)} - seen
    assert set(STDLIB) | {"blend"} <= seen


def test_an_operator_added_to_the_table_is_generated():
    dummy = Operator("dummy_blend", (Param("d", DirOf("b")), Param("m", MagOf("b")), Param("x", Update()),
                                     Param("k", Number())), DELTA, "A test operator.")
    table = OperatorTable.of(list(OPERATORS), [dummy])
    generator = Generator(table)
    # Which derandomized scripts come out depends on every draw the generator makes (and on the
    # sample size), so a few sizes are tried: one of them must show the new operator.
    for count in (60, 80, 100):
        drawn = [s for s in sample(scripts(generator), count) if "dummy_blend" in called(s)]
        if drawn:
            break
    assert drawn
    for script in drawn[:10]:  # well typed by the extended table's own rules
        text = print_script(script)
        Lowerer(operators=table).script(parse_script(text, FILE), text)


def test_the_standard_library_table_matches_stdlib():
    prelude = load_prelude()
    assert set(STDLIB) == set(prelude.functions)
    for name, params in STDLIB.items():
        assert [p for p, _ in params] == [p.name for p in prelude.functions[name].definition.params], name


WANTS = [DELTA, NUM, *(dir_t(b) for b in BY_VALUES), *(mag_t(b) for b in BY_VALUES)]


@CI
@given(st.sampled_from(WANTS).flatmap(lambda want: st.tuples(st.just(want), expressions(GENERATOR, want))))
def test_a_drawn_expression_has_the_type_asked(case):
    want, expr = case
    lowerer = Lowerer()
    # the inputs and the base weights' leaf are bound as every drawn script binds them
    loads = "".join(f'{name} = load("/inputs/{name}")\n' for name in GENERATOR.inputs.names)
    text = f'{loads}{BASE_NAME} = base("base")\nvalue = {print_expr(expr)}\n'
    node = lowerer.script(parse_script(text, FILE), text).bindings["value"]
    assert node.type == want or (want == DELTA and node.type.is_update), (want, node.type)


# ---- the front end on text that is not a valid program --------------------------------------------

@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> str:
    # an empty folder: `import "…"` in fuzzed text finds nothing there
    return str(tmp_path_factory.mktemp("fuzz") / "fuzz.dipm")


def front_end(text: str, file: str) -> None:
    """Lower `text`; any outcome but success or a DipmError fails the test."""
    try:
        lower(ScriptText(text, file))
    except DipmError as e:
        assert e.message  # and it says something
        assert e.exit_code in (1, 2)


TOKENS = [
    "h", "g", "x", "=", "(", ")", "[", "]", ",", "+", "-", "*", "/", ".", "A", "B", "C", '"', "'", "\n", ";", "#",
    " ", "\t", "0", "1", ".5", "1e-3", "1e999", "1e200", "dir", "mag", "reverse", "shift", "orth", "mix", "mean",
    "recombine", "normalize", "lowrank", "select", "replace", "lora", "save", "load", "def", "import", "by",
    '"out"', '"in"', '"matrix"', '"row"', "detox", "transfer", "multitask", "max", "abs", "\\", "\x00", "é",
    "\r", "\x0c", 'load("a")', 'save(h, "o")', "def f(x) = ", "layers=[0, 1]", "rank=", "pattern=", '"("',
]


@CI
@given(st.text())
def test_arbitrary_text_raises_only_dipm_errors(fuzz_file, text):
    front_end(text, fuzz_file)


@CI
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_token_soup_raises_only_dipm_errors(fuzz_file, text):
    front_end(text, fuzz_file)


@st.composite
def mutated(draw) -> str:
    """A valid script's text with a few random edits."""
    text = print_script(draw(scripts(GENERATOR)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "swap"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif edit == "replace":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        elif edit == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            k = draw(st.integers(j, min(len(text), j + 8)))
            text = text[:i] + text[j:k] + text[i:j] + text[k:]
    return text


@CI
@given(mutated())
def test_mutated_scripts_raise_only_dipm_errors(fuzz_file, text):
    front_end(text, fuzz_file)
