"""Hub adapter inputs (SPEC §7.5) against a fake Hub on 127.0.0.1 (`hub_server.FakeHub`).

The real huggingface_hub download path runs end to end; nothing leaves the machine. In-process
tests pass `endpoint=` and `cache_dir=` (huggingface_hub takes both per call) and switch offline
mode by patching `huggingface_hub.constants.HF_HUB_OFFLINE`, the value `is_offline_mode()` reads;
the subprocess tests set HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE before huggingface_hub is imported,
as a user does.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, hf_hub_download

from dipm_lang.errors import AdapterError
from dipm_lang.io.hub import cached, cached_adapter_ids, describe, is_cached, resolve
from dipm_lang.io.hub_ref import HubRef, LocalPath, parse_source
from hub_server import FakeHub, folder_files, isolate_login, under

ADAPTER = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
GRANTED, OTHER = "hf_granted_token", "hf_other_token"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hub(peft_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The fake Hub with every kind of repo the tests need, serving for the whole module."""
    basic, rslora, wide = (folder_files(peft_adapters[n]) for n in ("basic", "rslora", "wide"))
    pickled = tmp_path_factory.mktemp("pickle") / "adapter_model.bin"
    torch.save({"base_model.model.x.lora_A.weight": torch.ones(2, 3)}, pickled)
    extras = {"training_args.bin": b"not an adapter file", "optimizer.pt": b"state",
              "checkpoint-10/adapter_config.json": basic["adapter_config.json"],
              "checkpoint-10/adapter_model.safetensors": basic["adapter_model.safetensors"]}
    fake = FakeHub(valid_tokens=frozenset({GRANTED, OTHER}))
    fake.add_repo("acme/style-lora", {"main": {**basic, **extras}, "exp/v2": rslora}, tags={"v1": "main"})
    fake.add_repo("acme/multi", {"main": {**under("task_a", basic), **under("task_b", wide),
                                          **under("exp[1]", basic), **under("exp1", rslora),
                                          "README.md": b"# two adapters"}})
    fake.add_repo("acme/tiny-llama", {"main": {"config.json": b"{}", "model.safetensors": b"weights",
                                               "tokenizer.json": b"{}", "README.md": b"# a model"}})
    fake.add_repo("acme/gated-lora", {"main": basic}, gated=True, allowed_tokens={GRANTED})
    fake.add_repo("acme/private-lora", {"main": basic}, private=True, allowed_tokens={GRANTED})
    fake.add_repo("acme/pickle-lora", {"main": {"adapter_config.json": basic["adapter_config.json"],
                                                "adapter_model.bin": pickled.read_bytes()}})
    fake.add_repo("acme/both-lora", {"main": {**basic, "adapter_model.bin": pickled.read_bytes()}})
    fake.add_repo("acme/no-weights", {"main": {"adapter_config.json": basic["adapter_config.json"]}})
    fake.sources = {"basic": basic, "rslora": rslora, "wide": wide}  # type: ignore[attr-defined]
    with fake:
        yield fake


@pytest.fixture(autouse=True)
def isolated_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Online mode, and no token of this machine's (HF_TOKEN, a stored login) in any test."""
    isolate_login(monkeypatch, tmp_path / "login")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf" / "hub"


@pytest.fixture
def fetch(hub: FakeHub, cache: Path):
    """`resolve` against the fake Hub into this test's empty cache; the request log starts empty."""
    hub.requests.clear()

    def run(ref: HubRef | str, **options):
        ref = parse_source(ref, base_dir=cache) if isinstance(ref, str) else ref
        return resolve(ref, cache_dir=cache, endpoint=options.pop("endpoint", hub.url), progress=False, **options)

    return run


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _snapshots(cache: Path) -> list[Path]:
    return sorted(cache.glob("models--*/snapshots/*"))


# --- downloading --------------------------------------------------------------------------------

def test_download_fetches_exactly_the_adapter_files_into_the_hf_cache(hub, fetch, cache):
    got = fetch("hf://acme/style-lora")
    commit = hub.commit("acme/style-lora")
    assert got.commit == commit
    assert got.folder == cache / "models--acme--style-lora" / "snapshots" / commit
    assert {p.name for p in got.folder.iterdir()} == ADAPTER  # no training_args.bin, optimizer.pt, checkpoint-10/
    assert _bytes(got.folder) == {n: hub.sources["basic"][n] for n in ADAPTER}
    assert (got.config_file.name, got.weights_file.name, got.readme_file.name) == \
        ("adapter_config.json", "adapter_model.safetensors", "README.md")
    assert (cache / "models--acme--style-lora" / "refs" / "main").read_text() == commit
    assert got.provenance() == {"source": "hf://acme/style-lora", "repo_id": "acme/style-lora",
                                "revision": "main", "subfolder": None, "commit": commit}
    assert str(got.pinned) == f"hf://acme/style-lora@{commit}"
    assert sorted(set(hub.requested_files())) == sorted(ADAPTER)


