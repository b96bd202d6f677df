"""Fuzzing recipe configs (issue 6): mangled YAML and TOML recipes only ever raise dipm's own errors.

Configs come from others as scripts do; whatever the text — broken syntax, YAML tags, anchors and
aliases, deep nesting, values of the wrong type — `lower_config` succeeds or raises a `DipmError`
with exit code 2 (nothing here reads an adapter: the inputs do not exist, and are never opened).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipm_lang.compiler import RecipeFile, lower
from dipm_lang.errors import DipmError

FUZZ = settings(deadline=None, derandomize=True, max_examples=300, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

YAML = """\
inputs:
  H: adapters/helpful
  T: adapters/toxic
outputs:
  out/detox: detox(H, T, t=0.3)
  out/avg:
    expr: 0.5 * H + 0.5 * T
    rank: 4
import: [lib.dipm]
defs: |
  def half(x) = 0.5 * x
"""
TOML = """\
import = ["lib.dipm"]
defs = '''
def half(x) = 0.5 * x
'''

[inputs]
H = "adapters/helpful"
T = "adapters/toxic"

[outputs]
"out/detox" = "detox(H, T, t=0.3)"
"out/avg" = { expr = "half(H) + half(T)", rank = 4 }
"""
PIECES = ["\n", "  ", ": ", "- ", "[", "]", "{", "}", ",", '"', "'", "#", "&a ", "*a", "!!python/object:os.system ",
          "!!binary ", "? ", "|", ">", "---\n", "...\n", "\t", "=", ".", "inputs", "outputs", "expr", "rank", "import",
          "defs", "H", "detox(", ")", "1e999", "-1", "true", "null", "~", "\x00", "\ufeff", "'''", '"""', "[[x]]\n",
          "%YAML 1.1\n", "<<: *a\n"]


@st.composite
def mangled(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 10)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "insert":
            text = text[:i] + draw(st.sampled_from(PIECES)) + text[i:]
        elif edit == "replace":
            text = text[:i] + draw(st.sampled_from(PIECES)) + text[j:]
        else:
            text = text[:j] + text[i:j] * draw(st.integers(1, 50)) + text[j:]
    return text


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    (folder / "lib.dipm").write_text("def twice(x) = 2 * x\n")
    return folder


def front_end(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        lower(RecipeFile(path))
    except DipmError as e:
        assert e.message and e.exit_code == 2, e


@FUZZ
@given(text=mangled(YAML))
def test_mangled_yaml(folder, text):
    front_end(folder, "r.yaml", text)


@FUZZ
@given(text=mangled(TOML))
def test_mangled_toml(folder, text):
    front_end(folder, "r.toml", text)


@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_text_as_yaml(folder, text):
    front_end(folder, "r.yaml", text)
