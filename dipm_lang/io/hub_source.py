"""A Hub adapter as a program input (SPEC §7.5): an `hf://` load path opened like any adapter folder.

`open_hub` fetches the adapter's files into huggingface_hub's cache (or finds them there: offline
mode, the cache location and the token are huggingface_hub's own, `io/hub.py`), then validates the
cached folder with the reader every folder goes through, so a Hub adapter and the same files on
disk are the same input. What differs is its name: provenance and model cards call it by its id
and record the commit its revision resolved to — never the cache path, which is local — so an
output is byte-identical whether its input came from the Hub or, later, offline from the cache.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from dipm_lang.errors import AdapterError
from dipm_lang.io.hub import ResolvedHub, resolve
from dipm_lang.io.hub_ref import HubRef, parse_hub_uri
from dipm_lang.io.reader import AdapterInfo, open_adapter


@dataclass(frozen=True, eq=False)
class HubAdapterInfo(AdapterInfo):
    """A validated adapter from the Hub: the cached folder's `AdapterInfo`, plus where it came from."""

    hub: ResolvedHub | None = None

    @property
    def label(self) -> str:
        """The id as the script gave it (`hf://org/name@rev/sub`): how provenance names this input."""
        return str(self.hub.ref) if self.hub is not None else super().label

    @property
    def commit(self) -> str | None:
        """The commit the revision resolved to (recorded next to the id in provenance)."""
        return self.hub.commit if self.hub is not None else None


def open_hub(path: str, *, progress: bool | None = None) -> HubAdapterInfo:
    """The adapter the `hf://` load path `path` names; `AdapterError` (exit 1) naming the id for every
    failure: not found, bad revision, gated, offline with an empty cache, not an adapter, a bad file.

    `progress`: huggingface_hub's download bars (which HF_HUB_DISABLE_PROGRESS_BARS=1 also hides);
    None shows them when stderr is a terminal, as dipm's own progress bar does.
    """
    ref = parse_hub_uri(path)  # the lowering wrote it: canonical, so this does not fail
    show = progress if progress is not None else sys.stderr.isatty()
    resolved = resolve(ref, progress=None if show else False)
    return with_origin(_open_cached(ref, resolved), resolved)


def with_origin(info: AdapterInfo, resolved: ResolvedHub) -> HubAdapterInfo:
    """`info` (the cached folder, opened) as a Hub input."""
    return HubAdapterInfo(**{f.name: getattr(info, f.name) for f in fields(AdapterInfo)}, hub=resolved)


def _open_cached(ref: HubRef, resolved: ResolvedHub) -> AdapterInfo:
    """The reader's checks on the cached files; a failure names the id first, then the file."""
    try:
        return open_adapter(resolved.folder)
    except AdapterError as error:
        where = f" ({error.path})" if error.path else ""
        raise AdapterError(f"{error.message}{where}", str(ref), hint=error.hint) from None
