"""Property tests of the front end and the passes (STYLE.md practice 13).

A `st.recursive` strategy builds random well-typed dipm programs as AST: a few named inputs, a
`def`, bindings, and saves to distinct folders, over dir / normalize / mag / reverse / shift / orth /
mix / mean / recombine / arithmetic / lowrank / select / replace / lora / the standard library; each
operator coerces its operands to the kinds and `by` it needs, so every program is well typed. Properties: print → parse round-trips; lowering
succeeds; every pass keeps the verifier happy, is idempotent and keeps every save's type; the
optimised program writes the same folders. And on arbitrary or mangled text, the front end raises
nothing but `DipmError`s.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipm_lang.compiler import PASSES, ScriptText, lower, verify
from dipm_lang.errors import DipmError
from dipm_lang.frontend.ast import (Attr, BinOp, Binding, Call, Def, ExprStmt, Keyword, ListExpr, Name, Neg, Number,
                                    Param, Script, String)
from dipm_lang.frontend.parser import parse_script
from dipm_lang.frontend.printer import print_script
from dipm_lang.ir.graph import print_program
from dipm_lang.ir.node import Program

settings.register_profile("dipm-ci", deadline=None, derandomize=True, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CI = settings(settings.get_profile("dipm-ci"))

FILE = "props/prog.dipm"  # relative load paths resolve against props/; nothing is read
BYS = ("out", "in", "matrix")
INPUTS = ("h", "g", "bad")  # all three are loaded; a program may leave some unused


def call(func: str, *args, **kwargs) -> Call:
    return Call(func, tuple(args), tuple(Keyword(k, v) for k, v in kwargs.items()))


# ---- numbers ---------------------------------------------------------------------------------

LITERALS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 0.001, 1.5, 10.0]).map(Number)
WEIGHTS = st.sampled_from([0.5, 1.0, 2.0, 0.25]).map(Number)
DIVISORS = st.sampled_from([0.5, 2.0, 4.0, 3.0]).map(Number)


def numbers(extra: tuple[str, ...] = ()) -> st.SearchStrategy:
    """Num expressions: literals (and number parameters) under + - * / and unary minus."""
    leaves = LITERALS if not extra else st.one_of(LITERALS, st.sampled_from(extra).map(Name))
    return st.one_of(
        leaves,
        st.builds(Neg, leaves),
        st.builds(BinOp, st.sampled_from("+-*"), leaves, leaves),
        st.builds(lambda a, k: BinOp("/", a, k), leaves, DIVISORS),
    )


# ---- typed expressions ---------------------------------------------------------------------------
#
# The recursive strategy draws `(kind, by, expr)` triples, kind one of "Delta", "Dir", "Mag". Every
# operator coerces its operands to the kinds it needs (`update`, `direction`, `magnitude` below), so
# whatever the children are, the result is well typed; the coercions are themselves dipm operators.

T = tuple  # (kind, by, expr)


def by_kwargs(by: str, explicit: bool) -> dict:
    # by="out" is the default: sometimes written, sometimes left out
    return {"by": String(by)} if by != "out" or explicit else {}


class Typed:
    """The typed-expression strategy over some leaf names (all updates)."""

    def __init__(self, leaves: tuple[str, ...], nums: st.SearchStrategy, *, blend: bool):
        self.anchor = Name(leaves[0])  # an update to recombine a magnitude with, when one is needed
        self.nums = nums
        self.blend = blend
        self.strategy = st.recursive(st.sampled_from(leaves).map(lambda n: ("Delta", None, Name(n))),
                                     self.extend, max_leaves=8)
        self.updates = self.strategy.map(self.update)

    # coercions
    def update(self, e: T):
        kind, by, x = e
        return x if kind != "Mag" else call("recombine", call("dir", self.anchor, **by_kwargs(by, False)), x)

    def direction(self, e: T, by: str):
        kind, b, x = e
        return x if kind == "Dir" and b == by else call("dir", self.update(e), **by_kwargs(by, False))

    def magnitude(self, e: T, by: str):
        kind, b, x = e
        return x if kind == "Mag" and b == by else call("mag", self.update(e), **by_kwargs(by, False))

    def extend(self, c: st.SearchStrategy) -> st.SearchStrategy:
        u, d, m, nums, by = self.update, self.direction, self.magnitude, self.nums, st.sampled_from(BYS)
        cs = st.lists(c, min_size=1, max_size=3)

        def weighted(op: str, kind: str, coerce):
            def build(items, b, with_weights, ws):
                args = [ListExpr(tuple(coerce(i, b) for i in items))]
                if with_weights:
                    args.append(ListExpr(tuple(ws[:len(items)])))
                return (kind, b, call(op, *args))
            return st.builds(build, cs, by, st.booleans(), st.lists(WEIGHTS, min_size=3, max_size=3))

        def delta(f):
            return lambda *a: ("Delta", None, f(*a))

        options = [
            # updates
            st.builds(delta(lambda op, a, b: BinOp(op, u(a), u(b))), st.sampled_from("+-"), c, c),
            st.builds(delta(lambda k, a: BinOp("*", k, u(a))), nums, c),
            st.builds(delta(lambda a, k: BinOp("*", u(a), k)), c, nums),
            st.builds(delta(lambda a, k: BinOp("/", u(a), k)), c, DIVISORS),
            st.builds(delta(lambda a: Neg(u(a))), c),
            st.builds(delta(lambda a, e, b: call("recombine", d(a, b), m(e, b))), c, c, by),
            st.builds(delta(lambda a, r: call("lowrank", u(a), Number(float(r)))), c, st.integers(1, 8)),
            st.builds(delta(lambda a, p: call("select", u(a), pattern=String(p))), c,
                      st.sampled_from(["q_proj", "v_proj|o"])),
            st.builds(delta(lambda a, lo, n: call("select", u(a), layers=ListExpr((Number(float(lo)),
                                                                                    Number(float(lo + n)))))),
                      c, st.integers(0, 3), st.integers(0, 3)),
            st.builds(delta(lambda a, b: call("replace", u(a), u(b), pattern=String("mlp"))), c, c),
            st.builds(delta(lambda a, b: call("lora", Attr(u(a), "B"), Attr(u(b), "A"))), c, c),
            st.builds(delta(lambda a, b, k: call("lora", BinOp("*", k, Attr(u(a), "B")), Attr(u(b), "A"))),
                      c, c, nums),
            # the standard library
            st.builds(delta(lambda a, b, t: call("transfer", u(a), u(b), t=t)), c, c, nums),
            st.builds(delta(lambda a, b, t, b_: call("detox", u(a), u(b), t, String(b_))), c, c, nums, by),
            st.builds(delta(lambda a, s: call("unlearn", u(a), strength=s)), c, nums),
            st.builds(delta(lambda items: call("multitask", ListExpr(tuple(as_delta(u(i)) for i in items)))), cs),
            st.builds(delta(lambda a, b, w1, w2: call("multitask", ListExpr((as_delta(u(a)), as_delta(u(b)))),
                                                      ListExpr((w1, w2)), by=String("in"))), c, c, WEIGHTS, WEIGHTS),
            st.builds(delta(lambda a, b, k: call("task_arithmetic", u(a), u(b), lam=k)), c, c, nums),
            st.builds(delta(lambda a, b: call("negate", u(a), u(b))), c, c),
            # directions
            st.builds(lambda a, f, b, explicit: ("Dir", b, call(f, u(a), **by_kwargs(b, explicit))),
                      c, st.sampled_from(["dir", "normalize"]), by, st.booleans()),
            st.builds(lambda a, b: ("Dir", b, call("reverse", d(a, b))), c, by),
            st.builds(lambda a, e, t, b: ("Dir", b, call("shift", d(a, b), d(e, b), t)), c, c, nums, by),
            st.builds(lambda a, e, b: ("Dir", b, call("orth", d(a, b), d(e, b))), c, c, by),
            weighted("mix", "Dir", d),
            # magnitudes
            st.builds(lambda a, b, explicit: ("Mag", b, call("mag", u(a), **by_kwargs(b, explicit))),
                      c, by, st.booleans()),
            st.builds(lambda a, k, b, left: ("Mag", b, BinOp("*", k, m(a, b)) if left else BinOp("*", m(a, b), k)),
                      c, nums, by, st.booleans()),
            st.builds(lambda a, k, b: ("Mag", b, BinOp("/", m(a, b), k)), c, DIVISORS, by),
            st.builds(lambda op, a, e, b: ("Mag", b, BinOp(op, m(a, b), m(e, b))), st.sampled_from("+-"), c, c, by),
            st.builds(lambda a, b: ("Mag", b, Neg(m(a, b))), c, by),
            st.builds(lambda a, b: ("Mag", b, call("abs", m(a, b))), c, by),
            st.builds(lambda f, a, e, b: ("Mag", b, call(f, m(a, b), m(e, b))), st.sampled_from(["max", "min"]),
                      c, c, by),
            weighted("mean", "Mag", m),
        ]
        if self.blend:  # the script's own def
            options += [st.builds(delta(lambda a, b: call("blend", u(a), u(b))), c, c),
                        st.builds(delta(lambda a, b, k: call("blend", u(a), u(b), k=k)), c, c, nums)]
        return st.one_of(options)


def as_delta(x) -> BinOp:
    """`1 * x`: a Delta even when x is a Dir (a list holds values of one kind)."""
    return BinOp("*", Number(1.0), x)


# Built once: the def's body (over its parameters), and the values of the script's statements over
# the inputs and the bindings made so far (v0, v1, … in order).
BODIES = Typed(("x", "y"), numbers(("k",)), blend=False).updates
MAX_BINDINGS = 3
VALUES = [Typed(INPUTS + tuple(f"v{i}" for i in range(n)), numbers(), blend=True).updates
          for n in range(MAX_BINDINGS + 1)]


@st.composite
def scripts(draw) -> Script:
    """A well-typed script: a def, inputs, bindings and saves (to distinct folders), interleaved."""
    body = draw(BODIES)
    statements: list = [Def("blend", (Param("x", None), Param("y", None), Param("k", Number(0.5))), body)]
    statements += [Binding(name, call("load", String(f"adapters/{name}"))) for name in INPUTS]
    bindings = saves = 0
    layout = draw(st.lists(st.booleans(), min_size=0, max_size=4))
    for is_save in layout + [True]:
        is_save = is_save or bindings == MAX_BINDINGS
        value = draw(VALUES[bindings])
        if is_save:
            rank = draw(st.none() | st.integers(1, 16))
            kwargs = {} if rank is None else {"rank": Number(float(rank))}
            statements.append(ExprStmt(call("save", value, String(f"out/{saves}"), **kwargs)))
            saves += 1
        else:
            statements.append(Binding(f"v{bindings}", value))
            bindings += 1
    return Script(tuple(statements))


# ---- properties of well-typed programs ----------------------------------------------------------

def save_types(program: Program) -> dict[str, object]:
    return {root.attr("path"): root.args[0].type for root in program.roots}


@CI
@given(scripts())
def test_print_parse_round_trip(script):
    text = print_script(script)
    parsed = parse_script(text)
    assert parsed == script
    assert print_script(parsed) == text


@CI
@given(scripts())
def test_passes_on_random_programs(script):
    program = lower(ScriptText(print_script(script), FILE))  # lowering succeeds: the program is well typed
    verify(program, after="lowering")
    paths = {root.attr("path") for root in program.roots}
    assert len(paths) == len(program.roots) == sum(isinstance(s, ExprStmt) for s in script.statements)
    types = save_types(program)
    for name, run in PASSES:
        before = program
        program = run(before)
        verify(program, after=name)
        assert save_types(program) == types, name
        assert all(root.type == before_root.type for root, before_root in zip(program.roots, before.roots))
        for key in set(program.bindings) & set(before.bindings):
            assert program.bindings[key].type == before.bindings[key].type, (name, key)
        once = print_program(program)
        assert print_program(run(program)) == once, f"{name} is not idempotent"
    assert {root.attr("path") for root in program.roots} == paths
    # the optimised program is a fixed point of every pass
    for name, run in PASSES:
        assert print_program(run(program)) == print_program(program), name


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
    text = print_script(draw(scripts()))
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


def test_the_strategy_covers_the_operators():
    """A guard on the generator itself: across a fixed sample, every operator shows up."""
    seen: set[str] = set()

    def collect(node) -> None:
        if isinstance(node, Call):
            seen.add(node.func)
        for value in vars(node).values():
            for item in value if isinstance(value, tuple) else (value,):
                if hasattr(item, "__dataclass_fields__"):
                    collect(item)

    @settings(deadline=None, derandomize=True, max_examples=200, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(scripts())
    def sample(script):
        collect(script)

    sample()
    assert {"dir", "normalize", "mag", "reverse", "shift", "orth", "mix", "mean", "recombine", "lowrank",
            "select", "replace", "lora", "save", "load", "blend", "transfer", "detox", "unlearn", "multitask",
            "task_arithmetic", "negate", "abs", "max", "min"} <= seen
