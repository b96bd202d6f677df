"""`dipm run FILE` — filled in with the executor."""

from __future__ import annotations


def register(sub, commands) -> None:
    pass
