"Tests for seqlab.icll: the in-context n-gram baselines, the config, zero-shot ids, and a tiny run."
import dataclasses

import pytest
import torch

from seqlab.core import BadInput, get_probe
from seqlab.icll import ICLLConfig, ICLLResult, ngram_backoff_dists, run_icll, select_on_validation, zero_shot_ids
from seqlab.regbench import LETTERS, ICLLModelsConfig, RegbenchConfig
from seqlab.train import TrainConfig
from seqlab.viz import figure


def test_ngram_baselines_hand_built():
    t = "ab|ab|ab"
    p1, p2, p3 = (ngram_backoff_dists(t, n) for n in (1, 2, 3))
    assert torch.allclose(p1[6, :2], torch.tensor([.6, .4]))
    assert torch.allclose(p2[6, :2], torch.tensor([0., 1.]))
    assert torch.allclose(p2[2, :2], torch.tensor([.5, .5]))       # '|' never followed by a letter yet: back off
    assert torch.allclose(p3[5, :2], torch.tensor([1., 0.]))
    # "abcabd": after the second 'b' the 2-gram has seen b->c once; the 3-gram context 'ab' also -> c
    q2, q3 = ngram_backoff_dists("abcabd", 2), ngram_backoff_dists("abcabd", 3)
    assert q2[4].argmax() == LETTERS.index("c") and q3[4].argmax() == LETTERS.index("c")
    assert torch.allclose(q2.sum(-1), torch.ones(5))



def test_config_nests_the_recipe_and_refuses_bad_values():
    with pytest.raises(BadInput, match="Unknown ICLL architectures"): ICLLConfig(archs=("gpt5",))
    q = ICLLConfig.quick()
    assert q.models == ICLLModelsConfig.quick()
    assert dataclasses.replace(q, seed=3).models.train.seed == 3
    assert ICLLConfig(**dataclasses.asdict(q)) == q
    p = get_probe("icll")
    assert p.needs == "any" and p.page == "10_icll" and p.result is ICLLResult and p.make_config(quick=True, seed=2).models.seed == 2


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    return tmp_path


def test_zero_shot_ids_and_tiny_icll_run(smol, tmp_home):
    ids, letter_ids = zero_shot_ids(smol, "ab|c")
    assert len(ids) == 4 and len(letter_ids) == 18 and len(set(letter_ids.tolist())) == 18
    models = ICLLModelsConfig(data=RegbenchConfig(string_len=(1, 4), max_chars=40), train_sizes=(8,), n_val=2, n_test=4,
                              d_model=16, n_layers=1, batch_size=4, train=TrainConfig(steps=3))
    cfg = ICLLConfig(models=models, archs=("transformer", "mamba2+ngram"), n_zero_shot=2, zero_shot_max_chars=30, progress=False)
    r = run_icll(smol, cfg)
    m = r.metrics
    assert set(m["accuracy"]) == {"transformer", "mamba2+ngram"} and set(m["baselines"]) == {"1gram", "2gram", "3gram"}
    assert all(0 <= v <= 1 for v in m["accuracy"].values()) and all(0 <= v <= 1 for v in m["tvd"].values())
    assert 0 <= m["zero_shot"]["strict_accuracy"] <= m["zero_shot"]["restricted_accuracy"] + 1e-9   # a letter argmax over the whole vocabulary is the letter argmax
    assert m["train_sizes"] == [8] and m["baselines_oracle"]["tvd"] == 0.0
    assert r.summary() and ICLLResult.from_dict(r.to_dict()).metrics == m
    assert figure(r).data
    with pytest.raises(BadInput, match="n_zero_shot"): run_icll(None, cfg)


def test_ngram_layer_lets_a_trained_lstm_learn_in_context(tmp_home):
    """The paper's hybrid claim on a tiny case, trained here: with the same data, size and 160 updates, the LSTM with
    hard-wired n-gram layers predicts valid next letters clearly more often than the plain LSTM, and beats the in-context
    1-gram (letter frequencies of the prompt), which a model that learned no in-context statistics cannot beat."""
    models = ICLLModelsConfig(data=RegbenchConfig(string_len=(1, 9), max_chars=64), train_sizes=(200,), n_val=0, n_test=32,
                              d_model=32, n_layers=2, batch_size=16, train=TrainConfig(steps=160, lr=1e-2, eval_every=0))
    m = run_icll(None, ICLLConfig(models=models, archs=("lstm", "lstm+ngram"), n_zero_shot=0, progress=False)).metrics
    acc, unigram = m["accuracy"], m["baselines"]["1gram"]["accuracy"]
    assert acc["lstm+ngram"] > acc["lstm"] + 0.1, acc
    assert acc["lstm+ngram"] > unigram + 0.1, (acc, unigram)


def test_selection_reads_validation_and_reports_test():
    "The setting is chosen on the validation score (the best test score elsewhere must not leak in), per architecture."
    import pandas as pd
    rows = [("lr=a", "val_accuracy.lstm", .5), ("lr=b", "val_accuracy.lstm", .7), ("lr=a", "accuracy.lstm", .9), ("lr=b", "accuracy.lstm", .6),
            ("lr=a", "val_accuracy.transformer", .8), ("lr=b", "val_accuracy.transformer", .4),
            ("lr=a", "accuracy.transformer", .3), ("lr=b", "accuracy.transformer", .95)]
    iv = pd.DataFrame([(s, m, 3, v, v - .1, v + .1) for s, m, v in rows], columns=["setting", "metric", "n", "mean", "lo", "hi"])
    sel = select_on_validation(iv).set_index("arch")
    assert sel.loc["lstm", "setting"] == "lr=b" and sel.loc["lstm", "test"] == .6
    assert sel.loc["transformer", "setting"] == "lr=a" and sel.loc["transformer", "test"] == .3
    with pytest.raises(BadInput, match="ranks by"): select_on_validation(iv, metric="loss")
    with pytest.raises(BadInput, match="No validation accuracy"): select_on_validation(iv, archs=["mamba2"])
