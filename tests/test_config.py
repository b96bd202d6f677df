"""Recipes in YAML and TOML: same bytes as the equivalent .dipm script, errors that point into
the config file, --set overrides, one program across outputs, and the example recipes."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters import make_peft_adapter
from dipm_lang.cli.main import main
from dipm_lang.compiler import RecipeFile, compile

REPO = Path(__file__).resolve().parents[1]

DIPM = """\
H = load("adapters/H")
T = load("adapters/T")
save(recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H)), "out/dipm/detox")
save(0.5 * H + 0.5 * T, "out/dipm/avg", rank=3)
save(unlearn(T, strength=0.5, by="in"), "out/dipm/unlearn")
"""

YAML = """\
inputs:
  H: adapters/H
  T: adapters/T
outputs:
  out/yaml/detox: recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H))
  out/yaml/avg:
    expr: 0.5 * H + 0.5 * T
    rank: 3
  "out/yaml/unlearn": 'unlearn(T, strength=0.5, by="in")'
"""

TOML = """\
[inputs]
H = "adapters/H"
T = 'adapters/T'

[outputs]
"out/toml/detox" = "recombine(shift(dir(H), reverse(dir(T)), 0.3), mag(H))"
"out/toml/avg" = { expr = "0.5 * H + 0.5 * T", rank = 3 }

