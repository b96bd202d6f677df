"""Refusing regular expressions that could take exponential time to match.

Python's `re` backtracks, so a hostile pattern — a PEFT `rank_pattern` key in someone's
adapter_config.json, or a `select(x, pattern)` in someone's script — could hang the tool on a
module name of 40 characters (`(\\w+)+!` takes seconds, `(.*)*x` minutes). Patterns are checked
statically, from `re`'s own parse tree, before any name is matched.
"""

from __future__ import annotations

import re

MAX_PATTERN_CHARS = 1_000
MAX_VARIABLE_REPEATS = 4


def pattern_cost_problem(pattern: str) -> str | None:
    """Why matching `pattern` could take exponential (or high-polynomial) time, or None.

    Python's `re` backtracks: a repetition nested in another (`(a+)+`, `(.*)*`) can take
    exponential time on a failing name, and many variable repetitions in a row (`.*.*.*.*.*x`)
    polynomial time of a high degree. A hostile config or script could hang the tool (and PEFT)
    that way, so such patterns are refused before any name is matched; real ones never need them.
    Callers compile the pattern first (`compile_pattern`), which reports syntax errors.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is longer than {MAX_PATTERN_CHARS} characters"
    try:
        from re import _parser as sre_parse  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse  # type: ignore[no-redef]
    try:
        parsed = sre_parse.parse(pattern)
    except Exception:  # syntax errors are compile_pattern's to report
        return None
    variable = 0
    nested = False

    def walk(items, inside: bool) -> None:
        nonlocal variable, nested
        for op, av in items:
            if str(op) in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, body = av
                repeats = high > 1 and high != low
                if repeats:
                    variable += 1
                    nested = nested or inside
                walk(body, inside or repeats)
                continue
            for child in av if isinstance(av, (list, tuple)) else (av,):
                if isinstance(child, sre_parse.SubPattern):
                    walk(child, inside)
                elif isinstance(child, list):  # BRANCH: a list of alternatives
                    for alternative in child:
                        if isinstance(alternative, sre_parse.SubPattern):
                            walk(alternative, inside)

    walk(parsed, False)
    if nested:
        return "nests a repetition inside another, which can take exponential time to match"
    if variable > MAX_VARIABLE_REPEATS:
        return (f"has too many variable repetitions ({variable}; at most {MAX_VARIABLE_REPEATS}), which can "
                "take very long to match")
    return None


def compile_pattern(pattern: str) -> "re.Pattern[str]":
    """`re.compile`, with every way it can fail (a syntax error, nesting too deep for its recursive
    parser, a repeat count too large) raised as `re.error`, and costly patterns refused likewise."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise re.error(f"is longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re.compile(pattern)
    except (RecursionError, OverflowError) as exc:
        raise re.error(f"is nested too deeply or repeats too often ({type(exc).__name__})") from None
    problem = pattern_cost_problem(pattern)
    if problem:
        raise re.error(problem)
    return compiled
