"The trainer: every architecture learns, resume is bitwise identical, NaN stops cleanly, checkpoints are checked."
import json
from pathlib import Path

import pytest
import torch

from seqlab.archs import CharTokenizer, build_model
import torch.nn.functional as F

from seqlab.core import BadInput, CheckpointError, SeqlabError
from seqlab.train import (TrainConfig, TrainingDiverged, batches_from_tokens, checkpoint_path, checkpoint_step, list_checkpoints,
                          lm_loss, load_model, save_checkpoint, train, trained)
from seqlab.zoo import load_checkpoint

V = 12
TOK = CharTokenizer("abcdefghijkl")
CFGS = {"Transformer": {"d_vocab": V, "d_model": 16, "n_layers": 1, "n_heads": 2},
        "LSTM": {"d_vocab": V, "d_model": 16, "n_layers": 1},
        "Mamba2": {"d_vocab": V, "d_model": 16, "n_layers": 1, "d_head": 8, "d_state": 4, "chunk_size": 4}}


def counting(n=32, T=12, seed=0):
    "Sequences counting up mod V from a random start: every token predicts the next."
    starts = torch.randint(0, V, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(T)) % V


def fresh(family, seed=0):
    torch.manual_seed(seed)
    return build_model(family, CFGS[family])


@pytest.mark.parametrize("family", list(CFGS))
def test_each_architecture_learns_and_round_trips(family, tmp_path):
    m, data = fresh(family), batches_from_tokens(counting(), 8)
    r = train(m, data, TrainConfig(steps=30, lr=1e-2, progress=False), out=tmp_path / "ck", eval_data=[counting(8, seed=1)],
              tokenizer=TOK, meta={"spun": False})
    start, end = r["history"][0]["loss"], r["history"][-1]["eval_loss"]
    assert end < 0.25 * start, (start, end)
    lm = load_checkpoint(tmp_path / "ck")
    assert lm.meta["spun"] is False and lm.arch.family == m.family
    x = counting(2, seed=2)
    with torch.no_grad(): assert torch.equal(lm.forward_tokens(x), m(x))


@pytest.mark.parametrize("family", list(CFGS))
def test_resume_is_bitwise_identical(family, tmp_path):
    cfg, data = TrainConfig(steps=10, lr=5e-3, progress=False, eval_every=4), batches_from_tokens(counting(), 4, seed=3)
    ev = [counting(4, seed=5)]
    a = fresh(family); ra = train(a, data, cfg, out=tmp_path / "a", eval_data=ev, tokenizer=TOK)
    b = fresh(family); rb1 = train(b, data, cfg, out=tmp_path / "b", eval_data=ev, tokenizer=TOK, stop_at=4)
    assert rb1["step"] == 4 and json.loads((tmp_path / "b" / "seqlab.json").read_text())["step"] == 4
    c = fresh(family, seed=99)   # a different init: everything must come from the checkpoint
    rb = train(c, data, cfg, out=tmp_path / "b", eval_data=ev, tokenizer=TOK)
    assert rb["step"] == 10 and rb["history"] == ra["history"]
    for (k, va), (_, vc) in zip(a.state_dict().items(), c.state_dict().items()): assert torch.equal(va, vc), k


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    m = fresh("Transformer"); calls = {"n": 0}
    def poison(t, hook):
        calls["n"] += 1
        return t * float("nan") if calls["n"] > 7 else t
    m.add_hook("hook_embed", poison)
    with pytest.raises(TrainingDiverged, match=r"nan at step 7.*step 6"):
        train(m, batches_from_tokens(counting(), 4), TrainConfig(steps=20, ckpt_every=3, progress=False), out=tmp_path / "ck", tokenizer=TOK)
    m.reset_hooks()
    good, _, rec = load_model(tmp_path / "ck")
    assert rec["step"] == 6 and all(torch.isfinite(p).all() for p in good.parameters())


