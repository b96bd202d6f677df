"""What a user sees when a script is wrong: the exact rendered error of `dipm check` (SPEC §6).

Every error reads `file:line:col: error: message`, then the source line with a gutter, a caret
underline of the offending span, and an optional hint; the exit code is 2 and there is no Python
traceback. Scripts are written into a temporary folder that is also the working directory, so
the file names in the headers are short and stable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dipm_lang.cli.main import main
from dipm_lang.compiler import ScriptText, compile
from dipm_lang.ir.graph import print_program

H = 'h = load("a")\n'  # the first line of most scripts below


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """cli(text, *args, command="check", name="s.dipm") -> (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(text: str | bytes | None, *args: str, command: str = "check", name: str = "s.dipm"):
        if text is not None:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        code = main([command, name, *args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "internal error" not in err, err
        return code, out, err

    return run


def error_of(cli, text: str | bytes, *args: str, name: str = "s.dipm") -> str:
    code, out, err = cli(text, *args, name=name)
    assert code == 2, (code, out, err)
    assert out == ""
    return err


# Each case: the script, and the exact stderr. Gutters are "   N | "; carets line up under the source.
CASES = {
    "missing_rparen_at_end": (
        H + 'save(dir(h, "o")\n',
        's.dipm:2:5: error: missing \')\' to close this \'(\'\n'
        '   2 | save(dir(h, "o")\n'
        '           ^\n'),
    "missing_rparen_before_next_line": (
        H + 'save(dir(h), "o"\nx = 1\n',
        's.dipm:3:1: error: unexpected \'x\': is a \',\' or \')\' missing before it?\n'
        '   3 | x = 1\n'
        '       ^\n'),
    "missing_rsqb_at_end": (
        H + 'x = [1, 2\n',
        's.dipm:2:5: error: missing \']\' to close this \'[\'\n'
        '   2 | x = [1, 2\n'
        '           ^\n'),
    "missing_rsqb_before_next_line": (
        H + 'm = mix([dir(h), dir(h)\nsave(h, "o")\n',
        's.dipm:3:1: error: unexpected \'save\': is a \',\' or \']\' missing before it?\n'
        '   3 | save(h, "o")\n'
        '       ^~~~\n'),
    "unexpected_token": (
        H + 'save(h, , "o")\n',
        's.dipm:2:9: error: unexpected \',\'; expected an expression\n'
        '   2 | save(h, , "o")\n'
        '               ^\n'),
    "equals_not_after_a_name": (
        H + 'save(h, "o" = 1)\n',
        's.dipm:2:13: error: \'=\' here: keyword arguments are written name=value, and only after a name\n'
        '   2 | save(h, "o" = 1)\n'
        '                   ^\n'),
    "unmatched_rparen": (
        H + 'save(h, "o"))\n',
        's.dipm:2:13: error: unmatched \')\'\n'
        '   2 | save(h, "o"))\n'
        '                   ^\n'),
    "unterminated_string": (
        H + 'save(h, "o)\n',
        's.dipm:2:9: error: unterminated string\n'
        '   2 | save(h, "o)\n'
        '               ^\n'),
    "unknown_character": (
        H + 'save(h, "o") $\n',
        's.dipm:2:14: error: unexpected character \'$\'\n'
        '   2 | save(h, "o") $\n'
        '                    ^\n'),
    "swapped_recombine": (
        H + 'save(recombine(mag(h), dir(h)), "o")\n',
        's.dipm:2:6: error: recombine: the arguments look swapped: it takes (direction, magnitude)\n'
        '   2 | save(recombine(mag(h), dir(h)), "o")\n'
        '            ^' + '~' * 24 + '\n'
        '  hint: write recombine(d, m), e.g. recombine(dir(x), mag(x))\n'),
    "wrong_by_value": (
        H + 'save(recombine(dir(h, by="row"), mag(h)), "o")\n',
        's.dipm:2:26: error: dir: by must be one of "out", "in", "matrix", not \'row\'\n'
        '   2 | save(recombine(dir(h, by="row"), mag(h)), "o")\n'
        '                                ^~~~~\n'
        '  hint: did you mean by="out"?\n'),
    "shift_by_mismatch": (
        H + 'save(shift(dir(h), dir(h, by="in"), 0.5), "o")\n',
        's.dipm:2:20: error: shift: \'d\' is Dir[out] but \'e\' is Dir[in]; both must have the same `by`\n'
        '   2 | save(shift(dir(h), dir(h, by="in"), 0.5), "o")\n'
        '                          ^~~~~~~~~~~~~~~\n'
        '  hint: compute both with the same by="out"\n'),
    "recombine_dir_out_with_mag_in": (
        H + 'save(recombine(dir(h), mag(h, by="in")), "o")\n',
        's.dipm:2:24: error: recombine: \'d\' is Dir[out] but \'m\' is Mag[in]; both must have the same `by`\n'
        '   2 | save(recombine(dir(h), mag(h, by="in")), "o")\n'
        '                              ^~~~~~~~~~~~~~~\n'
        '  hint: compute both with the same by="out"\n'),
    "unknown_function": (
        H + 'save(recombin(dir(h), mag(h)), "o")\n',
        's.dipm:2:6: error: unknown function \'recombin\'\n'
        '   2 | save(recombin(dir(h), mag(h)), "o")\n'
        '            ^~~~~~~~~~~~~~~~~~~~~~~~\n'
        '  hint: did you mean \'recombine\'?\n'),
    "unknown_stdlib_function": (
        H + 'save(detx(h, h), "o")\n',
        's.dipm:2:6: error: unknown function \'detx\'\n'
        '   2 | save(detx(h, h), "o")\n'
        '            ^~~~~~~~~~\n'
        '  hint: did you mean \'detox\'?\n'),
    "unknown_name": (
        'helpful = load("a")\nsave(helpfull, "o")\n',
        's.dipm:2:6: error: unknown name \'helpfull\'\n'
        '   2 | save(helpfull, "o")\n'
        '            ^~~~~~~~\n'
        '  hint: did you mean \'helpful\'?\n'),
    "too_many_arguments": (
        H + 'save(dir(h, "out", 3), "o")\n',
        's.dipm:2:20: error: dir() takes 2 arguments but 3 were given\n'
        '   2 | save(dir(h, "out", 3), "o")\n'
        '                          ^\n'
        '  hint: dir(x, by)\n'),
    "missing_argument": (
        H + 'save(shift(dir(h), dir(h)), "o")\n',
        's.dipm:2:6: error: shift() is missing the argument \'t\'\n'
        '   2 | save(shift(dir(h), dir(h)), "o")\n'
        '            ^~~~~~~~~~~~~~~~~~~~~\n'
        '  hint: shift(d, e, t)\n'),
    "unknown_keyword": (
        H + 'save(dir(h, bye="out"), "o")\n',
        's.dipm:2:13: error: dir() has no parameter \'bye\'\n'
        '   2 | save(dir(h, bye="out"), "o")\n'
        '                   ^~~~~~~~~\n'
        '  hint: did you mean \'by\'? parameters: x, by\n'),
    "recursion": (
        H + 'def f(x) = f(x)\nsave(f(h), "o")\n',
        's.dipm:2:12: error: recursive call of \'f\' (f -> f); definitions are inlined, so recursion is not supported\n'
        '   2 | def f(x) = f(x)\n'
        '                  ^~~~\n'),
    "mutual_recursion": (
        H + 'def f(x) = g(x)\ndef g(x) = f(x)\nsave(f(h), "o")\n',
        's.dipm:3:12: error: recursive call of \'f\' (f -> g -> f); definitions are inlined, so recursion is not '
        'supported\n'
        '   3 | def g(x) = f(x)\n'
        '                  ^~~~\n'),
    "stdlib_type_error_at_call_site": (
        H + 'save(transfer(h, mag(h)), "o")\n',
        's.dipm:2:6: error: in transfer(…): dir: \'x\' must be a Delta, a weight (base + x) or a factor (x.A, x.B), got Mag[out]\n'
        '   2 | save(transfer(h, mag(h)), "o")\n'
        '            ^~~~~~~~~~~~~~~~~~~\n'
        '  hint: recombine(d, m) turns a direction and a magnitude back into a Delta\n'),
    "division_by_a_zero_expression": (
        H + 'save(h / (1 - 1), "o")\n',
        's.dipm:2:11: error: division by zero\n'
        '   2 | save(h / (1 - 1), "o")\n'
        '                 ^~~~~\n'),
    "overflowing_number": (
        H + 'save(h, "o", rank=1e200 * 1e200)\n',
        's.dipm:2:19: error: this number is too large (the arithmetic overflows)\n'
        '   2 | save(h, "o", rank=1e200 * 1e200)\n'
        '                         ^~~~~~~~~~~~~\n'),
    "tabs_count_as_one_column": (
        H + 'save(h,\t\tbad, "o")\n',
        's.dipm:2:10: error: unknown name \'bad\'\n'
        '   2 | save(h,  bad, "o")\n'
        '                ^~~\n'
        "  hint: define it, or give it with --set bad=… (a folder or a number)\n"),
    "def_used_as_a_value": (
        H + 'x = def\n',
        's.dipm:2:5: error: \'def\' starts a statement of its own and cannot be used as a value\n'
        '   2 | x = def\n'
        '           ^~~\n'
        '  hint: define functions on a line of their own in a script or at the REPL prompt: def f(x) = 2 * x\n'),
    "form_feed_does_not_shift_lines": (  # the lexer counts only \n as a line break
        H + '# a\x0cb\nsave(h h, "o")\n',
        's.dipm:3:8: error: unexpected \'h\': is a \',\' or \')\' missing before it?\n'
        '   3 | save(h h, "o")\n'
        '              ^\n'),
}


@pytest.mark.parametrize("case", CASES)
def test_rendered_error(cli, case):
    text, expected = CASES[case]
    assert error_of(cli, text) == expected


@pytest.mark.parametrize("expr, keyword, column", [("def f(x) = 2 * x", "def", 1),
                                                    ('  import "lib.dipm"', "import", 3)])
def test_statements_where_one_expression_is_expected(tmp_path, monkeypatch, capsys, expr, keyword, column):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", expr]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"<expr>:1:{column}: error: '{keyword}' starts a statement; here one expression is "
                          "expected\n"), err
    assert "hint:" in err and "on a line of its own" in err.replace("their own", "its own")


def test_import_cycle(cli, tmp_path):
    (tmp_path / "b.dipm").write_text('import "a.dipm"\ndef f(x) = x\n')
    err = error_of(cli, 'import "b.dipm"\nh = load("x")\nsave(f(h), "o")\n', name="a.dipm")
    assert err == ('b.dipm:1:1: error: import cycle: a.dipm -> b.dipm -> a.dipm\n'
                   '   1 | import "a.dipm"\n'
                   '       ^~~~~~~~~~~~~~~\n')


def test_self_import(cli):
    err = error_of(cli, 'import "s.dipm"\n')
    assert err.startswith("s.dipm:1:1: error: import cycle: s.dipm -> s.dipm\n")


def test_error_in_an_imported_file_names_that_file(cli, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.dipm").write_text("# helpers\ndef g(x) = dir(x) + mag(x)\n")
    err = error_of(cli, 'import "lib/util.dipm"\n' + H + 'save(g(h), "o")\n')
    assert err == ('lib/util.dipm:2:12: error: cannot combine an update with a magnitude (Dir[out] + Mag[out])\n'
                   '   2 | def g(x) = dir(x) + mag(x)\n'
                   '                  ^~~~~~~~~~~~~~~\n'
                   '  hint: recombine(d, m) scales each unit of a direction by a magnitude\n')


def test_non_utf8_bytes(cli):
    err = error_of(cli, b'h = load("x")\n# caf\xe9\nsave(h, "o")\n')
    # offset 19: 14 bytes of line 1 (with its newline) and the 5 of "# caf"
    assert err == "s.dipm:2:1: error: the file is not valid UTF-8 (byte 0xe9 at offset 19)\n"


def test_nul_byte(cli):
    err = error_of(cli, b'h = load("x")\nsave(h,\x00 "o")\n')
    assert err == ('s.dipm:2:8: error: NUL byte in source text\n'
                   '   2 | save(h,\\x00 "o")\n'   # shown escaped: nothing unprintable reaches the terminal
                   '              ^~~~\n')


def test_set_of_a_name_the_script_does_not_have(cli):
    err = error_of(cli, H + 'save(h, "o")\n', "--set", "foo=1")
    assert err == "error: --set foo=…: the script has no input or binding named 'foo'\n"
    err = error_of(cli, H + 'save(h, "o")\n', "--set", "hh=adapters/x")
    assert err == "error: --set hh=…: the script has no input or binding named 'hh'\n  hint: did you mean 'h'?\n"


def test_set_of_a_computed_binding_is_refused(cli):
    err = error_of(cli, H + 'x = dir(h)\nsave(x, "o")\n', "--set", "x=adapters/y")
    assert err.startswith("error: --set x=…: 'x' is bound to a Dir[out] expression, which cannot be set")


def test_missing_script_is_a_usage_error(cli):
    code, out, err = cli(None, name="nowhere.dipm")
    assert code == 2
    assert err.startswith("error: nowhere.dipm: cannot read the script")


# ---- success ---------------------------------------------------------------------------------

def test_check_success(cli):
    code, out, err = cli(H + 'g = load("b")\nsave(detox(h, g), "o1")\nsave(h - g, "o2", rank=2)\n')
    assert (code, out, err) == (0, "s.dipm: OK (2 saves, 2 inputs)\n", "")
    code, out, err = cli(H + 'save(h, "o")\n')
    assert (code, out, err) == (0, "s.dipm: OK (1 save, 1 input)\n", "")


def test_set_binds_inputs_and_overrides_strings_as_written(cli, tmp_path):
    # --set by=in is the string "in", not a path; an adapter path given on the command line resolves
    # against the working directory (here tmp_path), not the script's folder (tmp_path/sub)
    # (the folder adapters/ exists there, so adapters/x is a path in it, not a Hub id: SPEC §7.5)
    (tmp_path / "adapters").mkdir()
    text = 'by = "out"\nh = load("adapters/h")\nsave(dir(h, by=by), "o")\n'
    code, out, _ = cli(text, "--set", "by=in", "--set", "h=adapters/x", command="explain", name="sub/s.dipm")
    assert code == 0
    assert '= load [name="h" path="../adapters/x"] : Delta' in out
    assert '= dir %0 [by="in"] : Dir[in]' in out


# ---- explain ---------------------------------------------------------------------------------

SHARED = (  # dir(H) three times and a double reverse (the same script as tests/golden/cse.dipm)
    'H = load("adapters/h")\n'
    'a = dir(H)\n'
    'b = dir(H)\n'
    'back = reverse(reverse(dir(H)))\n'
    'save(recombine(shift(a, b, 0.5), mag(H)), "out/same")\n'
    'save(recombine(back, mag(H)), "out/back")\n'
    'save(H / 4 + H * 0.5, "out/three_quarters")\n'
)


def test_explain_json_keys(cli):
    code, out, err = cli(H + 'save(h, "o")\n', "--json", command="explain")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {"format", "file", "level", "pipeline", "nodes_before", "nodes_after", "passes", "notes",
                           "nodes", "inputs", "outputs", "results"}  # as `dipm explain --help` lists them
    assert [p["name"] for p in report["passes"]] == ["cse", "simplify", "dce", "fuse"]
    assert all(set(p) == {"name", "nodes", "notes"} for p in report["passes"])
    assert report["nodes_after"] == report["passes"][-1]["nodes"] == len(report["nodes"])


def test_explain_json_shows_cse_and_simplify_shrinking_the_graph(cli):
    code, out, _ = cli(SHARED, "--json", command="explain")
    assert code == 0
    report = json.loads(out)
    counts = {p["name"]: p["nodes"] for p in report["passes"]}
    assert report["nodes_after"] < report["nodes_before"]
    assert counts["cse"] < report["nodes_before"]   # the three dir(H), two mag(H), two 0.5 merge
    assert counts["simplify"] < counts["cse"]        # shift(d, d, t), reverse∘reverse, recombine∘dir/mag
    # counted by hand from the listing in tests/golden/cse.lowered.txt:
    # 20 as written; cse merges 2 dir + 1 mag + 1 const; simplify leaves H, 3 saves, dir(H) (still bound),
    # 0.25 * H, 0.5 * H and their sum; dce drops dir(H); fuse makes the sum one lincomb
    assert (report["nodes_before"], report["nodes_after"]) == (20, 5)
    assert [(p["name"], p["nodes"]) for p in report["passes"]] == [("cse", 16), ("simplify", 10), ("dce", 9),
                                                                   ("fuse", 5)]


def test_explain_text(cli):
    code, out, _ = cli(SHARED, command="explain")
    assert code == 0
    assert out.splitlines()[0] == "pipeline: parse → lower → cse → simplify → dce → fuse → plan → execute → write"
    assert out.splitlines()[1] + "\n" == ("nodes: 20 as written → 16 after cse → 10 after simplify → 9 after dce → 5 after fuse\n")
    assert "  simplify: " in out and "shift-same×1" in out and "reverse-reverse×1" in out
    assert '%3 = lincomb %0 [coeffs=[0.75]] : Delta' in out


def test_explain_dot(cli, tmp_path):
    (tmp_path / "adapters").mkdir()  # adapters/h is then a path in it, not a Hub id (SPEC §7.5)
    code, out, _ = cli(SHARED, "--dot", "plan.dot", command="explain")
    assert code == 0
    dot = (tmp_path / "plan.dot").read_text()
    assert dot.startswith("digraph dipm {\n") and dot.endswith("}\n")
    program, _ = compile(ScriptText(SHARED, str(tmp_path / "s.dipm")))
    listing = print_program(program).splitlines()
    assert len(re.findall(r"^ +n\d+ \[label=", dot, re.M)) == len(listing) == 5
    # edges: save(H) twice, lincomb(H), save(lincomb): one edge per operand slot
    assert len(re.findall(r"^  n\d+ -> n\d+ ", dot, re.M)) == 4
    assert 'label="lincomb\\ncoeffs=[0.75]\\nDelta"' in dot
    assert 'label="load\\nH ← adapters/h\\nDelta"' in dot  # relative to the script's folder


def test_explain_png(cli, tmp_path):
    code, _, _ = cli(SHARED, "--png", "plan.png", command="explain")
    assert code == 0
    data = (tmp_path / "plan.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_debug_shows_a_traceback(cli, capsys):
    # without --debug no traceback (checked by the fixture); with it, the traceback goes to stderr
    (Path.cwd() / "s.dipm").write_text(H + "save(nope, 'o')\n")
    code = main(["--debug", "check", "s.dipm"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "unknown name 'nope'" in err
