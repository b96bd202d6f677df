"""What an output may say about where its inputs came from: never a local path.

Model cards and safetensors metadata are pushed to public hubs. They name each input by its
folder's base name (or Hub id) and its content hash, and the recorded recipe has every absolute
path shortened to `…/BASENAME` (a home folder is not anyone's business), so the same recipe and
inputs give byte-identical outputs from any working folder.
"""

from __future__ import annotations

import re

# An absolute path inside recipe text: `/name/…` (two components at least), `~/…`, `~user/…` or `C:\…`, up to a quote, space or
# bracket. A slash after a word character or a dot (`x/2`, `a.b/c`), or before a digit or a space
# (`1 /2`, `h / 2`), is a division, not a path.
_ABSOLUTE = re.compile(r"""(?<![\w.~/\\])(?:/(?=[A-Za-z_.~-][^\s"'`,;)\]}/]*/)|~[\w.-]*/|[A-Za-z]:[\\/])[^\s"'`,;)\]}]+""")


def private_text(text: str) -> str:
    """`text` with every absolute path replaced by `…/` and its last component."""
    def shorten(match: re.Match[str]) -> str:
        path = match.group(0).rstrip("/\\")
        last = re.split(r"[\\/]", path)[-1]
        return f"…/{last}" if last else "…/"

    return _ABSOLUTE.sub(shorten, text)