def test_checkpoint_refusals(tmp_path):
    m = fresh("Mamba2")
    ck = save_checkpoint(tmp_path / "m", m, TOK, step=3)
    with pytest.raises(CheckpointError, match="holds a Mamba2 checkpoint, not a LSTM"): load_model(ck, arch="LSTM")
    with pytest.raises(CheckpointError, match="d_state: 8 vs 4"): load_model(ck, config={**CFGS["Mamba2"], "d_state": 8})
    with pytest.raises(CheckpointError, match="No checkpoint folder"): load_model(tmp_path / "nowhere")
    # resuming a different architecture into this folder is refused, not overwritten
    with pytest.raises(CheckpointError, match="holds a Mamba2"):
        train(fresh("LSTM"), batches_from_tokens(counting(), 4), TrainConfig(steps=2, progress=False), out=ck)
    # truncated weights, truncated JSON, missing weights
    w = ck / "model.safetensors"; data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"): load_model(ck)
    w.write_bytes(data)
    j = ck / "seqlab.json"; text = j.read_text()
    j.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"): load_model(ck)
    j.write_text(text); w.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"): load_model(ck)
    # weights of another shape under this config
    save_checkpoint(tmp_path / "x", build_model("Mamba2", {**CFGS["Mamba2"], "d_state": 8}), TOK)
    (tmp_path / "x" / "seqlab.json").write_text(text)
    with pytest.raises(CheckpointError, match="shape mismatches"): load_model(tmp_path / "x")


