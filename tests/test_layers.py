"""The layers point one way (STYLE.md): each package of dipm_lang imports only the layers below it.

Every import in every module counts — at the top, inside functions, under TYPE_CHECKING — so a
dependency cannot hide in a function body. The table below is the architecture; the README's
contributor section draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dipm_lang"

# layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "version": set(),
    "ir": {"errors"},
    "safety": {"errors"},
    "passes": {"ir", "errors"},
    "backend": {"ir", "errors"},
    "ops": {"ir", "backend", "safety", "errors"},
    "io": {"backend", "ir", "safety", "errors", "version"},
    "frontend": {"ir", "ops", "io", "safety", "errors"},
    "compiler": {"frontend", "passes", "ops", "ir", "safety", "errors"},
    "run": {"io", "backend", "ops", "ir", "safety", "errors", "version"},
    "report": {"run", "io", "backend", "ir", "errors"},
    "sweeps": {"io", "errors"},  # grids, the sweep folder, evaluations: it never sees a program
    "api": {"compiler", "run", "report", "sweeps", "io", "backend", "ops", "ir", "errors"},
    "repl": {"compiler", "frontend", "run", "report", "io", "ops", "ir", "safety", "errors"},
    "cli": {"api", "compiler", "frontend", "repl", "run", "report", "sweeps", "io", "backend", "ops", "ir", "safety",
            "errors", "version", "package"},
    "package": {"api", "version"},  # dipm_lang/__init__.py
}


def layer_of(module: str) -> str | None:
    """`dipm_lang.ir.node` -> "ir"; `dipm_lang.errors` -> "errors"; `dipm_lang` -> "package"."""
    parts = module.split(".")
    if parts[0] != "dipm_lang":
        return None
    if len(parts) == 1:
        return "package"
    return parts[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every dipm_lang module a file imports (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    return imports_in(path.read_text(encoding="utf-8"), package, runtime_only=runtime_only)


def imports_in(source: str, package: str, *, runtime_only: bool = False) -> set[str]:
    """The dipm_lang modules `source` imports; `runtime_only` skips `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(source)
    skipped = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from dipm_lang import api`
    return {m for m in found if m.split(".")[0] == "dipm_lang"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in modules():
        assert layer_of(module_name(path)) in ALLOWED, f"{path}: which layer is this? add it to ALLOWED"


def violations(module: str, imported: set[str]) -> list[str]:
    mine = layer_of(module)
    bad = []
    for name in sorted(imported):
        theirs = layer_of(name)
        if theirs == mine or (theirs == "package" and name != "dipm_lang"):
            continue  # `from dipm_lang import api` also counts as dipm_lang.api
        if theirs not in ALLOWED[mine]:  # type: ignore[index]
            bad.append(f"{module} ({mine}) imports {name} ({theirs})")
    return bad


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    assert violations(module_name(path), imports(path)) == [], "layers must point down"


def test_the_layer_table_has_no_cycle():
    graph = nx.DiGraph([(a, b) for a, deps in ALLOWED.items() for b in deps])
    assert nx.is_directed_acyclic_graph(graph), list(nx.simple_cycles(graph))


def test_no_import_cycles_between_modules():
    graph = nx.DiGraph()
    for path in modules():
        module = module_name(path)
        graph.add_node(module)
        for imported in imports(path, runtime_only=True):  # type hints cannot make a cycle
            if imported in graph or (PACKAGE.parent / (imported.replace(".", "/") + ".py")).exists():
                graph.add_edge(module, imported)
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_top_level_holds_only_the_front_door():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(files) <= 6, files
    assert set(files) <= {"__init__.py", "api.py", "errors.py", "compiler.py", "version.py"}, files


def test_the_checker_sees_a_backward_import():
    """The checks above can fail: an import of the front end inside a function of ir/ is caught."""
    path = PACKAGE / "ir" / "node.py"
    planted = path.read_text(encoding="utf-8") + "\n\ndef f():\n    from ..frontend.parser import parse_script\n"
    found = imports_in(planted, "dipm_lang.ir")
    assert "dipm_lang.frontend.parser" in found
    assert violations("dipm_lang.ir.node", found) == [
        "dipm_lang.ir.node (ir) imports dipm_lang.frontend.parser (frontend)",
        "dipm_lang.ir.node (ir) imports dipm_lang.frontend.parser.parse_script (frontend)"]
