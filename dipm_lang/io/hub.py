"""Adapters from the Hugging Face Hub (SPEC §7.5): only the adapter files, in huggingface_hub's cache.

`resolve(ref)` gives a folder of huggingface_hub's own cache (`<HF_HUB_CACHE>/models--ORG--NAME/
snapshots/<commit>/[SUBFOLDER]`) holding the adapter's files, and the commit they come from. With
huggingface_hub 2.x it takes three steps, each the library's own:

1. `HfApi.resolve_revision` turns the revision into a commit (`GET /api/models/ID/revision/REV`)
   and records it in the cache's `refs/`, so offline runs find it later; offline it reads `refs/`.
2. `snapshot_download(revision=<that commit>, allow_patterns=[the adapter files])` lists the commit's
   files (kept on disk as `trees/<commit>.json`) and downloads only `adapter_config.json`,
   `adapter_model.safetensors` and `README.md` of the subfolder, with the library's locking,
   retries, Xet transfers and progress bars.
3. Only when the commit has no safetensors weights, `hf_hub_download` fetches `adapter_model.bin`
   (pickled: the reader's §4 rules apply to it).

Every file comes from the one resolved commit, even if the branch moves meanwhile; when the cache
already holds that commit's config and safetensors, step 2 is skipped (one request in all). Offline
(`HF_HUB_OFFLINE=1`, or `offline=True`) nothing is sent: `try_to_load_from_cache` finds the files.
The cache location (`cache_dir`, else HF_HUB_CACHE, else HF_HOME/hub), the token (`token`, else
HF_TOKEN, else the one `hf auth login` stored) and the endpoint (`endpoint`, else HF_ENDPOINT) are
huggingface_hub's; note that it reads the environment variables once, when it is imported.

Progress bars are huggingface_hub's tqdm bars on stderr: they hide themselves when stderr is not a
terminal, and HF_HUB_DISABLE_PROGRESS_BARS=1 or `progress=False` turns them off.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dipm_lang.errors import AdapterError
from dipm_lang.io.hub_errors import Attempt, cache_folder, no_weights, not_an_adapter, not_cached, translate
from dipm_lang.io.hub_ref import DEFAULT_REVISION, HubRef
from dipm_lang.io.layout import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME

README_NAME = "README.md"
FETCHED = (CONFIG_NAME, SAFETENSORS_NAME, README_NAME)  # fetched when present; the .bin only without safetensors


@dataclass(frozen=True)
class ResolvedHub:
    """A Hub adapter on disk: its files in huggingface_hub's cache, and the commit they come from."""

    ref: HubRef  # as the script wrote it
    commit: str  # the 40-hex commit its revision resolved to
    folder: Path  # snapshots/<commit>[/subfolder] in the cache (the files are links into blobs/)
    config_file: Path
    weights_file: Path  # adapter_model.safetensors, or adapter_model.bin when the repo has no safetensors
    readme_file: Path | None

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.config_file, self.weights_file) + ((self.readme_file,) if self.readme_file else ())

    @property
    def pinned(self) -> HubRef:
        """The same adapter at its commit: names exactly these bytes from now on."""
        return self.ref.at(self.commit)

    def provenance(self) -> dict[str, str | None]:
        """What an output's metadata records about this input (SPEC §7.5: the id and the resolved commit)."""
        return {"source": str(self.ref), "repo_id": self.ref.repo_id, "revision": self.ref.revision_or_default,
                "subfolder": self.ref.subfolder, "commit": self.commit}


@dataclass(frozen=True)
class HubStatus:
    """What the cache knows of a Hub adapter, found without the network (`dipm check`)."""

    ref: HubRef
    commit: str | None  # the commit the cache's refs/ give the revision; None if never fetched
    local: ResolvedHub | None  # the cached files, when all needed ones are there
    offline: bool  # huggingface_hub's offline mode (HF_HUB_OFFLINE)

    @property
    def cached(self) -> bool:
        return self.local is not None

    def __str__(self) -> str:
        revision = f"revision {self.ref.revision_or_default}"
        if self.commit is not None:
            revision += f" = commit {self.commit[:12]}"
        if self.local is not None:
            return f"{self.ref}: {revision}, cached in {self.local.folder}"
        then = "offline mode is on, so loading it will fail" if self.offline else "fetched from the Hub on first use"
        return f"{self.ref}: {revision}, not cached: {then}"


