"""Hub adapters in the language (SPEC §7.5): `load("hf://…")` and bare ids in scripts, `--set`, configs,
`dipm inspect`, `dipm check`, the REPL and the Python API; offline runs from huggingface_hub's cache;
provenance by id and commit; positioned errors; `--sandbox` / `--allow-hub`; a missing huggingface_hub.

The fake Hub (`hub_server.FakeHub`, on 127.0.0.1) fills one cache for the whole module through
huggingface_hub's real download path; most tests then run with offline mode on and check that
nothing was sent. In-process runs point huggingface_hub at the fake Hub and at a cache by setting
the values it reads its environment variables into when it is imported (`constants.ENDPOINT`,
`HF_HUB_CACHE`, `HF_HUB_OFFLINE`): dipm's own code passes no endpoint or cache, exactly as for a
user. Two subprocess runs set the environment variables themselves (`FakeHub.environ`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import types
from io import StringIO
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load_file

import dipm_lang as dl
from adapters import peft_deltas
from clitools import cli_env, dipm, run_main
from dipm_lang.compiler import ScriptFile, compile as compile_source
from dipm_lang.errors import DipmError
from dipm_lang.io.hub import resolve
from dipm_lang.io.hub_ref import parse_hub_uri
from dipm_lang.repl.session import Session
from dipm_lang.run import RunOptions
from dipm_lang.safety.sandbox import Sandbox
from hub_server import FakeHub, folder_files, isolate_login, under

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
GRANTED = "hf_granted_token"
STYLE, BRANCH, TASK_A = "hf://acme/style-lora", "hf://acme/style-lora@exp%2Fv2", "hf://acme/multi/task_a"
CACHED = (STYLE, BRANCH, TASK_A)  # what the module's cache holds


@pytest.fixture(scope="module")
def hub(peft_adapters: dict[str, Path]):
    basic, rslora, wide = (folder_files(peft_adapters[n]) for n in ("basic", "rslora", "wide"))
    fake = FakeHub(valid_tokens=frozenset({GRANTED}))
    fake.add_repo("acme/style-lora", {"main": {**basic, "training_args.bin": b"not an adapter file"},
                                      "exp/v2": rslora})
    fake.add_repo("acme/multi", {"main": {**under("task_a", basic), **under("task_b", wide)}})
    fake.add_repo("acme/tiny-llama", {"main": {"config.json": b"{}", "model.safetensors": b"weights",
                                               "tokenizer.json": b"{}"}})
    fake.add_repo("acme/gated-lora", {"main": basic}, gated=True, allowed_tokens={GRANTED})
    with fake:
        yield fake


@pytest.fixture(scope="module")
def home(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose cache (`home/hub`) holds CACHED, downloaded by huggingface_hub from the fake Hub."""
    home = tmp_path_factory.mktemp("hf-home")
    for source in CACHED:
        resolve(parse_hub_uri(source), cache_dir=home / "hub", endpoint=hub.url, progress=False, token=False)
    return home


@pytest.fixture(autouse=True)
def no_token_of_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_login(monkeypatch, tmp_path / "login")


def _point_at(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, cache: Path, *, offline: bool) -> None:
    """What HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE set when huggingface_hub is imported."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    hub.requests.clear()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, home: Path) -> Path:
    """Offline mode over the module's filled cache; returns the cache."""
    _point_at(monkeypatch, hub, home / "hub", offline=True)
    return home / "hub"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, tmp_path: Path) -> Path:
    """Online against the fake Hub, with an empty cache of this test's own; returns the cache."""
    _point_at(monkeypatch, hub, tmp_path / "hf-cache", offline=False)
    return tmp_path / "hf-cache"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inputs(folder: Path) -> dict:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        return json.loads(handle.metadata()["dipm_inputs"])


def _entry(hub: FakeHub, source: str, weights: Path) -> dict:
    ref = parse_hub_uri(source)
    return {"source": source, "commit": hub.commit(ref.repo_id, ref.revision_or_default), "sha256": _sha256(weights)}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- from the cache, offline --------------------------------------------------------------------

