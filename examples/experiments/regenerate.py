"""Regenerate every experiment's tables and plots, and write them into the repository.

    python -m examples.experiments [--preset full] [--out DIR] [--only NAME …] [--jobs N] [--seeds S …]

Every package under `examples/experiments/` that has a `__main__.py` is an experiment (found with
`pkgutil`, so a new one needs no registration here). Each follows one convention: `main(argv)` takes
`--preset`, `--seeds`, `--out`, `--jobs`, `--quiet`, writes `OUT/table.md` and its plots `OUT/*.png`,
and returns an exit code. Each runs into `DIR/<name>`; then, in the package's `RESULTS.md`, the region
between the two markers below is replaced by `DIR/<name>/table.md`, and the plots are copied into
the package folder. Every file is replaced atomically (written beside its target, then renamed),
so an interrupted run leaves each file either old or new, never half written. A `RESULTS.md` without
the markers is refused before anything runs: the prose around the generated table is written by
people and must never be overwritten.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

BEGIN = "<!-- generated from table.md -->"
END = "<!-- end of generated table.md -->"
PACKAGE = "examples.experiments"

Runner = Callable[[str, list[str]], int]
"""(module name of an experiment's `__main__`, argv) → exit code."""


class RegenerateError(Exception):
    """A refusal with a message for the user (missing markers, a failed experiment)."""


@dataclass(frozen=True)
class Experiment:
    name: str      # the package's name, e.g. "detox_miniature"
    module: str    # its `__main__` module, e.g. "examples.experiments.detox_miniature.__main__"
    folder: Path   # the package folder (RESULTS.md and the plots live there)


def discover(package: str | ModuleType = PACKAGE) -> list[Experiment]:
    """The experiment packages of `package`: sub-packages with a `__main__.py`, sorted by name."""
    pkg = importlib.import_module(package) if isinstance(package, str) else package
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg:
            continue
        folder = Path(info.module_finder.path) / info.name  # type: ignore[union-attr]
        if (folder / "__main__.py").is_file():
            found.append(Experiment(info.name, f"{pkg.__name__}.{info.name}.__main__", folder))
    return sorted(found, key=lambda e: e.name)


def select(experiments: list[Experiment], only: Sequence[str] | None) -> list[Experiment]:
    if not only:
        return experiments
    known = {e.name for e in experiments}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise RegenerateError(f"no experiment named {', '.join(unknown)}; there are: {', '.join(sorted(known))}")
    return [e for e in experiments if e.name in only]


def check_markers(path: Path) -> str:
    """The text of `path` (a RESULTS.md), refused unless it holds BEGIN … END once each, in order."""
    if not path.is_file():
        raise RegenerateError(f"{path} does not exist; an experiment's RESULTS.md must exist and contain the "
                              f"lines {BEGIN} and {END} around its generated table")
    text = path.read_text(encoding="utf-8")
    begin, end = text.count(BEGIN), text.count(END)
    if begin != 1 or end != 1 or text.index(BEGIN) > text.index(END):
        raise RegenerateError(f"{path} must contain the markers {BEGIN} and {END} exactly once each, in that "
                              f"order, around the generated table (found {begin} and {end}); nothing was written")
    return text


def replace_region(text: str, table: str) -> str:
    """`text` with everything between the markers replaced by `table` (markers kept)."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table.strip(chr(10))}\n{END}{tail}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` by a rename of a file in the same folder (never half written)."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
        f.write(data)
    try:
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(experiment: Experiment, out: Path) -> list[Path]:
    """Write `out/table.md` into the experiment's RESULTS.md and copy `out/*.png` beside it; returns
    the files written."""
    results = experiment.folder / "RESULTS.md"
    text = check_markers(results)
    table = out / "table.md"
    if not table.is_file():
        raise RegenerateError(f"{experiment.name} wrote no {table}")
    plots = sorted(out.glob("*.png"))
    write_atomic(results, replace_region(text, table.read_text(encoding="utf-8")).encode("utf-8"))
    for plot in plots:
        write_atomic(experiment.folder / plot.name, plot.read_bytes())
    return [results, *(experiment.folder / plot.name for plot in plots)]


def run_module(module: str, argv: list[str]) -> int:
    """Run an experiment's `main(argv)` in this process."""
    return int(importlib.import_module(module).main(argv) or 0)


def regenerate(experiments: list[Experiment], out: Path, argv: list[str], *, write: bool = True,
               runner: Runner = run_module, say: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Run each experiment into `out/<name>` with `argv` (its options, without `--out`) and, with
    `write`, publish it into the repository as soon as it has succeeded. Every RESULTS.md is checked
    for its markers before anything runs. Returns the files written."""
    if write:
        for experiment in experiments:
            check_markers(experiment.folder / "RESULTS.md")
    written: list[Path] = []
    for experiment in experiments:
        target = out / experiment.name
        say(f"== {experiment.name} → {target}")
        code = runner(experiment.module, [*argv, "--out", str(target)])
        if code:
            raise RegenerateError(f"{experiment.name} exited with {code}; its results were not written"
                                  + (f" (the ones before it were: {', '.join(map(str, written))})" if written else ""))
        if write:
            written += publish(experiment, target)
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.experiments",
                                     description="Run every experiment under examples/experiments/ and write its "
                                                 "table into its RESULTS.md and its plots beside it.")
    parser.add_argument("--preset", default="smoke", help="each experiment's preset (default: smoke; the "
                                                          "published results use full)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: each experiment's preset's own")
    parser.add_argument("--out", type=Path, default=Path("out/experiments"),
                        help="outputs go to OUT/<name> (default: out/experiments)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    parser.add_argument("--jobs", type=int, default=1, help="passed on: seeds run in parallel processes")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="only write OUT; leave RESULTS.md and the plots in the repository untouched")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, package: str | ModuleType = PACKAGE,
         runner: Runner = run_module) -> int:
    args = parse_args(argv)
    passed = ["--preset", args.preset, "--jobs", str(args.jobs)]
    if args.seeds:
        passed += ["--seeds", *map(str, args.seeds)]
    if args.quiet:
        passed.append("--quiet")
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        experiments = select(discover(package), args.only)
        written = regenerate(experiments, args.out, passed, write=args.write, runner=runner, say=say)
    except RegenerateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        say(f"wrote {path}")
    return 0
