"""Hub names without a network: a local HTTP server speaks the parts of the Hugging Face hub's protocol that
`snapshot_download` uses (revision info, tree listing, HEAD/GET of resolve URLs with ETag, X-Repo-Commit and length),
and seqlab downloads, caches and loads a tiny model from it. huggingface_hub reads HF_ENDPOINT / HF_HOME /
HF_HUB_OFFLINE when it is imported, so the download and the offline reload run in fresh processes with those set;
the error paths run in this process with huggingface_hub's constants pointed the same way.
Also (issue 14, item 4): precision and device_map through the command line, capture and the streaming capture."""
import hashlib, json, math, os, subprocess, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from seqlab import zoo
from seqlab.cli import main
from seqlab.families import write_tiny

REPO = "org/tiny"                              # the hub name the server serves
COMMIT = hashlib.sha1(b"seqlab test commit").hexdigest()   # what the server says `main` points at (40 hex digits)
NOT_FETCHED = {"flax_model.msgpack": b"not a weight file seqlab asks for"}  # served, but outside zoo.HUB_FILES
TOKS = torch.tensor([[5, 17, 30, 44, 60, 8, 9, 70, 71, 12, 33, 5], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]])
BIN = Path(sys.executable).parent
CONTEXT = 128   # positions of the served model: the induction quick preset reads 2 x 32 + 1 tokens


def _git_blob_id(data: bytes) -> str: return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    "A thread serving `repos` ({repo id: {file name: bytes}}) at 127.0.0.1 in the hub's URL layout; `log` lists every request."

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.log = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_HEAD(self): self.answer(body=False)
            def do_GET(self): self.answer(body=True)

            def send(self, code, data=b"", body=True, **headers):
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **headers}.items(): self.send_header(k, v)
                self.end_headers()
                if body: self.wfile.write(data)

            def answer(self, body):
                path = unquote(urlsplit(self.path).path)
                hub.log.append((self.command, path))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:      # /api/models/{org}/{name}/{revision|tree}/{rev}
                    repo, what = "/".join(parts[2:4]), parts[4]
                    if repo not in hub.repos: return self.send(404, b"{}", body, **{"X-Error-Code": "RepoNotFound"})
                    files = hub.repos[repo]
                    if what == "revision":
                        info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                "siblings": [{"rfilename": f} for f in files]}
                    elif what == "tree":
                        info = [{"type": "file", "path": f, "size": len(b), "oid": _git_blob_id(b)} for f, b in files.items()]
                    else: return self.send(404, b"{}", body)
                    return self.send(200, json.dumps(info).encode(), body, **{"Content-Type": "application/json"})
                if len(parts) >= 5 and parts[2] == "resolve":                 # /{org}/{name}/resolve/{rev}/{file}
                    repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    if repo not in hub.repos: return self.send(404, b"", body, **{"X-Error-Code": "RepoNotFound"})
                    if rev not in ("main", COMMIT): return self.send(404, b"", body, **{"X-Error-Code": "RevisionNotFound"})
                    if name not in hub.repos[repo]: return self.send(404, b"", body, **{"X-Error-Code": "EntryNotFound"})
                    data = hub.repos[repo][name]
                    return self.send(200, data, body, **{"ETag": f'"{_git_blob_id(data)}"', "X-Repo-Commit": COMMIT,
                                                         "Content-Type": "application/octet-stream"})
                self.send(404, b"", body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *exc): self.server.shutdown(); self.server.server_close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    "(server, source folder, a fresh HF_HOME, a fresh SEQLAB_HOME)."
    root = tmp_path_factory.mktemp("hub")
    src = write_tiny("llama", root / "source", max_position_embeddings=CONTEXT)
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()}
    with FakeHub({REPO: {**files, **NOT_FETCHED}}) as server:
        yield server, src, root / "hf_home", root / "seqlab_home"


def _env(hub, offline: bool) -> dict:
    "The environment of a user whose hub is the test server, with an empty cache of their own."
    server, _, hf_home, seqlab_home = hub
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(hf_home), SEQLAB_HOME=str(seqlab_home), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")   # one torch thread: two spin against each other on a shared 2-core machine
    if offline: env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env)


