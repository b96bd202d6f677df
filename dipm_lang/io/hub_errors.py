"""Why fetching a Hub adapter failed, said as one `AdapterError` naming the id (exit 1).

huggingface_hub reports failures with its own exception types (2.4.0: `errors.py`, mapped from the
Hub's `X-Error-Code` headers by `utils/_http.py::hf_raise_for_status`); each becomes a message that
names the `hf://` id and a hint saying what to do: log in, fix the revision, go online, fill the
cache. The other half of this module explains a repo that is not an adapter, from its file list.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dipm_lang.errors import AdapterError
from dipm_lang.io.hub_ref import HubRef
from dipm_lang.io.layout import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME

LOGIN = "log in with `hf auth login` (huggingface_hub's CLI), or set HF_TOKEN"
# Files that mark a full model (transformers, diffusers, GGUF) rather than an adapter.
_MODEL_FILE = re.compile(r"config\.json|model_index\.json|(pytorch_)?model(-\d+-of-\d+)?\.(safetensors|bin)"
                         r"|.+\.safetensors\.index\.json|pytorch_model\.bin\.index\.json|.+\.gguf")


@dataclass(frozen=True)
class Attempt:
    """What was being fetched, and how: the facts an error message needs."""

    ref: HubRef
    endpoint: str  # the Hub's URL (HF_ENDPOINT or the `endpoint` argument)
    cache_dir: str  # huggingface_hub's cache folder in use
    offline: bool
    explicit_cache_dir: bool = False  # given as an argument (then the hint's command repeats it)


def translate(error: BaseException, attempt: Attempt) -> AdapterError | None:
    """The dipm error for a huggingface_hub (or network) failure; None for anything else (a bug)."""
    import httpx2
    from huggingface_hub import errors as hub

    ref, repo = attempt.ref, attempt.ref.repo_id
    page = f"{attempt.endpoint}/{repo}"
    if isinstance(error, hub.GatedRepoError):  # before RepositoryNotFoundError, its base class
        if _status(error) == 401:
            return AdapterError(f"'{repo}' is a gated repository: it needs a token of an account that accepted "
                                f"its conditions on {page}", str(ref), hint=LOGIN)
        return AdapterError(f"your token has no access to the gated repository '{repo}'", str(ref),
                            hint=f"request access on {page}, or use the token of an account that has it "
                                 "(HF_TOKEN, `hf auth login`)")
    if isinstance(error, hub.RepositoryNotFoundError):
        message = f"repository '{repo}' not found on the Hub ({attempt.endpoint})"
        if ref.bare:
            message += f"; read as a Hub id because no local folder '{repo}' exists"
        return AdapterError(message, str(ref), hint=f"check the id; if the repository is private, {LOGIN}")
    if isinstance(error, hub.RevisionNotFoundError):
        return AdapterError(f"revision '{ref.revision_or_default}' not found in '{repo}'", str(ref),
                            hint="a revision is a branch, a tag or a commit hash; write a '/' in it as %2F "
                                 "(hf://ORG/NAME@exp%2Fv2)")
    if isinstance(error, hub.DisabledRepoError):
        return AdapterError(f"access to the repository '{repo}' is disabled on the Hub", str(ref))
    if isinstance(error, hub.LocalTokenNotFoundError):
        return AdapterError("a token is required, and none is set", str(ref), hint=LOGIN)
    if isinstance(error, hub.HfHubHTTPError):
        return _http_error(error, attempt)
    if isinstance(error, (hub.RevisionResolutionError, hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled,
                          httpx2.TransportError)):
        return not_cached(attempt) if attempt.offline else _unreachable(error, attempt)
    if isinstance(error, hub.FileMetadataError):
        return AdapterError(f"{attempt.endpoint} does not answer like the Hugging Face Hub: {error}", str(ref),
                            hint="check HF_ENDPOINT and the proxy settings (HTTPS_PROXY)")
    if isinstance(error, OSError):  # disk full, read-only cache, a download cut short
        return AdapterError(f"could not store the download in the cache {attempt.cache_dir}: {error}", str(ref))
    return None


def not_cached(attempt: Attempt) -> AdapterError:
    """Offline, and the cache does not hold the adapter: say so, and how to fill the cache."""
    from huggingface_hub import constants

    switch = "HF_HUB_OFFLINE=1 is set" if constants.is_offline_mode() else "offline mode was asked for"
    return AdapterError(f"not in the Hugging Face cache ({attempt.cache_dir}), and {switch}", str(attempt.ref),
                        hint=f"run once online to fetch it, or fill the cache with: {download_command(attempt)}")


def download_command(attempt: Attempt) -> str:
    """The `hf download` command that puts this adapter's files in the cache."""
    ref = attempt.ref
    words = ["hf", "download", ref.repo_id]
    if ref.revision is not None:
        words += ["--revision", ref.revision]
    words += ["--include", ref.repo_path("adapter_*"), "--include", ref.repo_path("README.md")]
    if attempt.explicit_cache_dir:
        words += ["--cache-dir", attempt.cache_dir]
    return shlex.join(words)


