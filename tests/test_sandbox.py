"""`--sandbox DIR`: load, save and import only inside DIR, with symlinks resolved (issue 6).

Violations found while compiling are exit-2 errors pointing at the path in the script or config;
a folder inside DIR whose files link outside is caught when the run plans, before any work.
Nothing is ever written and no input changes when the sandbox refuses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clitools import snapshot
from dipm_lang.cli.main import main
from dipm_lang.errors import SandboxError
from dipm_lang.safety.sandbox import Sandbox


@pytest.fixture
def box(tmp_path: Path, peft_adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/box (the sandbox, holding adapter H) next to tmp/outside (adapter O); the cwd is tmp."""
    box, outside = tmp_path / "box", tmp_path / "outside"
    box.mkdir()
    outside.mkdir()
    shutil.copytree(peft_adapters["basic"], box / "H")
    shutil.copytree(peft_adapters["basic"], outside / "O")
    (outside / "lib.dipm").write_text("def twice(x) = 2 * x\n")
    (box / "lib.dipm").write_text("def half(x) = 0.5 * x\n")
    os.symlink(outside / "O", box / "linked")            # a folder link out of the box
    os.symlink(outside, box / "door")                     # a link to a folder outside, used as a parent
    os.symlink(outside / "lib.dipm", box / "linked.dipm")
    monkeypatch.chdir(tmp_path)
    return box


def dipm(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


def refused(capsys, tmp_path: Path, *args: str) -> str:
    """Run a command the sandbox must refuse: exit 2, nothing written; returns stderr."""
    before = snapshot(tmp_path)
    code, err = dipm(capsys, *args)
    assert code == 2, err
    assert "outside the sandbox" in err, err
    assert snapshot(tmp_path) == before
    return err


def write(path: Path, text: str) -> str:
    """Write a script or config; its path relative to the working folder (as messages show it)."""
    path.write_text(text)
    return os.path.relpath(path)


# ---- allowed ------------------------------------------------------------------------------------

def test_everything_inside_runs(box: Path, capsys) -> None:
    script = write(box / "s.dipm", 'import "lib.dipm"\nh = load("H")\nsave(half(h), "out/a")\n')
    code, err = dipm(capsys, "run", script, "--sandbox", str(box), "-q")
    assert code == 0, err
    assert (box / "out" / "a" / "adapter_model.safetensors").exists()


def test_a_link_to_the_sandbox_itself_is_inside(box: Path, tmp_path: Path, capsys) -> None:
    os.symlink(box, tmp_path / "alias")
    script = write(box / "s.dipm", 'h = load("H")\nsave(2 * h, "o")\n')
    assert dipm(capsys, "check", script, "--sandbox", str(tmp_path / "alias"))[0] == 0


# ---- refused at compile time, with the position -------------------------------------------------

def test_load_through_a_symlinked_folder(box: Path, tmp_path: Path, capsys) -> None:
    script = write(box / "s.dipm", 'h = load("H")\no = load("linked")\nsave(h + o, "out")\n')
    err = refused(capsys, tmp_path, "check", script, "--sandbox", str(box))
    assert err.startswith("box/s.dipm:2:10: error: load: linked is outside the sandbox "), err
    assert f"(it resolves to {tmp_path / 'outside' / 'O'})" in err
    assert '   2 | o = load("linked")' in err


def test_load_with_dotdot_and_absolute_paths(box: Path, tmp_path: Path, capsys) -> None:
    script = write(box / "s.dipm", 'o = load("../outside/O")\nsave(o, "out")\n')
    assert refused(capsys, tmp_path, "check", script, "--sandbox", str(box)).startswith("box/s.dipm:1:10: error: load:")
    script = write(box / "s.dipm", f'o = load("{tmp_path / "outside" / "O"}")\nsave(o, "out")\n')
    assert refused(capsys, tmp_path, "run", script, "--sandbox", str(box)).startswith("box/s.dipm:1:10: error: load:")


def test_save_outside_and_through_a_linked_parent(box: Path, tmp_path: Path, capsys) -> None:
    for target in ("../escaped", "door/escaped", str(tmp_path / "escaped")):
        script = write(box / "s.dipm", f'h = load("H")\nsave(2 * h, "{target}")\n')
        err = refused(capsys, tmp_path, "run", script, "--sandbox", str(box), "--force")
        assert err.startswith(f"box/s.dipm:2:13: error: save: {target} is outside the sandbox"), err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "outside" / "escaped").exists()


def test_imports_outside_and_through_a_link(box: Path, tmp_path: Path, capsys) -> None:
    for target in ("../outside/lib.dipm", "linked.dipm"):
        script = write(box / "s.dipm", f'import "{target}"\nh = load("H")\nsave(twice(h), "o")\n')
        err = refused(capsys, tmp_path, "check", script, "--sandbox", str(box))
        assert err.startswith(f"box/s.dipm:1:1: error: import: {target} is outside the sandbox"), err


def test_import_inside_that_imports_outside(box: Path, tmp_path: Path, capsys) -> None:
    (box / "sub.dipm").write_text('import "../outside/lib.dipm"\n')
    script = write(box / "s.dipm", 'import "sub.dipm"\nh = load("H")\nsave(twice(h), "o")\n')
    err = refused(capsys, tmp_path, "check", script, "--sandbox", str(box))
    assert err.startswith("box/sub.dipm:1:1: error: import: ../outside/lib.dipm is outside the sandbox"), err


