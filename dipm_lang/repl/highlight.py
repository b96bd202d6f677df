"""A Pygments lexer for dipm: used by the REPL's syntax highlighting, reusable by docs.

Registered as a Pygments plugin (entry point `pygments.lexers: dipm`), so Sphinx, MkDocs and
`pygmentize -l dipm` highlight ```dipm code blocks once dipm_lang is installed.
"""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String, Text,
                            Whitespace)

from dipm_lang.ops import OPERATORS
from dipm_lang.frontend.resources import stdlib_dir


def stdlib_names() -> list[str]:
    """Names the standard library defines (a regex scan: no parsing, cheap at import time)."""
    names: set[str] = set()
    try:
        for path in stdlib_dir().glob("*.dipm"):
            names.update(re.findall(r"^\s*def\s+([A-Za-z_]\w*)", path.read_text(encoding="utf-8"), re.M))
    except (OSError, FileNotFoundError):
        pass
    return sorted(names)


_STDLIB = stdlib_names()


class DipmLexer(RegexLexer):
    """dipm scripts and REPL input (`:commands` at the start of a line)."""

    name = "dipm"
    aliases = ["dipm"]
    filenames = ["*.dipm"]
    mimetypes = ["text/x-dipm"]
    flags = re.MULTILINE

    tokens = {
        "root": [
            (r"[ \t\f\r\n]+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r"^(:[A-Za-z]+)", Keyword.Pseudo),  # REPL commands
            (r"(def)(\s+)([A-Za-z_]\w*)", bygroups(Keyword.Declaration, Whitespace, Name.Function)),
            (r"\bimport\b", Keyword.Namespace),
            (r'"(\\.|[^"\\\n])*"', String.Double),
            (r"'(\\.|[^'\\\n])*'", String.Single),
            (r"(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", Number),
            (r"^([A-Za-z_]\w*)(\s*)(=)(?!=)", bygroups(Name.Variable, Whitespace, Operator)),  # a binding
            (r"([A-Za-z_]\w*)(\s*)(=)(?!=)", bygroups(Name.Attribute, Whitespace, Operator)),  # a keyword argument
            (words(sorted(OPERATORS.callables()), prefix=r"\b", suffix=r"\b"), Name.Builtin),
            *([(words(_STDLIB, prefix=r"\b", suffix=r"\b"), Name.Function)] if _STDLIB else []),
            (r"(\.)([AB])\b", bygroups(Punctuation, Name.Attribute)),  # x.A, x.B
            (r"[A-Za-z_]\w*", Name),
            (r"[-+*/=]", Operator),
            (r"[()\[\],.;]", Punctuation),
            (r".", Text),
        ],
    }