def not_an_adapter(ref: HubRef, repo_files: Iterable[str] | None) -> AdapterError:
    """No `adapter_config.json` where `ref` points: say what is there instead (a full model, other
    subfolders holding adapters as PEFT's named adapters do, nothing at all)."""
    files = sorted(repo_files or ())
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    here = [f[len(prefix):] for f in files if f.startswith(prefix)]
    adapters = [_adapter_at(ref, posixpath.dirname(f)) for f in files
                if posixpath.basename(f) == CONFIG_NAME and _has_weights(files, posixpath.dirname(f))]
    elsewhere = f"adapters in this repo: {', '.join(adapters)}" if adapters else None
    if repo_files is None:
        return AdapterError("no adapter_config.json here: not a PEFT adapter", str(ref), hint=elsewhere)
    if ref.subfolder and not here:
        return AdapterError(f"no subfolder '{ref.subfolder}' in '{ref.repo_id}' at revision "
                            f"{ref.revision_or_default}", str(ref),
                            hint=elsewhere or "no folder of this repo holds an adapter_config.json")
    model_files = [f for f in here if "/" not in f and _MODEL_FILE.fullmatch(f)]
    if model_files:
        return AdapterError(f"this is a full model ({', '.join(model_files[:3])}), not a PEFT adapter: it has no "
                            "adapter_config.json", str(ref),
                            hint=elsewhere or f"dipm loads LoRA adapters ({CONFIG_NAME} + {SAFETENSORS_NAME})")
    if adapters:
        return AdapterError("no adapter_config.json here; the adapters are in subfolders", str(ref), hint=elsewhere)
    shown = ", ".join(here[:5]) + (", …" if len(here) > 5 else "")
    return AdapterError(f"not a PEFT adapter: no adapter_config.json ({'it holds ' + shown if here else 'empty'})",
                        str(ref))


def no_weights(ref: HubRef) -> AdapterError:
    return AdapterError(f"has an adapter_config.json but neither {SAFETENSORS_NAME} nor {BIN_NAME}", str(ref))


def _adapter_at(ref: HubRef, folder: str) -> str:
    return str(HubRef(ref.repo_id, ref.revision, folder or None))


def _has_weights(files: list[str], folder: str) -> bool:
    names = {posixpath.join(folder, n) for n in (SAFETENSORS_NAME, BIN_NAME)}
    return any(f in names for f in files)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _http_error(error: BaseException, attempt: Attempt) -> AdapterError:
    """Other answers of the Hub: a refused token, a refusal, rate limits, the Hub down."""
    ref, status = attempt.ref, _status(error)
    said = getattr(error, "server_message", None) or ""
    detail = f" ({said.strip()})" if said.strip() else ""
    if status == 401:
        return AdapterError(f"the Hub refused the token{detail or ' (invalid credentials)'}", str(ref),
                            hint="check HF_TOKEN, or log in again with `hf auth login`")
    if status == 403:
        return AdapterError(f"the Hub forbids this download{detail}", str(ref), hint=LOGIN)
    if status == 429:
        return AdapterError(f"the Hub is rate-limiting these requests{detail}", str(ref),
                            hint=f"wait and retry; logged-in users get higher limits: {LOGIN}")
    return AdapterError(f"the Hub answered HTTP {status}{detail}", str(ref),
                        hint="try again later" if status is not None and status >= 500 else None)


def _unreachable(error: BaseException, attempt: Attempt) -> AdapterError:
    """Online, but the Hub could not be reached and the cache could not stand in."""
    cause = _root_cause(error)
    return AdapterError(f"could not reach the Hub at {attempt.endpoint} ({type(cause).__name__}: {cause}), and "
                        f"the adapter is not in the cache ({attempt.cache_dir})", str(attempt.ref),
                        hint="check the network (a proxy: HTTPS_PROXY; another Hub: HF_ENDPOINT); once the cache "
                             "holds the adapter, HF_HUB_OFFLINE=1 works without a network")


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (nxt := error.__cause__ or error.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        error = nxt
    return error


def cache_folder(cache_dir: str | Path | None) -> str:
    """The cache folder huggingface_hub uses: `cache_dir`, else HF_HUB_CACHE / HF_HOME's `hub`."""
    from huggingface_hub import constants

    return str(Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser())