def test_a_script_loads_hub_ids_offline_with_provenance_by_id_and_commit(offline, hub, work, peft_adapters):
    (work / "s.dipm").write_text(f'h = load("{STYLE}")\ns = load("{BRANCH}")\nsave(0.5 * h + 0.5 * s, "out")\n')
    result = run_main("run", "s.dipm", cwd=work)
    assert result.code == 0, result.err
    assert hub.requests == []  # offline: nothing was sent
    # PEFT's own reading of the source folders, combined in float64, against PEFT's reading of the output
    a, b, got = (peft_deltas(p) for p in (peft_adapters["basic"], peft_adapters["rslora"], work / "out"))
    assert set(got) == set(a) | set(b)
    for name, (delta, *_rest) in got.items():
        expected = 0.5 * a[name][0].double() + 0.5 * b[name][0].double()
        torch.testing.assert_close(delta.double(), expected, rtol=1e-5, atol=1e-6)
    basic, rslora = (peft_adapters[n] / "adapter_model.safetensors" for n in ("basic", "rslora"))
    assert _inputs(work / "out") == {"h": _entry(hub, STYLE, basic), "s": _entry(hub, BRANCH, rslora)}
    card = (work / "out" / "README.md").read_text()
    assert f"- `h`: `{STYLE}` at commit `{hub.commit('acme/style-lora')}`, sha256 `{_sha256(basic)}`" in card
    written = b"".join(_files(work / "out").values())
    assert str(offline).encode() not in written and b"snapshots" not in written  # never the cache path


def test_an_output_is_the_same_from_the_hub_and_from_the_cache(online, hub, work, monkeypatch):
    # huggingface_hub reads HF_HUB_DISABLE_PROGRESS_BARS into its tqdm module when imported: as if unset
    monkeypatch.setattr("huggingface_hub.utils.tqdm.HF_HUB_DISABLE_PROGRESS_BARS", None, raising=False)
    script = f'h = load("{STYLE}")\nt = load("acme/style-lora")\nsave(h - 0.25 * t, "out")\n'
    for where in ("a", "b"):
        (work / where).mkdir()
        (work / where / "s.dipm").write_text(script)
    first = run_main("run", "s.dipm", "--progress", cwd=work / "a")
    assert first.code == 0, first.err
    assert "Fetching 3 files" in first.err  # huggingface_hub's own progress bar, asked for with --progress
    assert sorted(set(hub.requested_files())) == sorted(ADAPTER_FILES)  # only the adapter's files
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    second = run_main("run", "s.dipm", cwd=work / "b")
    assert second.code == 0, second.err
    assert hub.requests == [] and "Fetching" not in second.err
    assert _files(work / "a" / "out") == _files(work / "b" / "out")  # byte for byte, metadata and card too
    assert set(_inputs(work / "b" / "out")) == {"h", "t"}
    assert {e["source"] for e in _inputs(work / "b" / "out").values()} == {STYLE}  # the bare id, canonical


