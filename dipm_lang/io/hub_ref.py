"""What `load("…")` names: a local adapter folder or an adapter on the Hugging Face Hub (SPEC §7.5).

Two spellings name a Hub adapter:

- `hf://ORG/NAME[@REVISION][/SUBFOLDER]`, read with huggingface_hub's own `hf://` parser
  (`huggingface_hub.utils.parse_hf_uri`, 2.x), so dipm agrees with every other HF tool on the
  grammar: a revision with `/` is written `%2F` (`@exp%2Fv2`), and the Hub's special refs
  (`@refs/pr/3`, `@refs/convert/…`) may also be written as they are;
- a bare `ORG/NAME` matching `^[A-Za-z0-9][\\w.-]*/[\\w.-]+$`, only when no such local path exists
  (PEFT's rule in `PeftConfig.from_pretrained`: a local folder always wins) — and, dipm's one
  refinement, when no local folder `ORG` exists either: `adapters/helpfull` next to a folder
  `adapters/` is a typo of a local path, answered with the near names, not a request to the Hub
  (`hf://adapters/helpfull` still means the Hub).

Anything else is a local path; a missing one that is not a Hub id either is an error naming both
readings. Parsing touches no network; only the bare-id rule looks at the file system.

`hub_input` is what the language uses (`load("…")`, `--set`, configs, the API, the REPL): the Hub
adapter a string names, or None for a local path, with the errors said where the string was
written — exit 2 for a malformed `hf://` id, and for a Hub id when huggingface_hub is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from dipm_lang.errors import AdapterError, PathError, Span, UsageError
from dipm_lang.safety.files import path_problem

HF_SCHEME = "hf://"
DEFAULT_REVISION = "main"  # what huggingface_hub uses when no revision is given
BARE_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # SPEC §7.5, PEFT's reading of a repo id
FORMS = "a local adapter folder, ORG/NAME, or hf://ORG/NAME[@REVISION][/SUBFOLDER]"


@dataclass(frozen=True)
class LocalPath:
    """A local adapter folder (`base_dir / text`; it exists)."""

    path: Path


@dataclass(frozen=True)
class HubRef:
    """An adapter in a Hub model repo: `repo_id` at `revision` (None: the default branch), in `subfolder`."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None
    # Written as a bare ORG/NAME (no local folder of that name existed): errors then name both readings.
    bare: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        """The canonical spelling, for display and provenance: `hf://org/name@rev/sub`."""
        text = HF_SCHEME + self.repo_id
        if self.revision is not None:
            text += "@" + encode_revision(self.revision)
        if self.subfolder:
            text += "/" + self.subfolder
        return text

    @property
    def revision_or_default(self) -> str:
        return self.revision if self.revision is not None else DEFAULT_REVISION

    def repo_path(self, name: str) -> str:
        """The path of file `name` in the repo (inside the subfolder)."""
        return f"{self.subfolder}/{name}" if self.subfolder else name

    def at(self, revision: str) -> HubRef:
        """The same adapter at another revision (e.g. pinned to its resolved commit)."""
        return replace(self, revision=revision)


def encode_revision(revision: str) -> str:
    """`/` as `%2F` (SPEC §7.5), and `%` as `%25` so that the parser's unquoting gives it back."""
    return revision.replace("%", "%25").replace("/", "%2F")


def parse_source(text: str, *, base_dir: Path) -> LocalPath | HubRef:
    """Read a `load()` argument: a local folder or a Hub adapter (see the module docstring).

    Raises `AdapterError` (exit 1) for a malformed `hf://` id and for a string that is neither an
    existing local path nor a Hub id.
    """
    if text.startswith(HF_SCHEME):
        return parse_hub_uri(text)
    if not text:
        raise AdapterError("an empty string names no adapter", text, hint=f"give {FORMS}")
    local = Path(base_dir) / text
    if local.exists():
        return LocalPath(local)
    org = local_org(text, base_dir) if BARE_ID.fullmatch(text) else None
    if org is not None:
        raise AdapterError(f"no adapter folder '{local}' exists", text,
                           hint=f"'{org}' is a local folder, so '{text}' names a folder in it; for the Hugging "
                                f"Face Hub adapter write hf://{text}")
    problem = bare_id_problem(text)
    if problem is None:
        return HubRef(text, bare=True)
    raise AdapterError(
        f"no adapter folder '{local}' exists, and '{text}' is not a Hugging Face Hub id either ({problem})",
        text, hint=f"give {FORMS}")


def is_hub_path(path: object) -> bool:
    """Whether a program's load path names a Hub adapter (the lowering writes them as `hf://…`)."""
    return isinstance(path, str) and path.startswith(HF_SCHEME)