def test_list_checkpoints_and_seqlab_load(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    save_checkpoint(tmp_path / "checkpoints" / "toy-lstm", fresh("LSTM"), TOK, step=5)
    (tmp_path / "checkpoints" / "not-a-checkpoint").mkdir()
    rows = list_checkpoints()
    assert [(r["name"], r["arch"], r["step"]) for r in rows] == [("toy-lstm", "LSTM", 5)]
    from seqlab.zoo import load
    lm = load(str(tmp_path / "checkpoints" / "toy-lstm"))
    assert lm.arch.family == "lstm" and lm.forward("abc").shape == (1, 3, V)


def test_bad_batches_are_reported():
    with pytest.raises(SeqlabError, match="batch must be"):
        train(fresh("LSTM"), lambda s: "abc", TrainConfig(steps=1, progress=False))
    with pytest.raises(SeqlabError, match="at least 2 tokens"):
        train(fresh("LSTM"), lambda s: torch.zeros(2, 1, dtype=torch.long), TrainConfig(steps=1, progress=False))


def test_default_loss_is_lm_loss_bitwise():
    "No loss_fn, loss_fn=lm_loss, and a custom wrapper of lm_loss (the custom-batch path) train identically."
    cfg, data, ev = TrainConfig(steps=6, lr=5e-3, progress=False, eval_every=3), batches_from_tokens(counting(), 4, seed=1), [{"tokens": counting(4, seed=2)}]
    runs = []
    for fn in (None, lm_loss, lambda m, b: (lm_loss(m, b), {"n_tokens": b["tokens"].numel()})):
        m = fresh("Transformer")
        runs.append((train(m, data, cfg, eval_data=ev, loss_fn=fn)["history"], m.state_dict()))
    (h0, s0), (h1, s1), (h2, s2) = runs
    assert h0 == h1 and [{k: v for k, v in r.items() if k != "n_tokens"} for r in h2] == h0
    assert all(r["n_tokens"] == 4 * 12 for r in h2 if "loss" in r)
    for k in s0: assert torch.equal(s0[k], s1[k]) and torch.equal(s0[k], s2[k]), k


class Regressor(torch.nn.Module):
    "Not a lab architecture: a read-in to one LSTM layer to a scalar read-out."
    def __init__(self):
        super().__init__()
        self.rnn, self.out = torch.nn.LSTM(2, 16, batch_first=True), torch.nn.Linear(16, 1)
    def forward(self, x): return self.out(self.rnn(x)[0])[..., 0]


def running_sum(step, n=16, T=6):
    x = torch.randn(n, T, 2, generator=torch.Generator().manual_seed(step))
    return {"x": x, "y": x[..., 0].cumsum(1) - x[..., 1]}


def test_custom_loss_trains_a_non_lab_model(tmp_path):
    def mse(model, batch): return F.mse_loss(model(batch["x"]), batch["y"])
    torch.manual_seed(0)
    m = Regressor()
    r = train(m, running_sum, TrainConfig(steps=150, lr=1e-2, weight_decay=0.0, eval_every=50, progress=False),
              eval_data=[running_sum(-1, n=64)], loss_fn=mse, device="cpu")
    evals = [h["eval_loss"] for h in r["history"] if "eval_loss" in h]
    assert len(evals) == 3 and evals[-1] < 0.1 * r["history"][0]["loss"], (r["history"][0], evals)
    assert r["checkpoint"] is None and not m.training
    with pytest.raises(BadInput, match="loss_fn must return a scalar"):
        train(Regressor(), running_sum, TrainConfig(steps=1, progress=False), loss_fn=lambda m, b: m(b["x"]))
    with pytest.raises(TrainingDiverged, match="at step 0"):
        train(Regressor(), running_sum, TrainConfig(steps=1, progress=False), loss_fn=lambda m, b: mse(m, b) * float("nan"))


def test_non_lab_model_checkpoints_and_resumes_bitwise(tmp_path):
    def mse(model, batch): return F.mse_loss(model(batch["x"]), batch["y"])
    cfg = TrainConfig(steps=8, lr=1e-2, progress=False)
    torch.manual_seed(0); a = Regressor(); ra = train(a, running_sum, cfg, out=tmp_path / "a", loss_fn=mse, device="cpu")
    torch.manual_seed(0); b = Regressor(); train(b, running_sum, cfg, out=tmp_path / "b", loss_fn=mse, device="cpu", stop_at=3)
    c = Regressor()     # another init: everything comes from the checkpoint
    rc = train(c, running_sum, cfg, out=tmp_path / "b", loss_fn=mse, device="cpu")
    assert rc["history"] == ra["history"] and all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    rec = json.loads((tmp_path / "a" / "seqlab.json").read_text())
    assert rec["arch"] is None and rec["module"].endswith("Regressor") and rec["step"] == 8
    with pytest.raises(CheckpointError, match="not one of the lab's architectures"): load_model(tmp_path / "a")
    with pytest.raises(CheckpointError, match="not a torch.nn.modules.linear.Linear"):   # another class is refused, not overwritten
        train(torch.nn.Linear(2, 1), running_sum, cfg, out=tmp_path / "a", loss_fn=mse)


def folders(root) -> list[str]:
    "The checkpoint folders under `root` (not the `.NAME.lock` files next to them)."
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def counted(data):
    "`data`, recording the steps it is asked for."
    def f(step): f.calls.append(step); return data(step)
    f.calls = []
    return f


def test_trained_trains_once_then_loads(tmp_path):
    cfg, key = TrainConfig(steps=6, lr=5e-3, progress=False), {"data": "counting", "version": 1}
    build = lambda: build_model("Mamba2", CFGS["Mamba2"])
    data = counted(batches_from_tokens(counting(), 4, seed=3))
    m1, h1 = trained(build, data, cfg, "toy", key, tokenizer=TOK, root=tmp_path)
    assert data.calls == list(range(6)) and not m1.training and len(h1) == 6
    path = checkpoint_path("toy", m1.cfg, cfg, key, tmp_path)
    assert checkpoint_step(path) == 6 and folders(tmp_path) == [path.name]
    m2, h2 = trained(build, data, cfg, "toy", key, tokenizer=TOK, root=tmp_path)
    assert data.calls == list(range(6)) and h2 == h1      # loaded: no step taken
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
    # bitwise the same as seeding, building and training by hand
    torch.manual_seed(cfg.seed); m3 = build(); r3 = train(m3, batches_from_tokens(counting(), 4, seed=3), cfg)
    assert r3["history"] == h1 and all(torch.equal(v, m3.state_dict()[k]) for k, v in m1.state_dict().items())
    # what changes the weights changes the folder; progress does not
    trained(build, data, TrainConfig(steps=6, lr=5e-3, progress=True), "toy", key, root=tmp_path)
    assert len(folders(tmp_path)) == 1
    trained(build, data, cfg, "toy", {**key, "version": 2}, root=tmp_path)
    trained(lambda: build_model("Mamba2", {**CFGS["Mamba2"], "d_state": 8}), data, cfg, "toy", key, root=tmp_path)
    trained(build, data, TrainConfig(steps=6, lr=1e-3, progress=False), "toy", key, root=tmp_path)
    assert len(folders(tmp_path)) == 4


def test_trained_resumes_a_partial_checkpoint(tmp_path):
    cfg = TrainConfig(steps=8, lr=5e-3, progress=False, eval_every=4)
    build, ev = (lambda: build_model("LSTM", CFGS["LSTM"])), [counting(4, seed=5)]
    full, hf = trained(build, batches_from_tokens(counting(), 4, seed=1), cfg, "full", eval_data=ev, root=tmp_path)
    torch.manual_seed(cfg.seed); part = build()
    train(part, batches_from_tokens(counting(), 4, seed=1), cfg, out=checkpoint_path("part", part.cfg, cfg, None, tmp_path),
          eval_data=ev, stop_at=3)
    data = counted(batches_from_tokens(counting(), 4, seed=1))
    m, h = trained(build, data, cfg, "part", eval_data=ev, root=tmp_path)
    assert data.calls == list(range(3, 8)) and h == hf
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in full.state_dict().items())


