"""`python -m examples.experiments` (examples/experiments/regenerate.py) on a fake experiments package:
discovery, the arguments each experiment gets, the marker replacement in RESULTS.md, the plots
copied, and the refusals (missing markers, an unknown name, a failing experiment) that write nothing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a package at the repository root, not installed
    sys.path.insert(0, str(ROOT))

from examples.experiments import regenerate as R  # noqa: E402

MAIN = '''\
import argparse, json, sys
from pathlib import Path

def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--preset"); p.add_argument("--seeds", type=int, nargs="+"); p.add_argument("--out", type=Path)
    p.add_argument("--jobs", type=int); p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.preset == "broken":
        return 3
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(f"| {NAME} | {a.preset} | {a.seeds} | {a.jobs} |\\n")
    (a.out / "plot.png").write_bytes(b"PNG:" + NAME.encode() + a.preset.encode())
    (a.out / "notes.txt").write_text("not a plot")
    (a.out / "argv.json").write_text(json.dumps(argv))
    return 0
'''

RESULTS = f"""# Results

Prose written by people, kept.

{R.BEGIN}
old table
{R.END}

More prose, kept too.
"""


def make_package(root: Path, name: str) -> str:
    """A package `name` under `root` with experiments alpha and beta (a `__main__.py` and RESULTS.md
    with markers), gamma (no `__main__.py`: not an experiment) and a plain module; importable."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("X = 1\n")
    for exp in ("alpha", "beta"):
        (pkg / exp).mkdir()
        (pkg / exp / "__init__.py").write_text("")
        (pkg / exp / "__main__.py").write_text(f"NAME = {exp!r}\n" + MAIN)
        (pkg / exp / "RESULTS.md").write_text(RESULTS)
    (pkg / "gamma").mkdir()
    (pkg / "gamma" / "__init__.py").write_text("")
    return name


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[str, Path]:
    name = f"fake_experiments_{tmp_path.name.replace('-', '_')}"
    monkeypatch.syspath_prepend(str(tmp_path))
    make_package(tmp_path, name)
    importlib.invalidate_caches()
    yield name, tmp_path / name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_discovers_packages_with_a_main(fake):
    name, pkg = fake
    found = R.discover(name)
    assert [e.name for e in found] == ["alpha", "beta"]
    assert found[0].module == f"{name}.alpha.__main__"
    assert found[0].folder == pkg / "alpha"


def test_discovers_the_real_experiments():
    names = [e.name for e in R.discover()]
    assert "detox_miniature" in names
    for experiment in R.discover():
        R.check_markers(experiment.folder / "RESULTS.md")  # every experiment can be regenerated


def test_runs_each_and_writes_tables_and_plots(fake, tmp_path, capsys):
    name, pkg = fake
    out = tmp_path / "out"
    code = R.main(["--preset", "full", "--seeds", "0", "1", "--jobs", "2", "--out", str(out), "--quiet"], package=name)
    assert code == 0
    for exp in ("alpha", "beta"):
        text = (pkg / exp / "RESULTS.md").read_text()
        table = f"| {exp} | full | [0, 1] | 2 |"
        assert text == RESULTS.replace("old table", table)
        assert (pkg / exp / "plot.png").read_bytes() == b"PNG:" + exp.encode() + b"full"
        assert not (pkg / exp / "notes.txt").exists()  # only the plots are copied
        assert (out / exp / "table.md").is_file()
    assert not list(pkg.rglob("*.tmp"))  # no staging files left behind
    # a second run replaces the generated region again (idempotent markers)
    assert R.main(["--preset", "smoke", "--out", str(out), "--quiet", "--only", "beta"], package=name) == 0
    assert "| beta | smoke | None | 1 |" in (pkg / "beta" / "RESULTS.md").read_text()
    assert "| alpha | full |" in (pkg / "alpha" / "RESULTS.md").read_text()
    assert (pkg / "beta" / "RESULTS.md").read_text().count(R.BEGIN) == 1


def test_arguments_passed_to_each_experiment(fake, tmp_path):
    name, _ = fake
    calls = []

    def runner(module: str, argv: list[str]) -> int:
        calls.append((module, argv))
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "table.md").write_text("stub table\n")
        return 0

    assert R.main(["--preset", "full", "--only", "alpha", "--out", str(tmp_path / "o"), "--quiet"], package=name,
                  runner=runner) == 0
    assert calls == [(f"{name}.alpha.__main__",
                      ["--preset", "full", "--jobs", "1", "--quiet", "--out", str(tmp_path / "o" / "alpha")])]


def test_missing_markers_refused_before_anything_runs(fake, tmp_path, capsys):
    name, pkg = fake
    (pkg / "beta" / "RESULTS.md").write_text("# Results\n\nno markers here\n")
    ran = []
    code = R.main(["--out", str(tmp_path / "o")], package=name, runner=lambda m, a: ran.append(m) or 0)
    assert code == 1
    err = capsys.readouterr().err
    assert "beta" in err and R.BEGIN in err and "nothing was written" in err
    assert ran == []
    assert (pkg / "alpha" / "RESULTS.md").read_text() == RESULTS  # untouched


def test_markers_out_of_order_or_twice_refused(tmp_path):
    path = tmp_path / "RESULTS.md"
    for text in (f"{R.END}\nx\n{R.BEGIN}\n", f"{R.BEGIN}\n{R.END}\n{R.BEGIN}\n{R.END}\n"):
        path.write_text(text)
        with pytest.raises(R.RegenerateError, match="exactly once"):
            R.check_markers(path)


def test_unknown_name_and_failing_experiment(fake, tmp_path, capsys):
    name, pkg = fake
    assert R.main(["--only", "delta", "--out", str(tmp_path / "o")], package=name) == 1
    assert "no experiment named delta; there are: alpha, beta" in capsys.readouterr().err
    assert R.main(["--preset", "broken", "--out", str(tmp_path / "o"), "--quiet"], package=name) == 1
    assert "alpha exited with 3" in capsys.readouterr().err
    assert (pkg / "alpha" / "RESULTS.md").read_text() == RESULTS
    assert not (pkg / "alpha" / "plot.png").exists()


def test_no_write_leaves_the_repository(fake, tmp_path):
    name, pkg = fake
    assert R.main(["--out", str(tmp_path / "o"), "--no-write", "--quiet"], package=name) == 0
    assert (tmp_path / "o" / "alpha" / "table.md").is_file()
    assert (pkg / "alpha" / "RESULTS.md").read_text() == RESULTS
    assert not (pkg / "alpha" / "plot.png").exists()