LOAD = """import json, sys, torch, seqlab
m = seqlab.load(sys.argv[1])
logits = m.forward(torch.tensor(json.loads(sys.argv[2])))
torch.save({"logits": logits, "source": m.source, "dtype": str(m.dtype)}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    "One online load of the hub name in a fresh process: (its output, the record it saved, the requests it made)."
    server = hub[0]
    out = tmp_path_factory.mktemp("dl") / "load.pt"
    n0 = len(server.log)
    r = _run([sys.executable, "-c", LOAD, REPO, json.dumps(TOKS.tolist()), str(out)], _env(hub, offline=False))
    assert r.returncode == 0, r.stderr[-3000:]
    return r, torch.load(out), server.log[n0:]


def test_hub_name_downloads_into_the_standard_cache(hub, downloaded):
    server, src, hf_home, _ = hub
    r, rec, requests = downloaded
    assert f"downloading {REPO} from {server.url}" in r.stdout
    assert ("GET", f"/api/models/{REPO}/revision/main") in requests
    assert ("GET", f"/{REPO}/resolve/{COMMIT}/model.safetensors") in requests
    # the standard layout: HF_HOME/hub/models--org--tiny/{refs/main, snapshots/COMMIT/*, blobs/*}
    store = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    assert (store / "refs" / "main").read_text() == COMMIT
    snap = store / "snapshots" / COMMIT
    got = {p.name for p in snap.iterdir()}
    want = {p.name for p in src.iterdir() if p.is_file()}
    assert got == want, (got, want)                                   # every model file, and none outside HUB_FILES
    assert not any(f"/{n}" in path for _, path in requests for n in NOT_FETCHED)
    for name in want:
        f = snap / name
        assert f.is_symlink() and f.resolve().parent == store / "blobs"  # snapshot entries point into the blob store
        assert f.read_bytes() == (src / name).read_bytes()
    assert rec["source"] == f"Hugging Face hub {REPO}, cached at {snap}" and rec["dtype"] == "torch.float32"  # CPU default


def test_hub_model_computes_what_the_source_folder_computes(hub, downloaded):
    _, src, _, _ = hub
    ref = zoo.load(src, progress=False).forward(TOKS)
    torch.testing.assert_close(downloaded[1]["logits"], ref)


def test_offline_second_load_runs_a_probe_from_the_cache(hub, downloaded, tmp_path):
    "With HF_HUB_OFFLINE=1 and the server still listening, the command line runs a probe on the cached model and asks the hub nothing."
    server = hub[0]
    n0 = len(server.log)
    r = _run([str(BIN / "seqlab"), "run", "induction", "--model", REPO, "--quick", "--out", str(tmp_path)], _env(hub, offline=True))
    assert r.returncode == 0, r.stderr[-3000:]
    assert server.log[n0:] == []
    rec = json.loads((tmp_path / "induction.json").read_text())
    assert rec["model"] == REPO
    loss = rec["metrics"]["loss_first_copy"], rec["metrics"]["loss_second_copy"]
    assert all(math.isfinite(v) for v in loss), loss


@pytest.fixture
def hub_here(hub, monkeypatch):
    """This process pointed at the test hub and cache the way a fresh process with HF_ENDPOINT/HF_HOME set would be
    (huggingface_hub read those at import; its constants are what it consults at call time). `offline(True)` adds HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants
    server, _, hf_home, seqlab_home = hub
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("SEQLAB_HOME", str(seqlab_home))
    def offline(on: bool):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)
        if on: monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else: monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return offline


def test_models_lists_the_cached_hub_model_with_its_family(downloaded, hub_here, capsys):
    hub_here(True)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next((l for l in out.splitlines() if l.startswith(REPO + " ")), "")
    assert line.split()[1:4] == ["hf-cache", "llama", "attention"] and "induction" in line, out