def test_large_files_come_from_the_cdn_without_the_token(hub, fetch):
    got = fetch("hf://acme/gated-lora", token=GRANTED)
    assert _bytes(got.folder) == {n: hub.sources["basic"][n] for n in ADAPTER}
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert len(cdn) == 1 and cdn[0].token is None  # huggingface_hub drops Authorization off the Hub
    assert {r.token for r in hub.requests if r.origin == "hub"} == {GRANTED}


def test_second_resolve_offline_uses_the_cache_alone(hub, fetch, monkeypatch):
    first = fetch("hf://acme/style-lora@exp%2Fv2")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    hub.requests.clear()
    again = fetch("hf://acme/style-lora@exp%2Fv2")
    assert hub.requests == []
    assert (again.commit, again.folder, again.files) == (first.commit, first.folder, first.files)
    assert again.commit == hub.commit("acme/style-lora", "exp/v2")


@pytest.mark.parametrize("switch", ["argument", "HF_HUB_OFFLINE"])
def test_offline_with_an_empty_cache_says_how_to_fill_it(hub, fetch, cache, monkeypatch, switch):
    if switch == "HF_HUB_OFFLINE":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterError) as caught:
        fetch("hf://acme/multi@exp%2Fv2/task_a", offline=True if switch == "argument" else None)
    error = caught.value
    assert error.path == "hf://acme/multi@exp%2Fv2/task_a"
    assert "not in the Hugging Face cache" in error.message and str(cache) in error.message
    assert ("HF_HUB_OFFLINE=1" in error.message) == (switch == "HF_HUB_OFFLINE")
    assert ("hf download acme/multi --revision exp/v2 --include 'task_a/adapter_*' "
            f"--include task_a/README.md --cache-dir {cache}") in error.hint
    assert hub.requests == []


def test_revisions_branch_with_slash_tag_and_commit(hub, fetch):
    branch = fetch("hf://acme/style-lora@exp%2Fv2")
    assert branch.commit == hub.commit("acme/style-lora", "exp/v2") != hub.commit("acme/style-lora")
    assert _bytes(branch.folder) == {n: hub.sources["rslora"][n] for n in ADAPTER}
    assert fetch("hf://acme/style-lora@v1").commit == hub.commit("acme/style-lora")
    pinned = fetch(f"hf://acme/style-lora@{branch.commit}")
    assert (pinned.commit, pinned.folder) == (branch.commit, branch.folder)


def test_subfolder_fetches_only_that_folder(hub, fetch):
    got = fetch("hf://acme/multi/task_b")
    assert got.folder.name == "task_b" and got.folder.parent.name == hub.commit("acme/multi")
    assert [p.name for p in got.folder.parent.iterdir()] == ["task_b"]  # nothing from the root or task_a
    assert _bytes(got.folder) == {n: hub.sources["wide"][n] for n in ADAPTER}
    assert sorted(set(hub.requested_files())) == sorted(f"task_b/{n}" for n in ADAPTER)
    # A subfolder name with glob characters is matched literally (exp1/ holds another adapter).
    odd = fetch("hf://acme/multi/exp[1]")
    assert _bytes(odd.folder) == {n: hub.sources["basic"][n] for n in ADAPTER}


def test_pickle_only_repo_fetches_the_bin_and_safetensors_wins_otherwise(hub, fetch):
    only_bin = fetch("hf://acme/pickle-lora")
    assert only_bin.weights_file.name == "adapter_model.bin"
    assert only_bin.weights_file.read_bytes() == hub.files("acme/pickle-lora")["adapter_model.bin"]
    assert only_bin.readme_file is None
    hub.requests.clear()
    both = fetch("hf://acme/both-lora")
    assert both.weights_file.name == "adapter_model.safetensors"
    assert "adapter_model.bin" not in hub.requested_files() and not (both.folder / "adapter_model.bin").exists()


