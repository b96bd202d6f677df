"""What installing dipm_lang asks of an environment: never a torch older than needed, never a cap."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def torch_requirement(requirements: list[str]) -> Requirement:
    (found,) = [Requirement(r) for r in requirements if Requirement(r).name == "torch"]
    return found


def test_the_torch_requirement_admits_current_and_future_releases():
    """Installing dipm_lang next to torch 2.15 (current) or a later one must not downgrade it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = torch_requirement(project["dependencies"])
    for version in ("2.13.0", "2.15.0", "2.15.1", "3.0.0"):
        assert torch.specifier.contains(version), (str(torch), version)
    assert not torch.specifier.contains("2.0.1"), "the oldest supported torch is 2.1 (float8 dtypes)"
    assert all(spec.operator in (">=", ">") for spec in torch.specifier), str(torch)


def test_the_installed_metadata_says_the_same():
    """The environment the tests run in was installed from this pyproject (a stale install would hide a cap)."""
    installed = importlib.metadata.requires("dipm_lang") or []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(torch_requirement(installed).specifier) == str(torch_requirement(project["dependencies"]).specifier)


def test_every_package_ships():
    """A non-editable install has only the packages pyproject lists: a new folder of dipm_lang that
    is not listed imports fine here (editable) and fails for every user (ModuleNotFoundError)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "dipm_lang").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