def resolve(ref: HubRef, *, offline: bool | None = None, token: str | bool | None = None,
            cache_dir: str | Path | None = None, endpoint: str | None = None,
            progress: bool | None = None) -> ResolvedHub:
    """Fetch (or find in the cache) the adapter files `ref` names; see the module docstring.

    `offline`: None follows HF_HUB_OFFLINE; True uses the cache only. `token`: None lets
    huggingface_hub pick (HF_TOKEN, the stored login), False sends none. `endpoint`: None is
    HF_ENDPOINT (default https://huggingface.co). `progress`: None lets huggingface_hub decide,
    False hides the bars. Raises `AdapterError` naming the id for every failure.
    """
    from huggingface_hub import constants

    offline = constants.is_offline_mode() if offline is None else offline
    attempt = Attempt(ref, (endpoint or constants.ENDPOINT).rstrip("/"), cache_folder(cache_dir), offline,
                      explicit_cache_dir=cache_dir is not None)
    try:
        revision = _api(endpoint, token).resolve_revision(
            ref.repo_id, revision=ref.revision, cache_dir=cache_dir, local_files_only=offline)
        found = _from_cache(ref, revision.resolved, cache_dir)
        if offline:
            if found is None:
                tree = _cached_tree(ref, revision.resolved, cache_dir)
                config_missing = tree is not None and ref.repo_path(CONFIG_NAME) not in tree
                raise not_an_adapter(ref, tree) if config_missing else not_cached(attempt)
            return found
        if found is not None and found.weights_file.name == SAFETENSORS_NAME:
            # The commit's files are all here (maybe put there by another tool, without the listing
            # snapshot_download keeps): nothing to ask the Hub, whose retries would be slow if down.
            return found
        return _download(ref, revision, cache_dir=cache_dir, token=token, endpoint=endpoint, progress=progress)
    except AdapterError:
        raise
    except Exception as error:
        translated = translate(error, attempt)
        if translated is None:
            raise
        raise translated from error


def cached(ref: HubRef, *, cache_dir: str | Path | None = None) -> ResolvedHub | None:
    """The adapter as the cache holds it (what an offline `resolve` returns), or None; no network."""
    commit = _cached_commit(ref, cache_dir)
    return _from_cache(ref, commit, cache_dir) if commit is not None else None


def is_cached(ref: HubRef, *, cache_dir: str | Path | None = None) -> bool:
    """Whether an offline `resolve(ref)` would succeed; no network."""
    return cached(ref, cache_dir=cache_dir) is not None


def describe(ref: HubRef, *, cache_dir: str | Path | None = None) -> HubStatus:
    """The id, its revision, and what the cache holds of it, for `dipm check`; no network."""
    from huggingface_hub import constants

    commit = _cached_commit(ref, cache_dir)
    local = _from_cache(ref, commit, cache_dir) if commit is not None else None
    return HubStatus(ref, commit, local, constants.is_offline_mode())