@pytest.mark.parametrize("how", ["argument", "HF_TOKEN", "stored login"])
def test_gated_repo_with_a_granted_token(hub, fetch, monkeypatch, how):
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", GRANTED)
    elif how == "stored login":
        Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True)
        Path(constants.HF_TOKEN_PATH).write_text(GRANTED)
    got = fetch("hf://acme/gated-lora", **({"token": GRANTED} if how == "argument" else {}))
    assert got.commit == hub.commit("acme/gated-lora")
    assert fetch("hf://acme/private-lora", **({"token": GRANTED} if how == "argument" else {})).commit == \
        hub.commit("acme/private-lora")


def test_network_failure_falls_back_to_the_cache(hub, fetch):
    filled = fetch("hf://acme/style-lora")
    again = fetch("hf://acme/style-lora", endpoint=_dead_endpoint())
    assert (again.commit, again.files) == (filled.commit, filled.files)


def test_a_cache_filled_by_another_tool_costs_one_request(hub, fetch, cache):
    """Files put in the cache one by one (as `hf download ID FILE…` or transformers do: no listing
    kept) are used as they are: online only the revision is looked up, and a dead network is fine."""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        hf_hub_download("acme/style-lora", name, cache_dir=cache, endpoint=hub.url)
    hub.requests.clear()
    online = fetch("hf://acme/style-lora")
    assert [(r.method, r.path) for r in hub.requests] == [("GET", "/api/models/acme/style-lora")]
    assert online.commit == hub.commit("acme/style-lora") and online.readme_file is None
    assert _bytes(online.folder) == {n: hub.sources["basic"][n] for n in ADAPTER - {"README.md"}}
    cut_off = fetch("hf://acme/style-lora", endpoint=_dead_endpoint())
    assert cut_off == online


# --- errors -------------------------------------------------------------------------------------

def _dead_endpoint() -> str:
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


ERRORS = [  # (source, resolve options, words in the message, words in the hint)
    ("hf://acme/nope", {}, ["repository 'acme/nope' not found"], ["private", "hf auth login", "HF_TOKEN"]),
    ("acme/nope", {}, ["not found", "no local folder 'acme/nope'"], ["hf auth login"]),
    ("hf://acme/style-lora@nope", {}, ["revision 'nope' not found in 'acme/style-lora'"], ["%2F"]),
    ("hf://acme/gated-lora", {}, ["gated repository", "/acme/gated-lora"], ["hf auth login", "HF_TOKEN"]),
    ("hf://acme/gated-lora", {"token": OTHER}, ["no access to the gated repository 'acme/gated-lora'"],
     ["request access"]),
    ("hf://acme/style-lora", {"token": "hf_made_up"}, ["refused the token", "Invalid credentials"],
     ["hf auth login"]),
    ("hf://acme/private-lora", {}, ["repository 'acme/private-lora' not found"], ["private", "hf auth login"]),
    ("hf://acme/tiny-llama", {}, ["full model", "config.json", "model.safetensors", "no adapter_config.json"], []),
    ("hf://acme/multi", {}, ["adapters are in subfolders"],
     ["hf://acme/multi/exp1", "hf://acme/multi/task_a", "hf://acme/multi/task_b"]),
    ("hf://acme/multi/task_c", {}, ["no subfolder 'task_c' in 'acme/multi'"],
     ["hf://acme/multi/task_a", "hf://acme/multi/task_b"]),
    ("hf://acme/no-weights", {}, ["neither adapter_model.safetensors nor adapter_model.bin"], []),
    ("hf://acme/style-lora", {"endpoint": "dead"}, ["could not reach the Hub at http://127.0.0.1:",
                                                    "Connection refused", "not in the cache"], ["HF_HUB_OFFLINE=1"]),
]


@pytest.mark.parametrize(("source", "options", "said", "hinted"), ERRORS, ids=[f"{e[0]}-{e[1]}" for e in ERRORS])
def test_errors_name_the_id_and_say_what_to_do(fetch, cache, caplog, source, options, said, hinted):
    if options.get("endpoint") == "dead":
        options = {**options, "endpoint": _dead_endpoint()}
    with pytest.raises(AdapterError) as caught:
        fetch(source, **options)
    error = caught.value
    assert error.path == str(parse_source(source, base_dir=cache)) and error.exit_code == 1
    for words in said:
        assert words in error.message
    for words in hinted:
        assert words in (error.hint or "")
    assert not [p for p in _snapshots(cache) if any(p.rglob("adapter_model.*"))]  # no weights were kept
    assert "No files matched" not in caplog.text  # snapshot_download's warning, made moot by the message


