""""Did you mean …?" suggestions for misspelt names and values."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping


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
