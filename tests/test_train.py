"The trainer: every architecture learns, resume is bitwise identical, NaN stops cleanly, checkpoints are checked."
import json
from pathlib import Path

import pytest
import torch

from seqlab.archs import CharTokenizer, build_model
from seqlab.core import CheckpointError, SeqlabError
from seqlab.train import (TrainConfig, TrainingDiverged, batches_from_tokens, list_checkpoints, load_checkpoint,
                          load_model, save_checkpoint, train)

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
    with torch.no_grad(): assert torch.equal(lm.hooked(x), m(x))


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