def test_offline_diagnoses_a_cached_full_model_listing(hub, fetch, monkeypatch):
    with pytest.raises(AdapterError, match="full model"):
        fetch("hf://acme/tiny-llama")  # online: the listing is now in the cache, no adapter file is
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterError, match="full model"):
        fetch("hf://acme/tiny-llama")


# --- parsing ------------------------------------------------------------------------------------

PARSED = [  # text, (repo_id, revision, subfolder), canonical form
    ("hf://acme/style-lora", ("acme/style-lora", None, None), "hf://acme/style-lora"),
    ("hf://acme/style-lora@v1", ("acme/style-lora", "v1", None), "hf://acme/style-lora@v1"),
    ("hf://acme/style-lora@exp%2Fv2/sub/dir", ("acme/style-lora", "exp/v2", "sub/dir"),
     "hf://acme/style-lora@exp%2Fv2/sub/dir"),
    ("hf://acme/style-lora@refs/pr/3/sub", ("acme/style-lora", "refs/pr/3", "sub"),
     "hf://acme/style-lora@refs%2Fpr%2F3/sub"),
    ("hf://models/acme/style-lora/", ("acme/style-lora", None, None), "hf://acme/style-lora"),
    ("hf://acme/x.y_z-1@50%25", ("acme/x.y_z-1", "50%", None), "hf://acme/x.y_z-1@50%25"),
    ("acme/style-lora", ("acme/style-lora", None, None), "hf://acme/style-lora"),
]


@pytest.mark.parametrize(("text", "fields", "canonical"), PARSED)
def test_parse_hub_ids_and_round_trip(tmp_path, text, fields, canonical):
    ref = parse_source(text, base_dir=tmp_path)
    assert isinstance(ref, HubRef) and (ref.repo_id, ref.revision, ref.subfolder) == fields
    assert ref.bare == (not text.startswith("hf://"))
    assert str(ref) == canonical and parse_source(canonical, base_dir=tmp_path) == ref


BAD = [  # text, words in the message
    ("hf://", "Empty body"), ("hf://acme", "namespace/name"), ("hf://acme/x@", "Empty revision"),
    ("hf://acme/x/../y", "not a valid subfolder"), ("hf://acme/x@a%2F..%2Fb", "not a valid revision"),
    ("hf://datasets/acme/x", "model repos"), ("hf://acme/x/sub@v1", "the revision goes right after the name"),
    ("hf://acme/x--y", "--"), ("hf://acme/x/a//b", "empty segments"),
    ("acme/x/y", "not a Hugging Face Hub id"), ("-acme/x", "not a Hugging Face Hub id"),
    ("just-a-name", "not a Hugging Face Hub id"), ("acme/x..y", "not a Hugging Face Hub id"), ("", "empty"),
]


@pytest.mark.parametrize(("text", "words"), BAD)
def test_parse_errors(tmp_path, text, words):
    with pytest.raises(AdapterError) as caught:
        parse_source(text, base_dir=tmp_path)
    assert words in caught.value.message and caught.value.exit_code == 1
    if text and not text.startswith("hf://"):  # both readings named
        assert f"no adapter folder '{tmp_path / text}'" in caught.value.message


def test_an_existing_local_folder_wins_over_the_bare_id(tmp_path):
    assert isinstance(parse_source("acme/style-lora", base_dir=tmp_path), HubRef)
    (tmp_path / "acme").mkdir()  # a local folder ORG: ORG/NAME is a path in it (a typo, not the Hub)
    with pytest.raises(AdapterError) as caught:
        parse_source("acme/style-lora", base_dir=tmp_path)
    assert caught.value.message == f"no adapter folder '{tmp_path / 'acme' / 'style-lora'}' exists"
    assert "write hf://acme/style-lora" in caught.value.hint
    (tmp_path / "acme" / "style-lora").mkdir()
    assert parse_source("acme/style-lora", base_dir=tmp_path) == LocalPath(tmp_path / "acme" / "style-lora")
    assert isinstance(parse_source("hf://acme/style-lora", base_dir=tmp_path), HubRef)  # explicit: always the Hub
    (tmp_path / "odd name").mkdir()
    assert parse_source("odd name", base_dir=tmp_path) == LocalPath(tmp_path / "odd name")


# --- cache queries ------------------------------------------------------------------------------