def cached_adapter_ids(*, cache_dir: str | Path | None = None) -> list[str]:
    """`hf://` ids of the adapters the cache holds (config and weights), for REPL completion.

    One id per cached (ref, folder) pair: `hf://org/name` for `main`, `hf://org/name@rev` for other
    branches and tags, `hf://org/name@<commit>` for snapshots no ref points at; subfolders appended.
    Reads the cache with huggingface_hub's `scan_cache_dir`; no network.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        report = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    ids: set[str] = set()
    for repo in report.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            names = {f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files}
            folders = {name.rpartition("/")[0] for name in names if name.rpartition("/")[2] == CONFIG_NAME}
            for folder in folders:
                if not {f"{folder}/{w}".lstrip("/") for w in (SAFETENSORS_NAME, BIN_NAME)} & names:
                    continue
                for ref_name in revision.refs or {revision.commit_hash}:
                    rev = None if ref_name == DEFAULT_REVISION else ref_name
                    ids.add(str(HubRef(repo.repo_id, rev, folder or None)))
    return sorted(ids)


# --- the steps ------------------------------------------------------------------------------------

def _api(endpoint: str | None, token: str | bool | None) -> Any:
    from huggingface_hub import HfApi

    from dipm_lang.version import __version__

    return HfApi(endpoint=endpoint, token=token, library_name="dipm_lang", library_version=__version__)


def _download(ref: HubRef, revision: Any, *, cache_dir: str | Path | None, token: str | bool | None,
              endpoint: str | None, progress: bool | None) -> ResolvedHub:
    """Steps 2 and 3 of the module docstring; `revision` is a `ResolvedRevision` (pinned to a commit)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from dipm_lang.version import __version__

    options = dict(repo_id=ref.repo_id, revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint,
                   library_name="dipm_lang", library_version=__version__,
                   tqdm_class=_no_progress_class() if progress is False else None)
    # allow_patterns are fnmatch patterns: escape '*?[' in folder names so they match literally.
    patterns = [glob.escape(ref.repo_path(name)) for name in FETCHED]
    with _without_no_match_warning():
        snapshot = Path(snapshot_download(allow_patterns=patterns, **options))
    folder = snapshot / ref.subfolder if ref.subfolder else snapshot
    tree = _cached_tree(ref, revision.resolved, cache_dir)
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise not_an_adapter(ref, tree)
    weights = folder / SAFETENSORS_NAME
    if not weights.is_file():
        if tree is not None and ref.repo_path(BIN_NAME) not in tree:
            raise no_weights(ref)
        try:
            weights = Path(hf_hub_download(filename=ref.repo_path(BIN_NAME), **options))
        except RemoteEntryNotFoundError:
            raise no_weights(ref) from None
    readme = folder / README_NAME
    return ResolvedHub(ref, revision.resolved, folder, config, weights, readme if readme.is_file() else None)


def _from_cache(ref: HubRef, commit: str, cache_dir: str | Path | None) -> ResolvedHub | None:
    """The adapter's files at `commit` if the cache holds the config and a weights file."""
    from huggingface_hub import try_to_load_from_cache

    found: dict[str, Path | None] = {}
    for name in (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME, README_NAME):
        path = try_to_load_from_cache(ref.repo_id, ref.repo_path(name), cache_dir=cache_dir, revision=commit)
        found[name] = Path(path) if isinstance(path, str) else None  # else None or "known missing"
    config, weights = found[CONFIG_NAME], found[SAFETENSORS_NAME] or found[BIN_NAME]
    if config is None or weights is None:
        return None
    return ResolvedHub(ref, commit, config.parent, config, weights, found[README_NAME])


def _cached_commit(ref: HubRef, cache_dir: str | Path | None) -> str | None:
    """The commit the cache's refs/ give `ref`'s revision (a commit hash is itself), or None."""
    from huggingface_hub.errors import RevisionResolutionError

    try:
        return _api(None, False).resolve_revision(
            ref.repo_id, revision=ref.revision, cache_dir=cache_dir, local_files_only=True).resolved
    except RevisionResolutionError:
        return None


def _cached_tree(ref: HubRef, commit: str, cache_dir: str | Path | None) -> frozenset[str] | None:
    """Every file path of the repo at `commit`, from the listing snapshot_download keeps on disk."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return frozenset(f.path for f in get_cached_repo_tree(ref.repo_id, revision=commit, cache_dir=cache_dir))
    except CachedRepoTreeNotFoundError:
        return None


def _no_progress_class() -> type:
    """huggingface_hub's tqdm, always disabled (its `silent_tqdm` lacks methods snapshot_download calls)."""
    from huggingface_hub.utils import tqdm

    class NoProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return NoProgress


@contextmanager
def _without_no_match_warning() -> Iterator[None]:
    """snapshot_download logs "No files matched allow_patterns" when the folder holds no adapter;
    dipm then explains what the folder does hold, so that line is dropped during the call."""
    logger = logging.getLogger("huggingface_hub._snapshot_download")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No files matched")

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
