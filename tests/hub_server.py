"""A fake Hugging Face Hub on 127.0.0.1 that answers the HTTP calls huggingface_hub 2.x makes.

Read from huggingface_hub 2.4.0 (`hf_api.py`, `file_download.py`, `_snapshot_download.py`,
`utils/_http.py::hf_raise_for_status`), these are the calls `resolve_revision`, `snapshot_download`
and `hf_hub_download` send, and what they need back:

- `GET  /api/models/{org}/{name}[/revision/{rev}]` — repo info (`model_info`); `sha` is the commit.
- `GET  /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=…` — the file listing
  (`list_repo_tree`; one page, no `Link: next`).
- `HEAD /{org}/{name}/resolve/{rev}/{path}` — file metadata (`get_hf_file_metadata`): `X-Repo-Commit`
  and `ETag` always; a large ("LFS") file answers `302` to the CDN with `X-Linked-Etag` (its sha256)
  and `X-Linked-Size`, as the real Hub does.
- `GET  /{org}/{name}/resolve/{rev}/{path}` — a small file's bytes.
- `GET  {cdn}/blobs/{sha256}` — a large file's bytes. The CDN is a second port, so a different
  origin: huggingface_hub then drops the `Authorization` header, as it must for the real CDN.

Errors carry the headers `hf_raise_for_status` maps: `X-Error-Code: RepoNotFound` (401 without a
token, 404 with one, as the Hub hides private repos), `RevisionNotFound`, `EntryNotFound` (with
`X-Repo-Commit`), `GatedRepo` (401 without a token, 403 with one not granted access), and a 401
with `X-Error-Message: Invalid credentials in Authorization header` for an unknown token.

`revision` names are refs (branches or tags, `/` allowed: `exp/v2`); the full 40-hex commit of a
revision is accepted too. Every request is logged in `requests` (method, path, origin, token).

Point huggingface_hub at it per call with `endpoint=hub.url` (every download function and `HfApi`
take it), or, for a subprocess, with `HF_ENDPOINT` in its environment (`hub.environ(hf_home)`):
huggingface_hub reads `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` once, when it is
imported (`huggingface_hub.constants`).

Written by hand with `http.server` (stdlib): no mock-HTTP library answers at the socket level that
a real httpx client in the code under test needs, and this one is small.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")  # the Hub's default .gitattributes
INVALID_TOKEN = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class Logged:
    """One request the fake Hub received."""

    method: str
    path: str  # decoded: `/acme/x/resolve/main/adapter_config.json`, `/blobs/<sha256>`
    origin: str  # "hub" or "cdn"
    token: str | None  # the Bearer token sent, if any

    @property
    def file(self) -> str | None:
        """The repo file a `resolve` request asked for (None for API and CDN calls)."""
        parts = self.path.split("/", 5)
        return parts[5] if len(parts) == 6 and parts[3] == "resolve" else None


@dataclass
class FakeRepo:
    repo_id: str
    refs: dict[str, str]  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]]  # commit -> {path: bytes}
    gated: bool = False
    private: bool = False
    allowed_tokens: frozenset[str] = frozenset()


def folder_files(folder: str | Path) -> dict[str, bytes]:
    """Every file under `folder`, by its `/`-separated path relative to it."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def under(prefix: str, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """`files` moved into the folder `prefix` of a repo."""
    return {f"{prefix}/{name}": data for name, data in files.items()}


def isolate_login(monkeypatch, folder: Path) -> None:
    """No token of this machine's (HF_TOKEN, a stored `hf auth login`) in a test: the stored-login
    files huggingface_hub reads are moved to `folder`, which does not exist yet."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(folder / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(folder / "stored_tokens"))


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file: what the Hub sends as a small file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """The fake Hub: add repos, `start()` (or `with`), point huggingface_hub at `url`, `stop()`."""

    valid_tokens: frozenset[str] = frozenset()
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[Logged] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._servers: list[ThreadingHTTPServer] = []

    # --- content -------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, revisions: Mapping[str, str | Path | Mapping[str, bytes]], *,
                 tags: Mapping[str, str] | None = None, gated: bool = False, private: bool = False,
                 allowed_tokens: Iterable[str] = ()) -> dict[str, str]:
        """Add a model repo; `revisions` maps each branch to a folder or `{path: bytes}`, `tags` maps
        a tag to the branch it points at. Returns each ref's commit sha."""
        repo = FakeRepo(repo_id, {}, {}, gated, private, frozenset(allowed_tokens))
        for ref, content in revisions.items():
            files = dict(content) if isinstance(content, Mapping) else folder_files(content)
            digest = hashlib.sha1(repo_id.encode() + b"\0" + ref.encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
            commit = digest.hexdigest()
            repo.refs[ref] = commit
            repo.commits[commit] = files
            for data in files.values():
                self._blobs[hashlib.sha256(data).hexdigest()] = data
        for tag, branch in (tags or {}).items():
            repo.refs[tag] = repo.refs[branch]
        self.repos[repo_id] = repo
        return dict(repo.refs)

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id].refs[revision]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs.get(revision, revision)]

    # --- serving -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return _server_url(self._servers[0])

    @property
    def cdn_url(self) -> str:
        return _server_url(self._servers[1])

    def start(self) -> FakeHub:
        """Listen on two free ports of 127.0.0.1 (the Hub and its CDN), each served by a thread."""
        for origin in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub, server.origin = self, origin  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             name=f"fake-hf-{origin}", daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environ(self, hf_home: str | Path) -> dict[str, str]:
        """Environment variables that point a fresh process's huggingface_hub at this Hub, with its
        cache (and token file) under `hf_home` and no token from the environment."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_UPDATE_CHECK": "1"}

    def requested_files(self, repo_id: str | None = None) -> list[str]:
        """The repo files fetched through `resolve` (HEAD or GET), in order."""
        return [r.file for r in self.requests if r.file is not None
                and (repo_id is None or r.path.startswith(f"/{repo_id}/resolve/"))]

    # --- answers (called by the handler) ---------------------------------------------------------

    def answer(self, method: str, raw_path: str, origin: str, token: str | None) -> _Answer:
        split = urlsplit(raw_path)
        parts = split.path.split("/")  # still percent-encoded: a revision's %2F stays in its part
        decoded = "/".join(unquote(p) for p in parts)
        self.requests.append(Logged(method, decoded, origin, token))
        if origin == "cdn":  # signed URLs in reality: no token needed (huggingface_hub sends none)
            data = self._blobs.get(parts[-1]) if len(parts) == 3 and parts[1] == "blobs" else None
            return _Answer(200, {"Content-Type": "application/octet-stream"}, data) if data is not None \
                else _error(404, None, "No such blob")
        if token is not None and token not in self.valid_tokens:
            return _error(401, None, INVALID_TOKEN)
        if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models":
            return self._api(f"{unquote(parts[3])}/{unquote(parts[4])}", parts[5:], token,
                             parse_qs(split.query))
        if len(parts) >= 6 and parts[3] == "resolve":
            return self._resolve(f"{unquote(parts[1])}/{unquote(parts[2])}", unquote(parts[4]),
                                 unquote("/".join(parts[5:])), token, head=method == "HEAD")
        return _error(404, None, "Not found")

    def _repo(self, repo_id: str, token: str | None) -> FakeRepo | _Answer:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.allowed_tokens):
            return _error(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: FakeRepo, revision: str) -> str | _Answer:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _api(self, repo_id: str, rest: list[str], token: str | None, query: dict[str, list[str]]) -> _Answer:
        repo = self._repo(repo_id, token)
        if isinstance(repo, _Answer):
            return repo
        kind, revision = ("info", "main") if not rest else (rest[0], unquote(rest[1]) if len(rest) > 1 else "")
        commit = self._commit(repo, revision)
        if isinstance(commit, _Answer):
            return commit
        files = repo.commits[commit]
        if kind == "revision" and len(rest) == 2 or kind == "info":
            return _json({"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit,
                          "private": repo.private, "gated": "manual" if repo.gated else False,
                          "disabled": False, "tags": [], "siblings": [{"rfilename": p} for p in files]})
        if kind == "tree":
            prefix = unquote("/".join(rest[2:])).strip("/")
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries = _tree(files, prefix, recursive)
            if prefix and not entries:
                return _error(404, "EntryNotFound", f"{prefix} does not exist on \"{revision}\"")
            return _json(entries)
        return _error(404, None, "Not found")

    def _resolve(self, repo_id: str, revision: str, path: str, token: str | None, *, head: bool) -> _Answer:
        repo = self._repo(repo_id, token)
        if isinstance(repo, _Answer):
            return repo
        commit = self._commit(repo, revision)
        if isinstance(commit, _Answer):
            return commit
        if repo.gated and token not in repo.allowed_tokens:
            if token is None:
                return _error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                              "to it and be authenticated to access it. Please log in.")
            return _error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                          f"authorized list. Visit {self.url}/{repo_id} to ask for access.")
        data = repo.commits[commit].get(path)
        if data is None:
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"',
                   "Content-Type": "application/octet-stream"}
        if path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                            "Location": f"{self.cdn_url}/blobs/{sha256}"})
            return _Answer(302, headers, b"")
        return _Answer(200, headers, data)


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes | None


def _json(value: object) -> _Answer:
    return _Answer(200, {"Content-Type": "application/json"}, json.dumps(value).encode())


def _error(status: int, code: str | None, message: str, extra: Mapping[str, str] | None = None) -> _Answer:
    headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
    if code is not None:
        headers["X-Error-Code"] = code
    return _Answer(status, headers, json.dumps({"error": message}).encode())


def _tree(files: Mapping[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """The `/tree` answer: files and folders under `prefix` (all depths when `recursive`)."""
    start = f"{prefix}/" if prefix else ""
    entries: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(start):
            continue
        parts = path[len(start):].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
            folder = start + "/".join(parts[:i])
            entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                        "size": 0, "path": folder})
        if len(parts) <= depth:
            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries[path] = entry
    return list(entries.values())


def _server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to `FakeHub.answer`; HTTP/1.0, so each answer closes its connection."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply("HEAD")

    def _reply(self, method: str) -> None:
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        answer = self.server.hub.answer(method, self.path, self.server.origin, token)  # type: ignore[attr-defined]
        body = answer.body or b""
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass
