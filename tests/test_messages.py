"""Messages a new user hit (issue 12): an input's error points at its `load`, with near names; the
REPL answers Python habits; numbers the SPEC allows but nobody means get a warning."""

from __future__ import annotations

import io
import shutil

from clitools import dipm
from dipm_lang.repl.session import Session
from dipm_lang.run import RunOptions


def test_a_missing_input_points_at_its_load_and_suggests_the_near_name(tmp_path, peft_adapters):
    shutil.copytree(peft_adapters["basic"], tmp_path / "adapters" / "helpful")
    (tmp_path / "s.dipm").write_text('\n\nh = load("adapters/helpfull")\nsave(2 * h, "out")\n')
    result = dipm("run", "s.dipm", cwd=tmp_path)
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == f"s.dipm:3:5: error: {tmp_path}/adapters/helpfull: adapter folder not found"
    assert lines[1] == '   3 | h = load("adapters/helpfull")'
    assert lines[2] == "           ^~~~~~~~~~~~~~~~~~~~~~~~~"
    assert lines[3] == f"  hint: did you mean 'helpful'? ({tmp_path}/adapters holds it)"


def test_python_habits_get_a_hint_toward_the_commands():
    session = Session(RunOptions(device="cpu"), out=io.StringIO(), err=io.StringIO())
    for typed in ("exit", "quit()", "help"):
        assert session.handle(typed) is True  # the session goes on
    out = session.out.getvalue().splitlines()
    assert out == [":quit (or Ctrl-D) leaves the REPL", ":quit (or Ctrl-D) leaves the REPL",
                   ":help lists the commands; :doc NAME documents an operator or function"]
    assert session.errors == 0


def test_the_repl_says_how_to_force_a_save(tmp_path, peft_adapters):
    session = Session(RunOptions(device="cpu"), out=io.StringIO(), err=io.StringIO())
    (tmp_path / "out").mkdir()
    session.handle(f'h = load("{peft_adapters["basic"]}")')
    session.handle(f'save(2 * h, "{tmp_path / "out"}")')
    err = session.err.getvalue()
    assert "(:save EXPR PATH --force replaces it from the REPL)" in err and "--force to replace" not in err


def test_a_far_out_number_is_allowed_with_a_warning(tmp_path, peft_adapters):
    shutil.copytree(peft_adapters["basic"], tmp_path / "H")
    (tmp_path / "s.dipm").write_text('h = load("H")\nsave(transfer(h, h, t=30), "out")\n')
    for command in ("check", "run"):
        result = dipm(command, "s.dipm", cwd=tmp_path)
        assert result.code == 0, result.err
        assert result.err.startswith("s.dipm:2:6: warning: in transfer(…): shift: t=30 is far outside [-1, 2]"), result.err
        assert "   2 | save(transfer(h, h, t=30), \"out\")" in result.err
    (tmp_path / "ok.dipm").write_text('h = load("H")\nsave(transfer(h, h, t=1.5), "out2")\n')
    assert dipm("check", "ok.dipm", cwd=tmp_path).err == ""  # extrapolating a little is common: no warning
    session = Session(RunOptions(device="cpu"), out=io.StringIO(), err=io.StringIO())
    session.handle(f'h = load("{tmp_path / "H"}")')
    session.handle("x = lerp(dir(h), dir(h), -7)")
    assert "warning: lerp: t=-7 is far outside [-1, 2]" in session.err.getvalue() and session.errors == 0
