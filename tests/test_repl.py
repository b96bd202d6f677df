"""`dipm repl`: a real terminal session (pexpect on a pseudo-terminal), the piped fallback,
and the session's commands, completion, summaries and lexer in process."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapters import peft_deltas
from dipm_lang.repl.session import Session, open_brackets
from dipm_lang.run import RunOptions
from dipm_lang.report.summary import fmt

ROOT = Path(__file__).resolve().parents[1]


# ---- a real terminal ---------------------------------------------------------------------

def spawn_repl(tmp_path: Path, history: Path | None = None):
    """`python -m dipm_lang.cli.main repl` on a pseudo-terminal, as a person would run it."""
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               DIPM_HISTORY=str(history or tmp_path / "history"), TERM="xterm-256color",
               PROMPT_TOOLKIT_NO_CPR="1", HOME=str(tmp_path))
    return pexpect.spawn(sys.executable, ["-m", "dipm_lang.cli.main", "repl", "--device", "cpu"], cwd=str(tmp_path),
                         env=env, encoding="utf-8", timeout=30, dimensions=(50, 140))


def at_prompt(child, keys: str) -> None:
    """Wait for the prompt, then type. (Keys sent between prompts reach a terminal in cooked mode,
    where Ctrl-D is swallowed; the prompt is drawn as "dipm>" and a cursor move, not a space.)"""
    child.expect("dipm>")
    child.send(keys)


def quit_repl(child) -> None:
    import pexpect

    at_prompt(child, "\x04")  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_terminal_tab_completion(tmp_path, peft_adapters):
    child = spawn_repl(tmp_path)
    at_prompt(child, f'helpful = load("{peft_adapters["basic"]}")\r')
    child.expect("helpful: Delta")
    # ":ty" + Tab completes the command, "helpf" + Tab the bound name; without completion this
    # line is an unknown command or name and prints an error instead of the type. Completion
    # runs asynchronously, so wait for it to be drawn before typing on, as a person would.
    at_prompt(child, ":ty\t")
    child.expect(":type")
    child.send(" dir(helpf\t")
    child.expect("helpful")
    child.send(")\r")
    index = child.expect([r"Dir\[out\]", "error"])
    assert index == 0, child.before
    at_prompt(child, ":type det\t")  # a standard-library function
    child.expect("detox")
    child.send("\r")
    child.expect(r"detox\(h, bad, t=0\.3, by=\"out\"\)")
    quit_repl(child)


def test_terminal_type_error_caret_and_summary(tmp_path, peft_adapters):
    path = peft_adapters["basic"]
    child = spawn_repl(tmp_path)
    at_prompt(child, f'h = load("{path}")\r')
    child.expect(r"h: Delta  ← .* \(4 modules, rank 4, float32\)")
    at_prompt(child, ":type dir(h)\r")
    child.expect(r"Dir\[out\]")
    # an error: the message, the source line and a caret under the bad part
    at_prompt(child, "dir(h) + mag(h)\r")
    child.expect(r"<input-3>:1:1: error: cannot combine an update with a magnitude")
    child.expect(r"1 \| dir\(h\) \+ mag\(h\)\r\n\s+\^~{14}")
    # the session is alive and kept its binding: a result summary of the bound adapter
    at_prompt(child, "h\r")
    child.expect(r"Delta · 4 modules in 2 layers \(q_proj, v_proj\) · rank 4 · ‖·‖_F (\S+) · float32")
    total = math.sqrt(sum(float(d.double().norm()) ** 2 for d, *_ in peft_deltas(path).values()))
    assert child.match.group(1) == fmt(total)
    child.expect("Frobenius norm per layer × module")
    child.expect(r"row norms \(by=\"out\", 96 rows\)")
    # multi-line input while a bracket is open: Enter continues the input
    at_prompt(child, "detox(h,\r")
    child.expect(r"\.\.\.")
    child.send("h, t=0)\r")
    child.expect(r"Delta · 4 modules in 2 layers")
    quit_repl(child)


def test_terminal_history_across_sessions(tmp_path):
    history = tmp_path / "hist"
    child = spawn_repl(tmp_path, history)
    at_prompt(child, ":type [1, 2]\r")
    child.expect(r"List\[Num\]")
    quit_repl(child)
    assert ":type [1, 2]" in history.read_text()

    child = spawn_repl(tmp_path, history)
    at_prompt(child, "\x1b[A")  # Up: the previous session's line
    child.expect(":type")  # drawn from history (highlighted, so matched by its first token)
    child.send("\r")
    child.expect(r"List\[Num\]")
    quit_repl(child)


# ---- piped: the plain line reader ----------------------------------------------------------

def test_piped_session_prints_the_same(tmp_path, peft_adapters):
    script = "\n".join([
        f'h = load("{peft_adapters["basic"]}")',
        ":type mag(h, by=\"in\")",
        "nope(h)",
        "recombine(dir(h),",
        "          mag(h))",
    ]) + "\n"
    done = subprocess.run([sys.executable, "-m", "dipm_lang.cli.main", "repl"], input=script, text=True,
                          capture_output=True, cwd=tmp_path, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), DIPM_HISTORY=str(tmp_path / "h")))
    assert "Mag[in]" in done.stdout
    assert "error: unknown function 'nope'" in done.stderr and "^~~~" in done.stderr
    assert "Delta · 4 modules" in done.stdout  # the session went on after the error
    assert done.returncode == 2  # the last error's code, for scripts
    assert "dipm>" not in done.stdout  # no prompts when piped


# ---- the session in process -----------------------------------------------------------------

@pytest.fixture
def session() -> Session:
    return Session(RunOptions(device="cpu"), out=io.StringIO(), err=io.StringIO())


def run(session: Session, *lines: str) -> tuple[str, str]:
    for line in lines:
        session.handle(line)
    out, err = session.out.getvalue(), session.err.getvalue()
    session.out.seek(0), session.out.truncate()
    session.err.seek(0), session.err.truncate()
    return out, err


def test_save_writes_the_expression(tmp_path, session, peft_adapters):
    path = peft_adapters["basic"]
    out, err = run(session, f":load h {path}", f":save 2 * h {tmp_path / 'double'}")
    assert err == "" and "wrote 1 adapter" in out
    original, doubled = peft_deltas(path), peft_deltas(tmp_path / "double")
    for name, (delta, *_) in original.items():
        torch.testing.assert_close(doubled[name][0], 2 * delta, rtol=1e-5, atol=1e-6)
    _, err = run(session, f":save h {tmp_path / 'double'}")
    assert "already exists" in err  # never overwritten without --force


def test_errors_keep_bindings_and_point_into_the_command(session, peft_adapters):
    run(session, f'h = load("{peft_adapters["basic"]}")')
    _, err = run(session, 'h = load("/no/such/adapter")')
    assert "/no/such/adapter: error: adapter folder not found" in err
    out, _ = run(session, ":type h")
    assert out.strip() == "Delta"  # the failed rebinding left h alone
    _, err = run(session, "  :type  dir(h, by=\"rows\")")
    assert 'by must be one of "out", "in", "matrix"' in err
    caret_line = err.splitlines()[2]
    assert caret_line.index("^") == err.splitlines()[1].index('"rows"')  # columns of the typed line
    assert "did you mean by=\"out\"" in err


def test_doc_explain_inspect_and_names(session, peft_adapters):
    out, _ = run(session, ":doc detox")
    assert "detox(h, bad, t=0.3, by=\"out\")" in out and "rotate `h`" in out  # the stdlib doc comment
    out, _ = run(session, ":doc shift")
    assert "great circle" in out
    run(session, f":load a {peft_adapters['basic']}", f":load b {peft_adapters['wide']}")
    out, _ = run(session, ":explain recombine(dir(a), mag(a))")
    assert "simplify" in out and "result _ = %0" in out  # the law folds it back to the load
    out, _ = run(session, ":inspect a b")
    assert "[1] vs [2]: directions of a and b" in out and "row cosine" in out
    out, _ = run(session, "c = a - b", ":names")
    assert "c: Delta" in out and "a: Delta" in out


def test_values_of_every_type_are_summarized(session, peft_adapters):
    run(session, f":load h {peft_adapters['basic']}")
    out, err = run(session, "mag(h, by=\"matrix\")", "0.5 * 3", "[dir(h), reverse(dir(h))]", "h.B")
    assert err == ""
    assert "Mag[matrix] · 4 modules" in out and "1.5  : Num" in out
    assert "List[Dir[out]] of 2 items" in out and "Factor[B]" in out
    assert "tensor(" not in out  # never a tensor dump
    out, _ = run(session, "_")  # the last value
    assert "Factor[B]" in out


def test_completions(session, tmp_path, monkeypatch, peft_adapters):
    run(session, f":load helpful {peft_adapters['basic']}")
    names = [c for c, _, _ in session.completions("detox(help")]
    assert names == ["helpful"]
    assert ":inspect" in [c for c, _, _ in session.completions(":in")]
    assert "transfer" in [c for c, _, _ in session.completions("tra")]
    assert "shift" in [c for c, _, _ in session.completions("dir(h) + sh")]
    (tmp_path / "adapters" / "toxic").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert [c for c, _, _ in session.completions('t = load("adapters/to')] == ["toxic/"]
    assert [c for c, _, _ in session.completions(":load t adap")] == ["adapters/"]


def test_open_brackets_ignores_strings_and_comments():
    assert open_brackets("detox(h,") == 1
    assert open_brackets('load("a(b") # (') == 0
    assert open_brackets("mix([dir(a),") == 2


def test_lexer_tokens():
    from pygments.token import Comment, Keyword, Name, Number, String

    from dipm_lang.repl.highlight import DipmLexer

    tokens = [(t, v) for t, v in DipmLexer().get_tokens(':type detox(h, bad, t=0.25)  # x\ndef f(x) = dir(x)')
              if v.strip()]
    assert (Keyword.Pseudo, ":type") in tokens
    assert (Name.Function, "detox") in tokens and (Name.Builtin, "dir") in tokens
    assert (Number, "0.25") in tokens and (Comment.Single, "# x") in tokens
    assert (Name.Attribute, "t") in tokens and (Keyword.Declaration, "def") in tokens
    assert not any(t in String for t, _ in tokens)


def test_a_repl_save_records_the_statements_that_produced_it(tmp_path, session, peft_adapters):
    """The card and the safetensors metadata of an adapter saved from the REPL hold its recipe: the
    statements it depends on (in order, as the session saw them), not an empty script."""
    import hashlib

    from safetensors import safe_open

    from dipm_lang.safety.privacy import private_text

    basic, wide = peft_adapters["basic"], peft_adapters["wide"]
    out, err = run(session, f'h = load("{basic}")', f'unused = load("{wide}")', "def twice(y) = 2 * y",
                   "x = 0.5 * h", "def twice(y) = 3 * y",  # redefined after x was bound: x keeps nothing of it
                   f'save(twice(x), "{tmp_path / "a"}")', f":save x - h {tmp_path / 'b'}")
    assert err == "" and out.count("wrote 1 adapter") == 2
    want_a = f'h = load("{basic}")\nx = 0.5 * h\ndef twice(y) = 3 * y\nsave(twice(x), "{tmp_path / "a"}")\n'
    want_b = f'h = load("{basic}")\nx = 0.5 * h\nsave(x - h, "{tmp_path / "b"}")\n'
    for folder, want in (("a", want_a), ("b", want_b)):
        want = private_text(want)  # recorded with absolute paths shortened to …/NAME
        assert str(tmp_path) not in want
        card = (tmp_path / folder / "README.md").read_text()
        assert want.rstrip("\n") in card and "unused" not in card
        with safe_open(str(tmp_path / folder / "adapter_model.safetensors"), "pt") as f:
            recorded = f.metadata()["dipm_script_sha256"]
        assert recorded == hashlib.sha256(want.encode()).hexdigest()