def local_org(text: str, base_dir: Path) -> Path | None:
    """For a bare `ORG/NAME` with no such local path: the local folder `ORG`, when there is one
    (then the string names a folder in it: dipm's refinement of PEFT's rule, module docstring)."""
    org = Path(base_dir) / text.split("/", 1)[0]
    return org if org.is_dir() else None


def hub_input(text: str, *, base_dir: Path, span: Span | None = None) -> HubRef | None:
    """The Hub adapter `text` names (written in a file of `base_dir`), or None for a local path.

    `hf://…` always names the Hub; a bare `ORG/NAME` does when neither that path nor the folder
    `ORG` exists under `base_dir` and it is a valid repo id (module docstring). Raises
    `PathError` (exit 2, at `span`) for a malformed `hf://` id and `UsageError` (exit 2) when
    huggingface_hub, which reads Hub ids, is missing.
    """
    if text.startswith(HF_SCHEME):
        require_library(text, span)
        try:
            return parse_hub_uri(text)
        except AdapterError as error:
            raise PathError(f"{text!r:.200}: {error.message}", span, hint=error.hint) from None
    if not BARE_ID.fullmatch(text) or path_problem(text) is not None:
        return None
    local = Path(base_dir) / text
    if local.exists() or local.is_symlink() or local_org(text, base_dir) is not None:
        return None
    require_library(text, span, bare=f"no local folder '{local}' exists, so ")
    return HubRef(text, bare=True) if bare_id_problem(text) is None else None


LIBRARY = "huggingface_hub>=2.4"
INSTALL = "pip install 'dipm_lang[hub]' (it installs huggingface_hub>=2.4)"


def library_problem() -> str | None:
    """Why Hub ids cannot be read here (huggingface_hub missing, or older than its 2.x API), or None."""
    try:
        import huggingface_hub
    except ImportError:
        return "huggingface_hub is not installed"
    try:
        from huggingface_hub.utils import parse_hf_uri  # noqa: F401 - the 2.x API dipm relies on
    except ImportError:
        return f"huggingface_hub {getattr(huggingface_hub, '__version__', '?')} is installed"
    return None


def require_library(text: str, span: Span | None, *, bare: str = "") -> None:
    """A `UsageError` (exit 2, at `span`) naming the Hub id when huggingface_hub cannot read it."""
    problem = library_problem()
    if problem is not None:
        raise UsageError(f"{bare}'{text}' names an adapter on the Hugging Face Hub, which needs {LIBRARY}; "
                         f"{problem}", span, hint=INSTALL)


def bare_id_problem(text: str) -> str | None:
    """Why `text` is not a bare Hub id, or None when it is one."""
    if not BARE_ID.fullmatch(text):
        return "a Hub id is ORG/NAME: letters, digits, '_', '.', '-', starting with a letter or digit"
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)  # the Hub's own limits: no '--' or '..', at most 96 characters
    except HFValidationError as error:
        return str(error).rstrip(".")
    return None


def parse_hub_uri(text: str) -> HubRef:
    """Read `hf://ORG/NAME[@REVISION][/SUBFOLDER]` with huggingface_hub's parser, then check what an
    adapter id adds: a model repo, a revision and a subfolder that cannot step out of the repo."""
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    hint = "write hf://ORG/NAME, hf://ORG/NAME@REVISION or hf://ORG/NAME@REVISION/SUBFOLDER (a '/' in REVISION as %2F)"
    try:
        uri = parse_hf_uri(text)
    except HfUriError as error:
        raise AdapterError(f"not a valid Hub id: {error.msg.strip()}", text, hint=hint) from None
    if uri.type != "model":
        raise AdapterError(f"adapters live in model repos; this names a {uri.type}", text, hint=hint)
    revision = uri.revision
    if revision is not None and _bad_segments(revision):
        raise AdapterError(f"'{revision}' is not a valid revision (empty, '.' or '..' parts)", text, hint=hint)
    subfolder = uri.path_in_repo.strip("/") or None
    if subfolder is not None:
        if "@" in subfolder:
            raise AdapterError(f"'@' in the subfolder '{subfolder}': the revision goes right after the name",
                               text, hint=hint)
        if "\\" in subfolder or _bad_segments(subfolder):
            raise AdapterError(f"'{subfolder}' is not a valid subfolder ('.', '..' or '\\' parts)", text, hint=hint)
    return HubRef(uri.id, revision, subfolder)


def _bad_segments(path: str) -> bool:
    return any(part in ("", ".", "..") for part in path.split("/"))