def test_inputs_given_from_outside(box: Path, tmp_path: Path, capsys) -> None:
    script = write(box / "s.dipm", 'h = load()\nsave(2 * h, "o")\n')
    err = refused(capsys, tmp_path, "run", script, "--sandbox", str(box), "--set", "h=outside/O")
    assert err.startswith("<command line>:1:1: error: input 'h': outside/O is outside the sandbox"), err
    err = refused(capsys, tmp_path, "run", script, "--sandbox", str(box), "--set", "h=box/linked")
    assert "input 'h': box/linked is outside the sandbox" in err
    assert dipm(capsys, "check", script, "--sandbox", str(box), "--set", "h=box/H")[0] == 0


def test_eval(box: Path, tmp_path: Path, capsys) -> None:
    err = refused(capsys, tmp_path, "eval", "2 * H", "--set", "H=outside/O", "--sandbox", str(box))
    assert "input 'H': outside/O is outside the sandbox" in err
    err = refused(capsys, tmp_path, "eval", "2 * H", "--set", "H=box/H", "-o", "escaped", "--sandbox", str(box))
    assert f"save: {tmp_path / 'escaped'} is outside the sandbox" in err


# ---- configs ------------------------------------------------------------------------------------

def test_config_input_output_and_import(box: Path, tmp_path: Path, capsys) -> None:
    config = write(box / "r.yaml", "inputs:\n  H: H\n  O: linked\noutputs:\n  out: H + O\n")
    err = refused(capsys, tmp_path, "run", config, "--sandbox", str(box))
    assert err.startswith("box/r.yaml:3:3: error: input 'O': "), err
    config = write(box / "r.yaml", "inputs:\n  H: H\noutputs:\n  ../escaped: 2 * H\n")
    err = refused(capsys, tmp_path, "run", config, "--sandbox", str(box))
    assert err.startswith("box/r.yaml:4:15: error: save: "), err
    config = write(box / "r.toml", 'import = ["linked.dipm"]\n[inputs]\nH = "H"\n[outputs]\nout = "twice(H)"\n')
    err = refused(capsys, tmp_path, "check", config, "--sandbox", str(box))
    assert "error: import: linked.dipm is outside the sandbox" in err
    config = write(box / "r.yaml", "inputs:\n  H: H\noutputs:\n  out: 2 * H\n")
    assert dipm(capsys, "run", config, "--sandbox", str(box), "-q")[0] == 0


# ---- refused when the run plans: files inside a folder that link outside ------------------------

def test_adapter_files_linked_outside(box: Path, tmp_path: Path, capsys) -> None:
    inner = box / "F"
    inner.mkdir()
    shutil.copy(box / "H" / "adapter_config.json", inner)
    os.symlink(tmp_path / "outside" / "O" / "adapter_model.safetensors", inner / "adapter_model.safetensors")
    script = write(box / "s.dipm", 'f = load("F")\nsave(2 * f, "o")\n')
    assert dipm(capsys, "check", script, "--sandbox", str(box))[0] == 0  # check reads no adapter files
    err = refused(capsys, tmp_path, "run", script, "--sandbox", str(box))
    assert err.startswith("box/s.dipm:1:5: error: load: "), err
    assert "F/adapter_model.safetensors is outside the sandbox" in err


def test_without_sandbox_the_same_script_runs(box: Path, capsys) -> None:
    script = write(box / "s.dipm", 'h = load("H")\no = load("linked")\nsave(h + o, "out")\n')
    assert dipm(capsys, "run", script, "-q")[0] == 0


def test_sandbox_must_exist(tmp_path: Path, box: Path, capsys) -> None:
    script = write(box / "s.dipm", 'h = load("H")\nsave(2 * h, "o")\n')
    code, err = dipm(capsys, "check", script, "--sandbox", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("error: --sandbox "), err


def test_policy_object(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "a" / "up")
    policy = Sandbox.at(tmp_path / "a")
    assert policy.contains(tmp_path / "a") and policy.contains(tmp_path / "a" / "b" / "new" / "deeper")
    assert not policy.contains(tmp_path / "a" / "up" / "x") and not policy.contains(tmp_path / "ab")
    assert not policy.contains(tmp_path / "a" / ".." / "x")
    with pytest.raises(SandboxError) as info:
        policy.check(tmp_path / "a" / "up" / "x", "save")
    assert info.value.exit_code == 2 and "resolves to" in info.value.message
    json.dumps(policy.root)  # a plain string: safe to record or print


# ---- the REPL -----------------------------------------------------------------------------------

def test_repl_keeps_every_file_access_inside(box: Path, tmp_path: Path) -> None:
    import io

    from dipm_lang.repl.session import Session
    from dipm_lang.run import RunOptions

    session = Session(RunOptions(device="cpu", sandbox=Sandbox.at(box)), out=io.StringIO(), err=io.StringIO())
    session.handle('h = load("box/H")')
    assert session.last_exit_code == 0, session.err.getvalue()
    before = snapshot(tmp_path)
    refusals = [
        'o = load("outside/O")',               # load() outside
        'l = load("box/linked")',              # through a link out of the box
        ":load o outside/O",                   # :load outside
        ":inspect outside/O",                  # :inspect a folder outside
        'import "outside/lib.dipm"',           # import outside
        'save(load("box/H"), "escaped")',      # save outside
        ':save h escaped',                     # :save outside
        ":save h box/door/escaped",            # :save through a linked parent
    ]
    for text in refusals:
        session.err.seek(0)
        session.err.truncate()
        session.handle(text)
        assert "outside the sandbox" in session.err.getvalue(), (text, session.err.getvalue())
        assert session.last_exit_code == 2
    assert snapshot(tmp_path) == before
    session.err.seek(0)
    session.err.truncate()
    errors = session.errors
    session.handle(':save 2 * h box/out')  # inside: allowed
    assert (box / "out" / "adapter_model.safetensors").exists(), session.err.getvalue()
    session.handle(":inspect box/H")
    assert session.err.getvalue() == "" and session.errors == errors
