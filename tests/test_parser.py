"""The parser (SPEC §2's syntax, one form at a time), the printer, and golden snapshots.

Expected trees are written out by hand as AST dataclasses (spans do not take part in equality).
The golden files in tests/golden/ hold, for a few scripts, the printed AST and the printed IR
before and after optimisation; run with DIPM_UPDATE_GOLDEN=1 to rewrite them after a deliberate
change, then read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dipm_lang.compiler import ScriptText, compile, lower
from dipm_lang.errors import DipmSyntaxError, Span
from dipm_lang.frontend.ast import (Attr, BinOp, Binding, Call, Def, ExprStmt, Import, Keyword, ListExpr, Name, Neg,
                                    Number, Param, Script, String)
from dipm_lang.frontend.parser import parse_expression, parse_script
from dipm_lang.frontend.printer import format_number, format_string, print_expr, print_script
from dipm_lang.ir.graph import print_program
from dipm_lang.compiler import verify

GOLDEN = Path(__file__).parent / "golden"


def n(id_: str) -> Name:
    return Name(id_)


def num(value: float) -> Number:
    return Number(float(value))


def call(func: str, *args, **kwargs) -> Call:
    return Call(func, tuple(args), tuple(Keyword(k, v) for k, v in kwargs.items()))


def expr(text: str):
    return parse_expression(text)


def statements(text: str) -> tuple:
    return parse_script(text).statements


def roundtrip(text: str) -> None:
    """print → parse gives the same tree back, and printing is a fixed point after one round."""
    tree = parse_script(text)
    printed = print_script(tree)
    again = parse_script(printed)
    assert again == tree
    assert print_script(again) == printed


# ---- comments, bindings, separators ---------------------------------------------------------

def test_comments_run_to_the_end_of_the_line():
    text = "# a whole-line comment\nx = 1  # a trailing comment with = ( [ \" quotes\n# the last line, no newline"
    assert statements(text) == (Binding("x", num(1)),)


def test_empty_and_comment_only_scripts_have_no_statements():
    assert statements("") == ()
    assert statements("\n\n# nothing here\n   \n") == ()


def test_bindings_and_expression_statements():
    assert statements('h = load("a")\nsave(h, "o")\n') == (
        Binding("h", call("load", String("a"))),
        ExprStmt(call("save", n("h"), String("o"))),
    )


def test_semicolons_separate_statements_like_newlines():
    assert statements("a = 1; b = 2;; c = 3;\n;") == (
        Binding("a", num(1)), Binding("b", num(2)), Binding("c", num(3)))


def test_a_newline_outside_brackets_ends_the_statement():
    # `+ 2` on its own line is a second statement (unary plus), not a continuation
    assert statements("x = 1\n+ 2\n") == (Binding("x", num(1)), ExprStmt(num(2)))


def test_crlf_line_endings():
    assert statements("a = 1\r\nb = [1,\r\n 2]\r\n") == (
        Binding("a", num(1)), Binding("b", ListExpr((num(1), num(2)))))


# ---- def ----------------------------------------------------------------------------------

def test_def_with_defaults():
    (d,) = statements('def f(a, b=2, by="in") = a\n')
    assert d == Def("f", (Param("a", None), Param("b", num(2)), Param("by", String("in"))), n("a"))


def test_def_without_parameters_and_with_a_trailing_comma():
    assert statements("def f() = 1\ndef g(x,) = x\n") == (
        Def("f", (), num(1)), Def("g", (Param("x", None),), n("x")))


def test_def_doc_is_the_comment_block_directly_above():
    (_, d) = statements("x = 1\n# first line\n#   second line\ndef f(x) = x\n")
    assert d.doc == "first line\nsecond line"
    (d,) = statements("# not attached: a blank line follows\n\ndef f(x) = x\n")
    assert d.doc == ""


def test_def_with_a_repeated_parameter_is_a_syntax_error():
    with pytest.raises(DipmSyntaxError, match="parameter 'x' appears twice"):
        parse_script("def f(x, x) = x\n")


# ---- calls ---------------------------------------------------------------------------------

def test_positional_and_keyword_arguments():
    assert expr('detox(h, bad, t=0.25, by="in")') == Call(
        "detox", (n("h"), n("bad")), (Keyword("t", num(0.25)), Keyword("by", String("in"))))


def test_call_with_no_arguments_and_trailing_comma():
    assert expr("load()") == call("load")
    assert expr("dir(h,)") == call("dir", n("h"))


def test_positional_after_keyword_is_a_syntax_error():
    with pytest.raises(DipmSyntaxError, match="positional argument after a keyword argument"):
        parse_expression("f(by=1, x)")


def test_keyword_given_twice_is_a_syntax_error():
    with pytest.raises(DipmSyntaxError, match="keyword argument 'by' given twice"):
        parse_expression("f(x, by=1, by=2)")


# ---- numbers and strings ------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("7", 7.0), ("0", 0.0), ("2.", 2.0), (".5", 0.5), ("0.25", 0.25), ("1e-3", 0.001), ("1E3", 1000.0),
    ("3e+2", 300.0), ("2.5e-1", 0.25), (".5e1", 5.0),
])
def test_numbers(text, value):
    parsed = expr(text)
    assert parsed == Number(value)
    assert parsed.text == text  # the literal as written, for messages


def test_a_minus_sign_is_unary_not_part_of_the_literal():
    assert expr("-1e-3") == Neg(num(0.001))


@pytest.mark.parametrize("text, value", [
    ('"plain"', "plain"),
    ("'single quoted'", "single quoted"),
    ('"say \\"hi\\""', 'say "hi"'),
    ("'it\\'s'", "it's"),
    ('"a\\tb\\nc"', "a\tb\nc"),
    ('"back\\\\slash"', "back\\slash"),
    ('"\\x41\\u00e9"', "A\u00e9"),
    ('"double \' inside"', "double ' inside"),
    ("'single \" inside'", 'single " inside'),
    ('""', ""),
])
def test_strings_with_escapes(text, value):
    assert expr(text) == String(value)


def test_a_bad_escape_is_a_syntax_error_at_the_string():
    with pytest.raises(DipmSyntaxError, match="invalid escape") as e:
        parse_script('x = "\\N{NO SUCH CHARACTER}"\n')
    assert (e.value.span.line, e.value.span.column) == (1, 5)


def test_a_string_cannot_span_lines():
    with pytest.raises(DipmSyntaxError, match="unterminated string"):
        parse_script('x = "one\ntwo"\n')


# ---- lists, attributes, import --------------------------------------------------------------

def test_lists():
    assert expr("[]") == ListExpr(())
    assert expr('[a, 1, "s"]') == ListExpr((n("a"), num(1), String("s")))
    assert expr("[a,]") == ListExpr((n("a"),))
    assert expr("[[a], []]") == ListExpr((ListExpr((n("a"),)), ListExpr(())))


def test_factor_attributes():
    assert expr("x.A") == Attr(n("x"), "A")
    assert expr("load(p).B") == Attr(call("load", n("p")), "B")
    assert expr("lora(x.B, y.A)") == call("lora", Attr(n("x"), "B"), Attr(n("y"), "A"))


def test_import():
    assert statements('import "lib/recipes.dipm"\nimport \'other.dipm\'\n') == (
        Import("lib/recipes.dipm"), Import("other.dipm"))


# ---- precedence ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, tree", [
    ("a + b * c", BinOp("+", n("a"), BinOp("*", n("b"), n("c")))),
    ("a * b + c", BinOp("+", BinOp("*", n("a"), n("b")), n("c"))),
    ("a - b - c", BinOp("-", BinOp("-", n("a"), n("b")), n("c"))),  # left-associative
    ("a / b * c", BinOp("*", BinOp("/", n("a"), n("b")), n("c"))),
    ("a / b / c", BinOp("/", BinOp("/", n("a"), n("b")), n("c"))),
    ("a - b + c", BinOp("+", BinOp("-", n("a"), n("b")), n("c"))),
    ("(a + b) * c", BinOp("*", BinOp("+", n("a"), n("b")), n("c"))),
    ("a * (b - c)", BinOp("*", n("a"), BinOp("-", n("b"), n("c")))),
    ("-a * b", BinOp("*", Neg(n("a")), n("b"))),
    ("-(a * b)", Neg(BinOp("*", n("a"), n("b")))),
    ("a * -b", BinOp("*", n("a"), Neg(n("b")))),
    ("a - -b", BinOp("-", n("a"), Neg(n("b")))),
    ("--a", Neg(Neg(n("a")))),
    ("+a", n("a")),  # unary plus is the identity
    ("-a.A", Neg(Attr(n("a"), "A"))),  # attribute access binds tighter than unary minus
    ("2 * x.B + y.B", BinOp("+", BinOp("*", num(2), Attr(n("x"), "B")), Attr(n("y"), "B"))),
    ("((a))", n("a")),
])
def test_precedence(text, tree):
    assert expr(text) == tree


# ---- expressions across lines ---------------------------------------------------------------

def test_expressions_span_lines_inside_brackets():
    text = 'save(\n    recombine(dir(h),\n              mag(h)),  # a comment inside\n    "o",\n)\nx = [1,\n\n 2]\n'
    assert statements(text) == (
        ExprStmt(call("save", call("recombine", call("dir", n("h")), call("mag", n("h"))), String("o"))),
        Binding("x", ListExpr((num(1), num(2)))),
    )


def test_parse_expression_allows_surrounding_newlines():
    assert parse_expression("\n  dir(h, by='in')\n\n") == Call("dir", (n("h"),), (Keyword("by", String("in")),))


# ---- spans ---------------------------------------------------------------------------------

def test_spans_point_at_the_source():
    (b, s) = parse_script('h = load("a")\nsave(dir(h),   "out")\n', "f.dipm").statements
    assert b.span == Span("f.dipm", 1, 1, 1, 14)
    save = s.expr
    assert save.span == Span("f.dipm", 2, 1, 2, 22)
    assert save.args[0].span == Span("f.dipm", 2, 6, 2, 12)      # dir(h)
    assert save.args[0].args[0].span == Span("f.dipm", 2, 10, 2, 11)  # h
    assert save.args[1].span == Span("f.dipm", 2, 16, 2, 21)     # "out"


# ---- printer -------------------------------------------------------------------------------

@pytest.mark.parametrize("tree, text", [
    (BinOp("-", n("a"), BinOp("-", n("b"), n("c"))), "a - (b - c)"),
    (BinOp("-", BinOp("-", n("a"), n("b")), n("c")), "a - b - c"),
    (BinOp("/", n("a"), BinOp("*", n("b"), n("c"))), "a / (b * c)"),
    (BinOp("*", BinOp("+", n("a"), n("b")), n("c")), "(a + b) * c"),
    (Neg(BinOp("+", n("a"), n("b"))), "-(a + b)"),
    (Neg(Neg(n("a"))), "--a"),
    (BinOp("*", Neg(n("a")), n("b")), "-a * b"),
    (Attr(num(1), "A"), "(1).A"),
    (Attr(Neg(n("x")), "A"), "(-x).A"),
    (Attr(BinOp("+", n("x"), n("y")), "B"), "(x + y).B"),
    (call("f", n("x"), num(0.5), by=String("in")), 'f(x, 0.5, by="in")'),
    (ListExpr(()), "[]"),
])
def test_printer_parenthesises_only_where_needed(tree, text):
    assert print_expr(tree) == text
    assert parse_expression(text) == tree


@pytest.mark.parametrize("value, text", [
    (1.0, "1"), (0.5, "0.5"), (1e-3, "0.001"), (1e20, "1e+20"), (2.5e-7, "2.5e-07"), (float("inf"), "1e999"),
])
def test_format_number(value, text):
    assert format_number(value) == text
    assert parse_expression(text).value == value


@pytest.mark.parametrize("value, text", [
    ("plain", '"plain"'), ('a"b', '"a\\"b"'), ("a\\b", '"a\\\\b"'), ("\n\t", '"\\n\\t"'),
    ("\r", '"\\r"'), ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'), ("é ü", '"é ü"'), ("\ud800", '"\\ud800"'),
])
def test_format_string_escapes_what_would_not_parse_back(value, text):
    assert format_string(value) == text
    assert parse_expression(text) == String(value)


def test_printer_round_trips_every_form():
    roundtrip(
        "# doc of f\n"
        "def f(x, y=0.5, by='in') = recombine(dir(x, by=by), y * mag(x, by=by))\n"
        "import \"lib.dipm\"\n"
        "h = load('a'); g = load(\"b\")\n"
        "save(f(h, y=.5) - -h / 2 * 3 + (h - g) - (g - h), 'o', rank=4)\n"
        "m = [dir(h), reverse(dir(g))]\n"
        "save(lora(h.B, 2 * g.A), \"p\\\"q\\\\\\n\")\n"
        "x = 1e-3 * -(2 + 3) / (4 * 5)\n"
    )


def test_printer_keeps_def_docs():
    text = print_script(parse_script("# adds\n# two things\ndef add2(a, b) = a + b\n"))
    assert text == "# adds\n# two things\ndef add2(a, b) = a + b\n"


# ---- golden snapshots ------------------------------------------------------------------------

def check_golden(name: str, text: str) -> None:
    """Compare `text` with tests/golden/NAME; DIPM_UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    text = text.rstrip("\n") + "\n"
    if os.environ.get("DIPM_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; run with DIPM_UPDATE_GOLDEN=1 to create it, then review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (DIPM_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("script", ["detox", "cse", "tour"])
def test_golden(script):
    path = GOLDEN / f"{script}.dipm"
    text = path.read_text(encoding="utf-8")
    # relative paths in the script resolve against its folder; relative_to prints them back relative
    check_golden(f"{script}.printed.txt", print_script(parse_script(text, str(path))))
    lowered = lower(ScriptText(text, str(path)))
    verify(lowered, after="lowering")
    check_golden(f"{script}.lowered.txt", print_program(lowered, relative_to=GOLDEN))
    optimized, _ = compile(ScriptText(text, str(path)), verify=True)
    check_golden(f"{script}.optimized.txt", print_program(optimized, relative_to=GOLDEN))
    roundtrip(text)


def test_golden_files_hold_no_machine_paths():
    for path in GOLDEN.glob("*.txt"):
        body = path.read_text(encoding="utf-8")
        assert str(Path.home()) not in body and "/tmp" not in body and str(GOLDEN) not in body, path.name
