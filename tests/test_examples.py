"""Every example script runs: `dipm check` and `dipm run` on demo adapters made by PEFT."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from dipm_lang.cli.main import main
from dipm_lang.io.reader import open_adapter

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.dipm"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of examples/ beside demo/adapters made by examples/make_demo_adapters.py."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(EXAMPLES, root / "examples")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_demo_adapters
    finally:
        sys.path.remove(str(EXAMPLES))
    make_demo_adapters.main(root / "demo" / "adapters")
    return root


def test_there_are_examples():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_checks_and_runs(workspace, script, monkeypatch, capsys):
    path = workspace / "examples" / script.name
    extra = []
    if script.name == "inputs_from_outside.dipm":
        monkeypatch.chdir(workspace)
        extra = ["--set", "src=demo/adapters/other", "--set", "tgt=demo/adapters/helpful"]
    if script.name == "detox_sweep.dipm":  # made for the detox miniature's adapters; any pair runs it
        monkeypatch.chdir(workspace)
        extra = ["--set", "H=demo/adapters/helpful", "--set", "T=demo/adapters/toxic"]
    assert main(["check", str(path), *extra]) == 0
    assert main(["run", str(path), "--force", *extra]) == 0
    out = capsys.readouterr().out
    written = [line.split()[0] for line in out.splitlines() if line.startswith("  /")]
    assert written, out
    for folder in written:
        info = open_adapter(folder)  # a valid PEFT adapter folder
        assert info.modules


RECIPES = sorted((EXAMPLES / "recipes").glob("*.yaml")) + sorted((EXAMPLES / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_example_recipe_runs(workspace, recipe, capsys):
    path = workspace / "examples" / "recipes" / recipe.name
    assert main(["check", str(path)]) == 0
    assert main(["run", str(path), "--force"]) == 0
    written = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  /")]
    assert written
    for folder in written:
        assert open_adapter(folder).modules
