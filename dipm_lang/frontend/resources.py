"""Where the grammar and the standard library live.

In an installed wheel they are package data (`dipm_lang/grammar`, `dipm_lang/stdlib`); in a
source checkout they sit at the top of the repository, beside the package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # dipm_lang/


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dipm_lang is installed without its {name}/ folder (looked in {_PACKAGE})")


def grammar_path() -> Path:
    return _data_dir("grammar") / "dipm.lark"


def stdlib_dir() -> Path:
    return _data_dir("stdlib")