def test_uncached_name_offline_says_which_and_how(hub, hub_here, tmp_path, capsys):
    hub_here(True)
    server = hub[0]
    n0 = len(server.log)
    assert main(["run", "induction", "--model", "org/elsewhere", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'org/elsewhere'" in err and "HF_HUB_OFFLINE" in err and "hf download org/elsewhere" in err, err
    assert server.log[n0:] == [] and not (tmp_path / "induction.json").exists()


def test_partly_cached_name_offline_says_what_is_missing(hub, downloaded, hub_here, tmp_path, capsys, monkeypatch):
    "A cached snapshot that lost a file (an interrupted download): offline, the error names the file and how to complete it."
    import shutil
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    shutil.copytree(hub[2] / "hub", cache, symlinks=True)          # a copy: the module's cache stays whole
    (cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT / "tokenizer.json").unlink()
    hub_here(True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert main(["run", "induction", "--model", REPO, "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{REPO!r} is only partly in the Hugging Face cache" in err and "tokenizer.json" in err and f"hf download {REPO}" in err, err


def test_name_the_hub_does_not_have_is_one_error(hub, hub_here, tmp_path, capsys):
    "Online, a repo the hub answers 404 for: a SeqlabError naming it, after asking the hub."
    hub_here(False)
    server = hub[0]
    n0 = len(server.log)
    assert main(["run", "induction", "--model", "org/missing", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'org/missing'" in err and "hub cannot provide it" in err, err
    assert ("GET", "/api/models/org/missing/revision/main") in server.log[n0:]


# ---- precision through the command line and the streaming capture (issue 14, item 4) ----
# tests/test_families.py already checks: load(dtype="bf16") gives bf16 bridge and fast module, run_with_cache keeps
# bf16, logits close to float32's, an unknown dtype is a BadInput, and an explicit one-device device_map loads and
# computes what the default placement computes.

@pytest.fixture
def loaded_models(monkeypatch):
    "Every LabModel built while the test runs, whichever path built it."
    made, init = [], zoo.LabModel.__init__
    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append(self)
    monkeypatch.setattr(zoo.LabModel, "__init__", spy)
    return made


def test_cli_run_with_dtype_computes_in_that_dtype(hub, tmp_path, loaded_models):
    src = hub[1]
    assert main(["run", "induction", "--model", str(src), "--quick", "--dtype", "bfloat16", "--out", str(tmp_path)]) == 0
    assert [m.dtype for m in loaded_models] == [torch.bfloat16]
    m = json.loads((tmp_path / "induction.json").read_text())["metrics"]
    assert all(math.isfinite(v) for v in (m["loss_first_copy"], m["loss_second_copy"]))


def test_streamed_and_spilled_capture_keep_the_model_dtype(hub, tmp_path):
    from seqlab.capture import capture
    lm = zoo.load(hub[1], dtype="bf16", progress=False)
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "logits"]
    mem = capture(lm, TOKS, names, batch_size=1, progress=False)
    disk = capture(lm, TOKS, names, batch_size=1, spill_dir=tmp_path / "cap", progress=False)
    for n in names:
        assert mem[n].dtype == torch.bfloat16 and disk[n].dtype == torch.bfloat16, (n, mem[n].dtype, disk[n].dtype)
        assert torch.equal(mem[n], disk[n]), n
    torch.testing.assert_close(mem["logits"], lm.forward(TOKS), atol=0, rtol=0)


def test_device_map_models_capture_what_the_default_placement_captures(hub):
    """device_map='auto' and an explicit per-module map (all on the CPU here): the residual stream, a pattern and the logits,
    by run_with_cache and by the streaming capture, equal those of the default placement."""
    from seqlab.capture import capture, run_with_cache
    src = hub[1]
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]
    ref_logits, ref = run_with_cache(zoo.load(src, progress=False), TOKS, names=names)
    explicit = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
                "model.rotary_emb": "cpu", "lm_head": "cpu"}
    for dm in ("auto", explicit):
        lm = zoo.load(src, device_map=dm, progress=False)
        assert lm.device.type == "cpu" and lm.fast is not None and lm.fast.device.type == "cpu"   # one device here
        logits, got = run_with_cache(lm, TOKS, names=names)
        torch.testing.assert_close(logits, ref_logits)
        cap = capture(lm, TOKS, names + ["logits"], batch_size=1, progress=False)
        for n in names:
            torch.testing.assert_close(got[n], ref[n]); torch.testing.assert_close(cap[n], ref[n])
        torch.testing.assert_close(cap["logits"], ref_logits)
