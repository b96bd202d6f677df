"""Tests of optional dependencies (Ray): skipped where the extra is not installed, but never in CI,
which installs every extra and sets DIPM_REQUIRE_OPTIONAL=1 so that a missing one fails the run."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def optional_import(name: str, *, extra: str) -> ModuleType:
    if os.environ.get("DIPM_REQUIRE_OPTIONAL"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"needs `pip install \"dipm_lang[{extra}]\"`")