[outputs."out/toml/unlearn"]
expr = 'unlearn(T, strength=0.5, by="in")'
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with adapters/H and adapters/T (different ranks, scalings and module sets)."""
    root = tmp_path_factory.mktemp("config")
    make_peft_adapter(root / "adapters/H", seed=31, r=4, alpha=8)
    make_peft_adapter(root / "adapters/T", seed=32, r=8, alpha=16, use_rslora=True,
                      target_modules=("q_proj", "v_proj", "down_proj"))
    return root


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_identical(a: Path, b: Path) -> None:
    """The same tensors, bit for bit, and the same adapter config."""
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), (a, key)
    config_a = json.loads((a / "adapter_config.json").read_text())
    config_b = json.loads((b / "adapter_config.json").read_text())
    assert config_a == config_b


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_yaml_and_toml_recipes_match_the_dipm_script(workspace, capsys):
    for name, text in (("recipe.dipm", DIPM), ("recipe.yaml", YAML), ("recipe.toml", TOML)):
        path = write(workspace, name, text)
        assert main(["check", str(path)]) == 0
        assert main(["run", str(path), "--device", "cpu", "--force"]) == 0
    out = capsys.readouterr().out
    assert "recipe.yaml: OK (3 saves, 2 inputs)" in out and "recipe.toml: OK (3 saves, 2 inputs)" in out
    for output in ("detox", "avg", "unlearn"):
        reference = workspace / "out/dipm" / output
        assert_identical(reference, workspace / "out/yaml" / output)
        assert_identical(reference, workspace / "out/toml" / output)


def test_outputs_are_one_program(workspace):
    recipe = write(workspace, "shared.yaml", "inputs: {H: adapters/H}\n"
                                             "outputs:\n"
                                             "  out/shared/a: recombine(dir(H), 2 * mag(H))\n"
                                             "  out/shared/b: recombine(dir(H), 0.5 * mag(H))\n")
    written, _ = compile(RecipeFile(recipe), level=0)
    shared, _ = compile(RecipeFile(recipe), level=1)
    count = lambda program, op: sum(1 for node in program.nodes() if node.op == op)  # noqa: E731
    assert len(written.roots) == len(shared.roots) == 2
    assert count(written, "dir") == 2 and count(written, "mag") == 2
    assert count(shared, "dir") == 1 and count(shared, "mag") == 1 and count(shared, "load") == 1


@pytest.mark.parametrize("name, text, expected", [
    ("bad.yaml",
     "inputs:\n  H: adapters/H\n\noutputs:\n  out/x: recombine(dir(HH), mag(H))\n",
     "bad.yaml:5:24: error: unknown name 'HH'\n"
     "   5 |   out/x: recombine(dir(HH), mag(H))\n"
     "                              ^~\n"
     "  hint: did you mean 'H'?\n"),
    ("block.yaml",
     "inputs: {H: adapters/H}\noutputs:\n  out/x:\n    rank: 2\n    expr: |\n      recombine(dir(H),\n"
     "                mag(H, by=\"in\"))\n",
     "block.yaml:7:17: error: recombine: 'd' is Dir[out] but 'm' is Mag[in]; both must have the same `by`\n"
     "   7 |                 mag(H, by=\"in\"))\n"
     "                       ^~~~~~~~~~~~~~~\n"
     "  hint: compute both with the same by=\"out\"\n"),
    ("bad.toml",
     "[inputs]\nH = \"adapters/H\"\n\n[outputs]\n\"out/x\" = { expr = \"dir(H, by=\\\"rows\\\")\", rank = 2 }\n",
     "bad.toml:5:32: error: dir: by must be one of \"out\", \"in\", \"matrix\", not 'rows'\n"
     "   5 | \"out/x\" = { expr = \"dir(H, by=\\\"rows\\\")\", rank = 2 }\n"
     "                                      ^~~~~~~\n"
     "  hint: did you mean by=\"out\"?\n"),
    ("multi.toml",
     "[inputs]\nH = \"adapters/H\"\n\n[outputs.\"out/x\"]\nexpr = \"\"\"\nrecombine(dir(H),\n  mag(H) +)\"\"\"\n",
     "multi.toml:7:11: error: unexpected ')'; expected an expression\n"
     "   7 |   mag(H) +)\"\"\"\n"
     "                 ^\n"),
])
def test_errors_in_embedded_expressions_point_into_the_config(workspace, monkeypatch, capsys, name, text, expected):
    monkeypatch.chdir(workspace)
    write(workspace, name, text)
    assert main(["run", name]) == 2
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("name, text, first_line", [
    ("c1.yaml", "inputs:\n  H: adapters/H\n", "c1.yaml: error: the config has no 'outputs'"),
    ("c2.yaml", "inputs: {H: adapters/H}\noutputs: {o: H}\noutput: {}\n", "c2.yaml:3:1: error: unknown key 'output'"),
    ("c3.yaml", "outputs:\n  o: 3\n", "c3.yaml:2:3: error: output 'o' must be an expression (a string), got a number"),
    ("c4.yaml", "outputs:\n  o: {expr: [H]}\n",
     "c4.yaml:2:7: error: output 'o' must be an expression (a string), got a list"),
    ("c5.yaml", "outputs: [\n",
     "c5.yaml:2:1: error: invalid YAML: expected the node content, but found '<stream end>'"),
    ("c6.yaml", "outputs:\n  o: {expr: H, rnk: 2}\n", "c6.yaml:2:16: error: unknown key 'rnk' in output 'o'"),
    ("c7.yaml", "outputs:\n  o: {expr: H, rank: -1}\n",
     "c7.yaml:2:16: error: 'rank' of output 'o' must be a positive whole number, got -1"),
    ("c8.yaml", "outputs:\n  o: H\n  o: T\n", "c8.yaml:3:3: error: duplicate key 'o'"),
    ("c9.yaml", "- just\n- a list\n", "c9.yaml: error: the config must be a mapping with 'inputs' and 'outputs'"),
    ("c10.yaml", "inputs: {2H: adapters/H}\noutputs: {o: H}\n", "c10.yaml:1:10: error: input name '2H' is not a valid"),
    ("c1.toml", "[inputs]\nH = 'adapters/H'\n", "c1.toml: error: the config has no 'outputs'"),
    ("c2.toml", "[outputs\n", "c2.toml:1:9: error: invalid TOML: Expected ']' at the end of a table declaration"),
    ("c3.toml", "[outputs]\no = 3\n", "c3.toml:2:1: error: output 'o' must be an expression (a string), got a number"),
    ("c4.toml", "imports = ['x.dipm']\n[outputs]\no = 'H'\n", "c4.toml:1:1: error: unknown key 'imports'"),
])
def test_malformed_configs_are_usage_errors_naming_the_file(workspace, monkeypatch, capsys, name, text, first_line):
    monkeypatch.chdir(workspace)
    write(workspace, name, text)
    assert main(["run", name, "--set", "H=adapters/H"]) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(first_line)


def test_set_overrides_a_config_input(workspace, tmp_path, monkeypatch, capsys):
    recipe = write(workspace, "override.yaml", "inputs:\n  H: adapters/H\noutputs:\n  out/override: 2 * H\n")
    write(workspace, "twice_t.yaml", "inputs:\n  H: adapters/T\noutputs:\n  out/twice_t: 2 * H\n")
    assert main(["run", str(workspace / "twice_t.yaml"), "-q", "--force"]) == 0
    monkeypatch.chdir(tmp_path)  # --set paths resolve against the working directory
    shutil.copytree(workspace / "adapters/T", tmp_path / "here/T")
    assert main(["run", str(recipe), "--set", "H=here/T", "-q", "--force"]) == 0
    assert_identical(workspace / "out/twice_t", workspace / "out/override")
    assert main(["run", str(recipe), "-q", "--force"]) == 0  # without --set: H again
    assert not torch.equal(*(next(iter(tensors(workspace / o).values())) for o in ("out/override", "out/twice_t")))
    capsys.readouterr()
    assert main(["run", str(recipe), "--set", "X=here/T"]) == 2
    assert "the config has no input named 'X'" in capsys.readouterr().err


def test_imports_and_defs(workspace):
    write(workspace, "lib.dipm", "# half of an update\ndef half(x) = 0.5 * x\n")
    recipe = write(workspace, "defs.toml", 'import = ["lib.dipm"]\n'
                                           'defs = """\ndef twice(x) = 2 * x\nk = 3\n"""\n'
                                           "[inputs]\nH = 'adapters/H'\n"
                                           "[outputs]\n'out/defs' = 'half(twice(H)) + k * H'\n")
    program, _ = compile(RecipeFile(recipe), level=0)
    assert [node.attr("path") for node in program.roots] == [str(workspace / "out/defs")]
    assert main(["run", str(recipe), "-q", "--force"]) == 0
    write(workspace, "four.dipm", 'save(4 * load("adapters/H"), "out/four")\n')
    assert main(["run", str(workspace / "four.dipm"), "-q", "--force"]) == 0
    for key, value in tensors(workspace / "out/four").items():
        torch.testing.assert_close(tensors(workspace / "out/defs")[key], value)


def test_example_recipes_mirror_examples_detox_dipm(tmp_path, capsys):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    runpy.run_path(str(REPO / "examples/make_demo_adapters.py"))["main"](tmp_path / "demo/adapters")
    for path in ("examples/detox.dipm", "examples/recipes/detox.yaml", "examples/recipes/detox.toml"):
        assert main(["run", str(tmp_path / path), "-q", "--device", "cpu"]) == 0, capsys.readouterr().err
    for output in ("detox", "task_arithmetic"):
        assert_identical(tmp_path / "demo/out" / output, tmp_path / "demo/out/yaml" / output)
        assert_identical(tmp_path / "demo/out" / output, tmp_path / "demo/out/toml" / output)
