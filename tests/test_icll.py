"Tests for seqlab.icll: the in-context n-gram baselines, the config, zero-shot ids, and a tiny run."
import dataclasses

import pytest
import torch

from seqlab.core import BadInput, get_probe
from seqlab.icll import ICLLConfig, ICLLResult, ngram_backoff_dists, run_icll, zero_shot_ids
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
