"""Text → optimized Program: the front half of the compiler in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dipm_lang.frontend.lower import Lowerer, read_source
from dipm_lang.frontend.parser import parse_script
from dipm_lang.ir.node import Program
from dipm_lang.passes.pipeline import PassReport, optimize


def lower_text(text: str, file: str = "<input>", external: Mapping[str, Any] | None = None) -> Program:
    """Parse and type-check a script; the un-optimized program."""
    lowerer = Lowerer(external)
    return lowerer.lower_script(parse_script(text, file), text)


def compile_text(text: str, file: str = "<input>", external: Mapping[str, Any] | None = None, *,
                 level: int = 2, verify: bool = False) -> tuple[Program, PassReport]:
    return optimize(lower_text(text, file, external), level=level, verify=verify)


def compile_file(path: str | Path, external: Mapping[str, Any] | None = None, *, level: int = 2,
                 verify: bool = False) -> tuple[Program, PassReport]:
    path = Path(path)
    try:
        text = read_source(path)
    except OSError as e:
        from dipm_lang.errors import UsageError

        raise UsageError(f"{path}: cannot read the script: {e.strerror or e}") from None
    return compile_text(text, str(path), external, level=level, verify=verify)