def test_set_gives_a_hub_id_as_an_input(offline, hub, work, peft_adapters):
    (work / "s.dipm").write_text('save(2 * H, "out")\n')
    bare = run_main("run", "s.dipm", "--set", "H=acme/style-lora", cwd=work)
    assert bare.code == 0, bare.err
    sub = run_main("run", "s.dipm", "--set", f"H={TASK_A}", "--set", "H2=x", cwd=work)
    assert sub.code == 2 and "no input or binding named 'H2'" in sub.err  # --set's own checks still apply
    (work / "t.dipm").write_text('save(2 * H, "out2")\n')
    sub = run_main("run", "t.dipm", "--set", f"H={TASK_A}", cwd=work)
    assert sub.code == 0, sub.err
    assert hub.requests == []
    weights = peft_adapters["basic"] / "adapter_model.safetensors"
    assert _inputs(work / "out") == {"H": _entry(hub, STYLE, weights)}
    assert _inputs(work / "out2") == {"H": _entry(hub, TASK_A, weights)}
    # the same bytes at another repo and subfolder: the same update
    one, two = load_file(str(work / "out" / "adapter_model.safetensors")), \
        load_file(str(work / "out2" / "adapter_model.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


CONFIGS = {
    "yaml": f'inputs:\n  H: acme/style-lora\n  T: "{BRANCH}"\noutputs:\n  out: "H - 0.5 * T"\n',
    "toml": f'[inputs]\nH = "acme/style-lora"\nT = "{BRANCH}"\n\n[outputs]\nout = "H - 0.5 * T"\n',
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_configs_take_hub_ids(offline, hub, work, peft_adapters, kind):
    (work / f"r.{kind}").write_text(CONFIGS[kind])
    result = run_main("run", f"r.{kind}", cwd=work)
    assert result.code == 0, result.err
    assert hub.requests == []
    basic, rslora = (peft_adapters[n] / "adapter_model.safetensors" for n in ("basic", "rslora"))
    assert _inputs(work / "out") == {"H": _entry(hub, STYLE, basic), "T": _entry(hub, BRANCH, rslora)}


def test_inspect_takes_hub_ids(offline, hub, work, peft_adapters):
    result = run_main("inspect", "--json", "acme/style-lora", BRANCH, cwd=work)
    assert result.code == 0, result.err
    local = run_main("inspect", "--json", str(peft_adapters["basic"]), str(peft_adapters["rslora"]), cwd=work)
    assert local.code == 0, local.err
    got, expected = json.loads(result.out), json.loads(local.out)
    assert hub.requests == []
    assert [a["label"] for a in got["adapters"]] == ["acme/style-lora", BRANCH]
    assert [a["commit"] for a in got["adapters"]] == [hub.commit("acme/style-lora"),
                                                       hub.commit("acme/style-lora", "exp/v2")]
    assert [a["modules"] for a in got["adapters"]] == [a["modules"] for a in expected["adapters"]]
    unlabelled = [[{k: v for k, v in pair.items() if not k.endswith("label")} for pair in report["pairs"]]
                  for report in (got, expected)]
    assert unlabelled[0] == unlabelled[1] and unlabelled[0]
    text = run_main("inspect", STYLE, cwd=work)
    assert text.code == 0 and f"commit {hub.commit('acme/style-lora')[:12]}" in text.out
    # vLLM's rules, on the cached files: the same verdicts as on the local folders, named by the ids
    served = run_main("inspect", "--json", "--target", "vllm", "--max-rank", "1", STYLE, BRANCH, cwd=work)
    local = run_main("inspect", "--json", "--target", "vllm", "--max-rank", "1", str(peft_adapters["basic"]),
                     str(peft_adapters["rslora"]), cwd=work)
    assert (served.code, served.err) == (local.code, local.err)
    got, expected = json.loads(served.out)["adapters"], json.loads(local.out)["adapters"]
    assert [a.pop("adapter") for a in got] == [STYLE, BRANCH]
    assert got == [{k: v for k, v in a.items() if k != "adapter"} for a in expected]
    assert any(a["refusals"] for a in got) and hub.requests == []  # rank 4 > --max-lora-rank 1


def test_the_python_api_takes_hub_ids(offline, hub, work, peft_adapters, monkeypatch):
    monkeypatch.chdir(work)
    value = dl.evaluate("0.5 * H + 0.5 * T", H="acme/style-lora", T=BRANCH)
    local = dl.evaluate("0.5 * H + 0.5 * T", H=peft_adapters["basic"], T=peft_adapters["rslora"])
    assert set(value) == set(local)
    assert all(torch.equal(value.delta(name), local.delta(name)) for name in value)
    value.save(work / "v")
    basic, rslora = (peft_adapters[n] / "adapter_model.safetensors" for n in ("basic", "rslora"))
    assert _inputs(work / "v") == {"H": _entry(hub, STYLE, basic), "T": _entry(hub, BRANCH, rslora)}
    program = dl.compile("k * H", inputs={"H": TASK_A})
    doubled = program(k=2.0)
    assert all(torch.equal(doubled.delta(n), 2 * local_delta) for n, local_delta in
               ((n, dl.evaluate("H", H=peft_adapters["basic"]).delta(n)) for n in doubled))
    rebound = program({"H": "acme/style-lora"}, k=2.0)  # another adapter for the compiled program
    assert all(torch.equal(rebound.delta(n), doubled.delta(n)) for n in doubled)
    assert hub.requests == []


def test_the_repl_loads_inspects_and_completes_hub_ids(offline, hub, work, monkeypatch):
    monkeypatch.chdir(work)
    session = Session(RunOptions(device="cpu"), out=StringIO(), err=StringIO())
    session.handle(f'h = load("{STYLE}")')
    session.handle(f":load t {BRANCH}")
    session.handle("h + t")
    session.handle(f":inspect {TASK_A} h")
    out = session.out.getvalue()
    assert session.errors == 0, session.err.getvalue()
    assert f"h: Delta  ← {STYLE} (4 modules, rank 4, float32)" in out
    assert f"t: Delta  ← {BRANCH} (4 modules, rank 4, float32)" in out
    assert f"[1] {TASK_A}" in out and "[2] h" in out
    completions = [c for c, _, _ in session.completions('x = load("hf://acme/st')]
    assert completions == [STYLE, BRANCH]
    assert [c for c, _, _ in session.completions(":load y hf://acme/m")] == [TASK_A]
    assert hub.requests == []
    session.handle('save(h, "copy")')
    assert session.errors == 0, session.err.getvalue()
    assert _inputs(work / "copy")["h"]["source"] == STYLE


def test_check_says_which_inputs_are_hub_ids_and_whether_they_are_cached(offline, hub, work, monkeypatch):
    (work / "s.dipm").write_text(f'h = load("{STYLE}")\ng = load("hf://acme/gated-lora")\n'
                                 'save(h + g, "out")\n')
    commit = hub.commit("acme/style-lora")
    result = run_main("check", "s.dipm", cwd=work)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "s.dipm: OK (1 save, 2 inputs)",
        f"  h: Hub input {STYLE}: revision main = commit {commit[:12]}, cached in "
        f"{offline}/models--acme--style-lora/snapshots/{commit}",
        "  g: Hub input hf://acme/gated-lora: revision main, not cached: offline mode is on, so loading it will fail"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    result = run_main("check", "s.dipm", cwd=work)
    assert result.out.splitlines()[2].endswith("not cached: fetched from the Hub on first use")
    assert hub.requests == []  # check needs no network, online or not
    assert not (work / "out").exists()


# --- errors -------------------------------------------------------------------------------------

ERRORS = [  # load("…"), offline, the message after "hf://…: ", words of the hint
    ("hf://acme/nope", False, "repository 'acme/nope' not found on the Hub (http://127.0.0.1:", "private"),
    ("acme/nope", False, "repository 'acme/nope' not found on the Hub (http://127.0.0.1:", "hf auth login"),
    ("hf://acme/style-lora@nope", False, "revision 'nope' not found in 'acme/style-lora'", "%2F"),
    ("hf://acme/tiny-llama", False, "this is a full model (config.json, model.safetensors), not a PEFT adapter",
     "adapter_config.json"),
    ("hf://acme/gated-lora", False, "'acme/gated-lora' is a gated repository: it needs a token", "HF_TOKEN"),
    ("hf://acme/style-lora", True, "not in the Hugging Face cache (", "hf download acme/style-lora --include"),
]


@pytest.mark.parametrize(("source", "offline_mode", "said", "hinted"), ERRORS, ids=[e[0] for e in ERRORS])
def test_hub_errors_point_at_the_load_and_write_nothing(online, hub, work, monkeypatch, source, offline_mode,
                                                        said, hinted):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_mode)
    line = f'h = load("{source}")'
    (work / "s.dipm").write_text(f"\n{line}\nsave(2 * h, \"out\")\n")
    result = run_main("run", "s.dipm", cwd=work)
    canonical = str(parse_hub_uri(source if source.startswith("hf://") else f"hf://{source}"))
    lines = result.err.splitlines()
    assert result.code == 1, result.err
    assert lines[0].startswith(f"s.dipm:2:5: error: {canonical}: {said}"), lines[0]
    assert lines[1:3] == [f"   2 | {line}", "           " + "^" + "~" * (len(line) - 5)]
    assert hinted in lines[3] and "Traceback" not in result.err
    assert sorted(os.listdir(work)) == ["s.dipm"]  # no output, no staging folder
    assert not list(online.glob("models--*/snapshots/*/adapter_model.*"))  # no weights kept
    assert (hub.requests == []) == offline_mode


def test_a_gated_repo_loads_with_a_token(online, hub, work, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    (work / "s.dipm").write_text('save(2 * load("hf://acme/gated-lora"), "out")\n')
    result = run_main("run", "s.dipm", cwd=work)
    assert result.code == 0, result.err
    assert {r.token for r in hub.requests if r.origin == "hub"} == {GRANTED}


def test_an_error_of_an_input_from_set(online, work):
    (work / "s.dipm").write_text('save(2 * H, "out")\n')
    result = run_main("run", "s.dipm", "--set", "H=acme/nope", cwd=work)
    assert result.code == 1
    # the error points at the script's use of the input given from outside
    assert result.first.startswith("s.dipm:1:10: error: hf://acme/nope: repository 'acme/nope' not found")
    assert sorted(os.listdir(work)) == ["s.dipm"]


def test_malformed_ids_are_usage_errors_where_they_are_written(online, hub, work, monkeypatch):
    (work / "s.dipm").write_text('x = 1\nh = load("hf://acme")\nsave(h, "out")\n')
    result = run_main("run", "s.dipm", cwd=work)
    assert result.code == 2
    assert result.first == "s.dipm:2:10: error: 'hf://acme': not a valid Hub id: Repository id must be " \
                           "'namespace/name', got 'acme'."
    assert "hint: write hf://ORG/NAME" in result.err
    (work / "t.dipm").write_text('save(2 * H, "out")\n')
    result = run_main("run", "t.dipm", "--set", "H=hf://acme/x@", cwd=work)
    assert result.code == 2 and result.first.startswith("<command line>:1:1: error: --set H=…: 'hf://acme/x@': "
                                                        "not a valid Hub id: Empty revision")
    (work / "r.yaml").write_text('inputs:\n  H: "hf://datasets/acme/x"\noutputs:\n  out: "H"\n')
    result = run_main("run", "r.yaml", cwd=work)
    assert result.code == 2 and result.first.startswith("r.yaml:2:3: error: input 'H': 'hf://datasets/acme/x': "
                                                        "adapters live in model repos; this names a dataset")
    assert run_main("inspect", "hf://acme/x/../y", cwd=work).code == 2
    monkeypatch.chdir(work)
    with pytest.raises(DipmError) as caught:
        dl.evaluate("2 * H", H="hf://acme/x@")
    assert caught.value.exit_code == 2 and "Empty revision" in caught.value.message
    assert sorted(os.listdir(work)) == ["r.yaml", "s.dipm", "t.dipm"] and hub.requests == []


def test_the_bare_id_rule_local_folders_first(online, hub, work, peft_adapters):
    """PEFT's rule (an existing local path wins), with dipm's refinement: a local folder ORG makes
    ORG/NAME a path in it (a typo gets the near names, not a request to the Hub)."""
    (work / "s.dipm").write_text('h = load("acme/style-lora")\nsave(2 * h, "out")\n')

    def load_path() -> str:
        program = compile_source(ScriptFile(work / "s.dipm")).program
        return next(n.attr("path") for n in program.nodes() if n.op == "load")

    assert load_path() == STYLE
    (work / "acme").mkdir()
    assert load_path() == str(work / "acme" / "style-lora")
    typo = run_main("run", "s.dipm", cwd=work)
    assert typo.code == 1 and typo.first.endswith("acme/style-lora: adapter folder not found")
    shutil.copytree(peft_adapters["wide"], work / "acme" / "style-lore")
    assert "hint: did you mean 'style-lore'?" in run_main("run", "s.dipm", cwd=work).err
    shutil.copytree(peft_adapters["wide"], work / "acme" / "style-lora")
    assert load_path() == str(work / "acme" / "style-lora")
    assert run_main("run", "s.dipm", cwd=work).code == 0
    (work / "n.dipm").write_text('save(2 * load("no/such/adapter"), "out2")\n')  # neither: both readings named
    neither = run_main("run", "n.dipm", cwd=work)
    assert neither.code == 1 and "adapter folder not found" in neither.first
    assert "hint: an adapter on the Hugging Face Hub is written hf://ORG/NAME" in neither.err
    assert hub.requests == []


# --- the sandbox ----------------------------------------------------------------------------------

def test_the_sandbox_refuses_hub_ids_unless_allowed(offline, hub, work):
    (work / "s.dipm").write_text(f'h = load("{STYLE}")\nsave(2 * h, "out")\n')
    (work / "t.dipm").write_text('save(2 * H, "out")\n')
    (work / "r.yaml").write_text('inputs:\n  H: acme/style-lora\noutputs:\n  out: "2 * H"\n')
    refused = {
        "script": run_main("run", "s.dipm", "--sandbox", ".", cwd=work),
        "--set": run_main("run", "t.dipm", "--set", "H=acme/style-lora", "--sandbox", ".", cwd=work),
        "config": run_main("run", "r.yaml", "--sandbox", ".", cwd=work),
        "check": run_main("check", "s.dipm", "--sandbox", ".", cwd=work),
    }
    assert {how: r.code for how, r in refused.items()} == dict.fromkeys(refused, 2)
    assert refused["script"].first == (f"s.dipm:1:10: error: load: {STYLE} is an adapter on the Hugging Face Hub, "
                                       f"a network source the sandbox {work} refuses")
    assert refused["--set"].first.startswith("<command line>:1:1: error: input 'H': acme/style-lora is an adapter "
                                             f"on the Hugging Face Hub (read as {STYLE})")
    assert refused["config"].first.startswith("r.yaml:2:3: error: input 'H': acme/style-lora is an adapter")
    assert all("--allow-hub" in r.err for r in refused.values())
    assert not (work / "out").exists()
    session = Session(RunOptions(device="cpu", sandbox=Sandbox.at(work)), out=StringIO(),
                      err=StringIO())
    session.handle(f":load h {STYLE}")
    assert session.errors == 1 and "a network source the sandbox" in session.err.getvalue()
    session = Session(RunOptions(device="cpu", sandbox=Sandbox.at(work, allow_hub=True)),
                      out=StringIO(), err=StringIO())
    session.handle(f":load h {STYLE}")
    session.handle(f'g = load("{BRANCH}")')
    assert session.errors == 0, session.err.getvalue()
    allowed = run_main("run", "s.dipm", "--sandbox", ".", "--allow-hub", cwd=work)
    assert allowed.code == 0, allowed.err
    assert run_main("run", "r.yaml", "--sandbox", ".", "--allow-hub", "--force", cwd=work).code == 0
    alone = run_main("run", "s.dipm", "--allow-hub", "--force", cwd=work)  # without a sandbox it would do nothing
    assert alone.code == 2 and "--allow-hub goes with --sandbox" in alone.err, alone.err
    assert hub.requests == []


# --- huggingface_hub is an optional extra -------------------------------------------------------

@pytest.mark.parametrize("installed", [None, "0.36.0"], ids=["missing", "too old"])
def test_a_hub_id_without_huggingface_hub_says_what_to_install(work, peft_adapters, monkeypatch, installed):
    for name in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError, as when not installed
    if installed is not None:
        old = types.ModuleType("huggingface_hub")
        old.__version__ = installed
        monkeypatch.setitem(sys.modules, "huggingface_hub", old)
        monkeypatch.setitem(sys.modules, "huggingface_hub.utils", types.ModuleType("huggingface_hub.utils"))
    state = "huggingface_hub is not installed" if installed is None else f"huggingface_hub {installed} is installed"
    (work / "s.dipm").write_text(f'h = load("{STYLE}")\nsave(h, "out")\n')
    result = run_main("check", "s.dipm", cwd=work)
    assert result.code == 2
    assert result.first == (f"s.dipm:1:10: error: '{STYLE}' names an adapter on the Hugging Face Hub, which needs "
                            f"huggingface_hub>=2.4; {state}")
    assert "hint: pip install 'dipm_lang[hub]'" in result.err
    (work / "b.dipm").write_text('save(2 * H, "out")\n')
    bare = run_main("run", "b.dipm", "--set", "H=acme/style-lora", cwd=work)
    assert bare.code == 2 and bare.first.startswith("<command line>:1:1: error: --set H=…: no local folder")
    assert "'acme/style-lora' names an adapter on the Hugging Face Hub, which needs huggingface_hub>=2.4" in bare.first
    shutil.copytree(peft_adapters["basic"], work / "local")
    assert run_main("run", "b.dipm", "--set", "H=local", cwd=work).code == 0  # local folders need nothing more


# --- the environment, as users set it -----------------------------------------------------------

def _environ(hub: FakeHub, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cli_env().items() if not k.startswith(("HF_", "HUGGING"))}
    return {**env, **hub.environ(home), **extra}


def test_hf_home_and_hf_hub_offline_from_the_environment(hub, home, tmp_path):
    """A real `dipm run`: HF_HOME's cache and HF_HUB_OFFLINE=1, as set in a shell; then an empty HF_HOME."""
    (tmp_path / "s.dipm").write_text(f'save(2 * load("acme/style-lora") - load("{BRANCH}"), "out")\n')
    hub.requests.clear()
    done = dipm("run", "s.dipm", cwd=tmp_path, env=_environ(hub, home, HF_HUB_OFFLINE="1"))
    assert done.code == 0, done.err
    assert hub.requests == []
    assert {e["source"] for e in _inputs(tmp_path / "out").values()} == {STYLE, BRANCH}
    empty = dipm("run", "s.dipm", "--force", cwd=tmp_path, env=_environ(hub, tmp_path / "empty", HF_HUB_OFFLINE="1"))
    assert empty.code == 1 and hub.requests == []
    assert empty.first.startswith(f"s.dipm:1:10: error: {STYLE}: not in the Hugging Face cache "
                                  f"({tmp_path / 'empty' / 'hub'}), and HF_HUB_OFFLINE=1 is set")
    assert "Traceback" not in empty.err