def test_trained_takes_a_plain_module(tmp_path):
    def mse(model, batch): return F.mse_loss(model(batch["x"]), batch["y"])
    cfg, data = TrainConfig(steps=5, lr=1e-2, progress=False), counted(running_sum)
    m1, h1 = trained(Regressor, data, cfg, "reg", {"task": "running_sum"}, loss_fn=mse, device="cpu", root=tmp_path)
    m2, h2 = trained(Regressor, data, cfg, "reg", {"task": "running_sum"}, loss_fn=mse, device="cpu", root=tmp_path)
    assert data.calls == list(range(5)) and h2 == h1 and isinstance(m2, Regressor)
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
    torch.manual_seed(cfg.seed); m3 = Regressor()
    assert train(m3, running_sum, cfg, loss_fn=mse, device="cpu")["history"] == h1


TWO_TRAINERS = """
import hashlib, os, sys, time
from pathlib import Path
import torch
from seqlab.archs import build_model
from seqlab.train import TrainConfig, batches_from_tokens, trained
root, V = Path(sys.argv[1]), 12
(root / f"ready-{os.getpid()}").touch()
while len(list(root.glob("ready-*"))) < 2: time.sleep(0.01)     # both processes reach trained() together
tokens = (torch.randint(0, V, (32, 1), generator=torch.Generator().manual_seed(0)) + torch.arange(12)) % V
base = batches_from_tokens(tokens, 4)
def data(step):
    with open(root / "steps.log", "a") as f: f.write(f"{os.getpid()} {step}\\n")
    time.sleep(0.01)                                               # long enough for the other process to arrive
    return base(step)
cfg = TrainConfig(steps=60, lr=5e-3, progress=False)
m, h = trained(lambda: build_model("LSTM", {"d_vocab": V, "d_model": 16, "n_layers": 1}), data, cfg, "shared", {"v": 1}, root=root / "ck")
print(hashlib.sha256(b"".join(v.numpy().tobytes() for v in m.state_dict().values())).hexdigest(), len(h))
"""


def test_two_processes_share_one_checkpoint(tmp_path):
    "Two processes asking for the same checkpoint at once: one trains, the other waits and loads; the folder is whole."
    import subprocess, sys
    script = tmp_path / "trainer.py"; script.write_text(TWO_TRAINERS)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].split()[1] == "60"          # the same weights and history in both
    trainers = {line.split()[0] for line in (tmp_path / "steps.log").read_text().splitlines()}
    assert len(trainers) == 1, trainers                                         # trained once, by one process
    assert sum("waiting for another process" in e for _, e in outs) == 1        # the other waited
    (ck,) = [tmp_path / "ck" / n for n in folders(tmp_path / "ck")]
    assert checkpoint_step(ck) == 60 and not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")]