def test_cache_queries_need_no_network(hub, fetch, cache):
    main, branch, sub = (parse_source(t, base_dir=cache) for t in
                         ("hf://acme/style-lora", "hf://acme/style-lora@exp%2Fv2", "hf://acme/multi/task_a"))
    assert not is_cached(main, cache_dir=cache) and cached_adapter_ids(cache_dir=cache) == []
    status = describe(main, cache_dir=cache)
    assert (status.cached, status.commit) == (False, None) and "not cached" in str(status)
    fetched = {ref: fetch(ref) for ref in (main, branch, sub)}
    hub.requests.clear()
    assert all(is_cached(ref, cache_dir=cache) for ref in fetched)
    assert cached(main, cache_dir=cache) == fetched[main]
    assert not is_cached(HubRef("acme/style-lora", "v1"), cache_dir=cache)  # a ref never fetched
    assert is_cached(HubRef("acme/style-lora", fetched[branch].commit), cache_dir=cache)
    status = describe(branch, cache_dir=cache)
    assert status.cached and status.commit == hub.commit("acme/style-lora", "exp/v2")
    assert str(status) == (f"hf://acme/style-lora@exp%2Fv2: revision exp/v2 = commit {status.commit[:12]}, "
                           f"cached in {fetched[branch].folder}")
    assert cached_adapter_ids(cache_dir=cache) == ["hf://acme/multi/task_a", "hf://acme/style-lora",
                                                   "hf://acme/style-lora@exp%2Fv2"]
    assert hub.requests == []


def test_progress_bars_go_to_stderr_and_can_be_turned_off(hub, cache, capsys):
    resolve(HubRef("acme/style-lora"), cache_dir=cache, endpoint=hub.url)
    shown = capsys.readouterr()
    assert shown.out == "" and "Fetching 3 files" in shown.err
    resolve(HubRef("acme/multi", subfolder="task_a"), cache_dir=cache, endpoint=hub.url, progress=False)
    assert capsys.readouterr() == ("", "")


# --- the environment, as users set it -----------------------------------------------------------

SCRIPT = """
import json, sys
from pathlib import Path
from dipm_lang.errors import AdapterError, render
from dipm_lang.io.hub import resolve
from dipm_lang.io.hub_ref import parse_source
try:
    got = resolve(parse_source(sys.argv[1], base_dir=Path.cwd()))
except AdapterError as error:
    print(render(error), file=sys.stderr)
    sys.exit(error.exit_code)
print(json.dumps({"commit": got.commit, "folder": str(got.folder)}))
"""


def _environ(hub: FakeHub, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(hub.environ(home), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _run(hub: FakeHub, home: Path, *, offline: bool) -> subprocess.CompletedProcess:
    env = _environ(hub, home) | ({"HF_HUB_OFFLINE": "1"} if offline else {})
    return subprocess.run([sys.executable, "-c", SCRIPT, "hf://acme/style-lora@exp%2Fv2"], env=env,
                          cwd=home.parent, capture_output=True, text=True, timeout=60)


def test_hf_endpoint_home_and_offline_from_the_environment(hub, tmp_path):
    hub.requests.clear()
    online = _run(hub, tmp_path / "home", offline=False)
    assert online.returncode == 0, online.stderr
    got = json.loads(online.stdout)
    assert got["commit"] == hub.commit("acme/style-lora", "exp/v2")
    assert Path(got["folder"]) == tmp_path / "home" / "hub" / "models--acme--style-lora" / "snapshots" / got["commit"]
    assert sorted(set(hub.requested_files())) == sorted(ADAPTER)
    hub.requests.clear()
    empty = _run(hub, tmp_path / "other-home", offline=True)
    assert empty.returncode == 1 and empty.stdout == "" and hub.requests == []
    assert empty.stderr.startswith("hf://acme/style-lora@exp%2Fv2: error: not in the Hugging Face cache "
                                   f"({tmp_path / 'other-home' / 'hub'}), and HF_HUB_OFFLINE=1 is set")
    assert "Traceback" not in empty.stderr
    # The command the hint gives fills the cache (huggingface_hub's own CLI, online), then offline works.
    command = shlex.split(empty.stderr.strip().splitlines()[-1].split("fill the cache with: ", 1)[1])
    assert command[:2] == ["hf", "download"]
    filled = subprocess.run([sys.executable, "-m", "huggingface_hub.cli.hf", *command[1:]],
                            env=_environ(hub, tmp_path / "other-home"), capture_output=True, text=True, timeout=60)
    assert filled.returncode == 0, filled.stderr
    hub.requests.clear()
    after = _run(hub, tmp_path / "other-home", offline=True)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["commit"] == got["commit"] and hub.requests == []
