"""One error hierarchy for the whole tool.

Every error the user can cause is a `DipmError`. The CLI renders it compiler-style
(`file:line:col: error: message`, the source line, a caret underline) and exits with
its `exit_code`: 2 for usage, syntax and type errors, 1 for runtime errors (SPEC §6).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Span:
    """A region of source text: 1-based line/column of the start, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class DipmError(Exception):
    """Base of every error the tool reports to a user."""

    exit_code = 1

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}error: {self.message}"


class CompileError(DipmError):
    """Anything found before a tensor is read: exit code 2."""

    exit_code = 2


class UsageError(CompileError):
    """Bad command-line usage or option values."""


class DipmSyntaxError(CompileError):
    """The text does not parse."""


class NameResolutionError(CompileError):
    """Unknown names, recursion, import cycles."""


class DipmTypeError(CompileError):
    """Arity, keyword, type or `by` errors."""


class ResourceLimitError(CompileError):
    """A program too large or too deeply nested to compile safely."""


class PathError(CompileError):
    """A path string the OS would reject (a NUL, a name too long, `~user` of no user), where it was written."""


class SandboxError(CompileError):
    """A path outside the folder given with --sandbox (found before anything is read or written)."""


class ConfigError(CompileError):
    """A malformed recipe config: exit code 2, pointing at the config file."""

    def __init__(self, message: str, span: Span | None = None, *, file: str, hint: str | None = None):
        super().__init__(message, span, hint=hint)
        self.file = file

    def __str__(self) -> str:
        return super().__str__() if self.span else f"{self.file}: error: {self.message}"


class RuntimeDipmError(DipmError):
    """Errors while executing: exit code 1."""

    exit_code = 1


class AdapterError(RuntimeDipmError):
    """A problem with an adapter folder or file; names the offending path."""

    def __init__(self, message: str, path: str | Path | None = None, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.path = str(path) if path is not None else None

    def __str__(self) -> str:
        if self.span is not None:  # pointed at the script position that asked for the file
            return super().__str__()
        where = f"{self.path}: " if self.path else ""
        return f"{where}error: {self.message}"


class ExecutionError(RuntimeDipmError):
    """A kernel failed on a node; carries the node's source span."""


def printable(text: str) -> str:
    """`text` safe to send to a terminal: control characters (escape sequences, carriage returns,
    NULs …) and bidirectional-override characters become visible escapes such as `\\x1b`; newlines
    and tabs stay. Text from inputs (module names, config fields, paths) passes through here before
    it is printed, so a hostile file cannot move the cursor, recolour or hide text."""
    if text.isprintable() or all(ch.isprintable() or ch in "\n\t" for ch in text):
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class DipmWarning(DipmError):
    """Not an error: something the language allows that is probably not meant (shown, never raised)."""

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}warning: {self.message}"


def render_warnings(warnings: list, sources: dict[str, str] | None = None) -> str:
    """`file:line:col: warning: …` with the source line and a caret, for each (message, span)."""
    return "\n".join(render(DipmWarning(message, span), sources) for message, span in warnings)


def render(error: DipmError, sources: dict[str, str] | None = None) -> str:
    """Format an error like a compiler: header, source line and caret underline, hint (all of it
    `printable`: messages quote hostile input)."""
    lines = [_clip(printable(str(error)))]
    span = error.span
    text = (sources or {}).get(span.file) if span else None
    if span is not None and text is not None:
        source_lines = text.split("\n")  # as the lexer counts lines (splitlines also breaks at \f, \x1c, …)
        if 1 <= span.line <= len(source_lines):
            line = source_lines[span.line - 1].rstrip("\r").expandtabs(1)
            column = span.column
            width = 1
            if span.end_line == span.line and span.end_column > span.column:
                width = span.end_column - span.column
            if len(line) > MAX_LINE:  # a very long line: show a window around the caret
                start = max(0, min(column - 1 - MAX_LINE // 3, len(line) - MAX_LINE))
                line = ("…" if start else "") + line[start:start + MAX_LINE] + \
                    ("…" if start + MAX_LINE < len(line) else "")
                column -= start - (1 if start else 0)
            width = max(1, min(width, len(line) - column + 1))
            # escapes widen the line: keep the caret under the same characters
            before, marked = line[:column - 1], line[column - 1:column - 1 + width]
            line, column, width = printable(line), len(printable(before)) + 1, max(1, len(printable(marked)))
            gutter = f"{span.line:>4} | "
            lines.append(gutter + line)
            lines.append(" " * (len(gutter) + column - 1) + "^" + "~" * (width - 1))
    if error.hint:
        lines.append(_clip(printable(f"  hint: {error.hint}")))
    return "\n".join(lines)


MAX_LINE = 160      # characters of a source line shown under an error
MAX_MESSAGE = 1000  # an error message quoting hostile input (a key, a value) stays on one screen


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "… (truncated)"


# ---- "did you mean …?" ---------------------------------------------------------------------


def did_you_mean(word: str, candidates: Iterable[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The closest candidate to `word`, if any is close enough (or a known alias)."""
    if aliases and word.lower() in aliases:
        return aliases[word.lower()]
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return matches[0] if matches else None
