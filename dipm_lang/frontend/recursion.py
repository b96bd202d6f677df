"""Room on Python's stack for the front end's recursive passes.

The parser's Transformer and the lowering recurse once (or a few times) per level of nesting.
Their depth is bounded by explicit limits (`parser.MAX_PARSE_DEPTH`, `lower.MAX_EXPR_DEPTH`,
`lower.MAX_INLINE_DEPTH`), which are what a user meets, with a position; this makes sure Python's own
recursion limit is never met first, however deep the caller's stack already is (a REPL, a test
runner, an application embedding dipm_lang).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def stack_depth() -> int:
    """Frames on the current thread's stack."""
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@contextmanager
def stack_room(frames: int) -> Iterator[None]:
    """Raise the recursion limit (never lower it) so `frames` more frames fit, for the block's duration.

    The limit is process-wide: a thread lowering at the same time may see it raised for a while.
    """
    limit = sys.getrecursionlimit()
    needed = stack_depth() + frames + 100
    raised = needed > limit
    if raised:
        sys.setrecursionlimit(needed)
    try:
        yield
    finally:
        if raised:
            sys.setrecursionlimit(limit)
