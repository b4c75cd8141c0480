"""n-gram heads: scores on hand-made patterns, the scan through capture on a padded lab Transformer, the nested icll config,
the ablation test (a hand-built copying head against random heads; the entries of a tiny run), and the probe on the embedded model."""
import json

import pytest
import torch

from seqlab.archs import CharTokenizer, Transformer, TransformerConfig
from seqlab.core import BadInput, get_probe
from seqlab.head_scores import ngram_head_scores
from seqlab.ngram_heads import (NgramCausalConfig, NgramConfig, exact_match_metrics, icll_ablation, icll_preset_name, icll_transformer_heads,
                                ngram_scan, ngram_scan_exact, regbench_instances, run_ngram)
from seqlab.regbench import LETTERS, SEP, ICLLModelsConfig, RegbenchConfig, icll_data
from seqlab.train import TrainConfig
from seqlab.viz import figure
from seqlab.zoo import as_lab_model

CONTROL_FIELDS = {"heads", "op", "effect", "random", "exceeds"}   # contract 2's dict, as every causal entry carries it


def test_ngram_scores_on_hand_made_patterns():
    toks = torch.tensor([[5, 6, 7, 5, 6, 7, 5]])
    T = toks.shape[1]
    pat = torch.zeros(1, 3, T, T)
    for i in range(T):
        pat[0, 0, i, i - 2 if i >= 3 else 0] = 1.0          # the token after the previous occurrence of x_i
        pat[0, 1, i, i] = 1.0                               # self
        pat[0, 2, i, : i + 1] = 1.0 / (i + 1)               # uniform
    r = ngram_head_scores(pat, toks, ns=(1, 2, 3))[0]       # [head, n, (score, baseline, count)]
    mean = r[..., 0] / r[..., 2]; base = r[..., 1] / r[..., 2]
    assert torch.allclose(mean[0], torch.ones(3)) and torch.allclose(mean[1], torch.zeros(3))
    torch.testing.assert_close(mean[2], base[2])            # a uniform head scores its own baseline
    assert r[0, :, 2].tolist() == [4.0, 3.0, 2.0]           # positions with a match: fewer as the context grows


def test_ngram_probe_on_embedded_model(smol):
    res = run_ngram(smol, NgramConfig(n_seqs=2, seq_tokens=48, word_half_len=24, batch_size=2, icll=None,
                                      causal=NgramCausalConfig(k=2, draws=3)))
    m = res.metrics
    c = m["causal"]["icll"]                                           # the ablation test on SmolLM2's top n=2 heads
    assert CONTROL_FIELDS <= set(c) and len(c["heads"]) == 2 and c["random"]["draws"] == 3 and c["effect"]["n"] == 2
    top2 = [[h["layer"], h["head"]] for h in m["top"]["dfa"]["2"][:2]]
    assert c["heads"] == top2 and 0 <= c["accuracy"]["clean"] <= 1 and c["model"] == smol.name
    assert any(r[0].startswith("ablate") for r in res.summary())
    json.dumps(c)
    assert len(m["heads"]) == 3 * 270 and {"layer", "head", "n", "score"} <= set(m["heads"][0])
    best = m["top"]["words"]["1"][0]
    assert best["score"] > 0.5 and best["score"] > 3 * best["baseline"]   # induction-like heads exist on repeated words
    ex = m["exact"]["words"]["top"]["1"][0]                          # the top n=1 head follows the longest match, not any match
    assert ex["contested_queries"] > 0 and ex["longer_share"] > ex["longer_share_uniform"] + 0.2 and ex["lo"] <= ex["longer_share"] <= ex["hi"]
    assert torch.tensor(m["exact"]["dfa"]["longer_share"]).shape == (30, 9, 3)
    assert m["ngram_layer"] == {} and "trained" not in m             # icll models skipped when asked
    assert any("not measured" in str(r[1]) for r in res.summary())
    assert figure(res).data
    with pytest.raises(BadInput, match="ns must be"): run_ngram(smol, NgramConfig(ns=(0,)))


def test_ngram_scan_on_a_lab_transformer_ignores_batching_and_padding():
    from seqlab.archs import CharTokenizer, Transformer, TransformerConfig
    from seqlab.zoo import as_lab_model
    torch.manual_seed(0)
    net = as_lab_model(Transformer(TransformerConfig(d_vocab=6, n_ctx=32, d_model=16, n_layers=2, n_heads=2)),
                       CharTokenizer("abcde", pad="."), "net")
    toks = torch.randint(0, 5, (4, 20))
    full = torch.ones_like(toks)
    s = ngram_scan(net, toks, (1, 2), batch_size=4, attention_mask=full)
    assert s.shape == (2, 2, 2, 2)
    torch.testing.assert_close(ngram_scan(net, toks, (1, 2), batch_size=1), s)
    # the same sequences right-padded with token 5 to length 26: the padding must not enter any score
    padded = torch.cat([toks, torch.full((4, 6), 5)], 1)
    mask = torch.cat([full, torch.zeros(4, 6, dtype=torch.long)], 1)
    torch.testing.assert_close(ngram_scan(net, padded, (1, 2), batch_size=3, attention_mask=mask), s)
    # the uniform baseline of a causal model depends only on the tokens: same for every head
    assert torch.allclose(s[..., 1], s[0, 0, :, 1].expand(2, 2, 2))


def test_ngram_config_nests_the_icll_models_config():
    with pytest.raises(BadInput, match="ngram_layer_archs"): NgramConfig(ngram_layer_archs=("transformer",))
    assert NgramConfig.quick().icll == ICLLModelsConfig.quick() and NgramConfig().icll == ICLLModelsConfig()
    assert icll_preset_name(NgramConfig.quick().icll) == "quick" and icll_preset_name(NgramConfig().icll) == "full"
    cfg = get_probe("ngram").make_config(quick=True, seed=2)
    assert cfg.icll.seed == 2 and cfg.icll.train.seed == 2 and icll_preset_name(cfg.icll) == "quick"   # the models follow the seed
    assert NgramConfig(icll=None).icll is None


from conftest import copier   # the hand-built copying model shared with test_verbatim


def test_ablating_an_in_context_unigram_head_lowers_icll_accuracy_more_than_random_heads():
    # the copier predicts the letters seen so far (an in-context 1-gram model): above chance on REGBENCH, which ablating it loses
    m = copier(LETTERS + SEP)
    rows = regbench_instances(8, 48, seed=0)
    ab = icll_ablation(m, [m.encode(r["text"]) for r in rows], rows, m.encode(LETTERS), [(0, 0)], n_draws=5)
    assert CONTROL_FIELDS <= set(ab) and ab["n_sequences"] == 8
    assert ab["accuracy"]["clean"] > ab["accuracy"]["ablated"] + 0.05              # measured: 0.28 -> 0.18
    assert ab["effect"]["lo"] > max(ab["random"]["effects"]) and ab["exceeds"] == 0
    loss = icll_ablation(m, [m.encode(r["text"]) for r in rows], rows, m.encode(LETTERS), [(0, 0)], n_draws=5, metric="loss")
    # the letter loss moves far more than under any random head (down, here: the copier is overconfident where it is wrong)
    assert abs(loss["effect"]["mean"]) > 10 * max(map(abs, loss["random"]["effects"])) and "accuracy" not in loss
    json.dumps(ab)


def test_trained_transformer_gets_its_causal_entry():
    # a tiny icll recipe (a few updates): the entry's shape, not the science
    icfg = ICLLModelsConfig(data=RegbenchConfig(string_len=(1, 6), max_chars=40), train_sizes=(16,), n_val=0, n_test=6, d_model=16,
                            batch_size=8, train=TrainConfig(steps=3, lr=1e-3, eval_every=0), progress=False)
    tr = icll_transformer_heads(icfg, icll_data(icfg), (1, 2), NgramCausalConfig(draws=3))
    c = tr["causal"]
    assert CONTROL_FIELDS <= set(c) and len(c["heads"]) == 1 and c["n"] == 2 and c["effect"]["n"] == 6
    assert all(len(d) == 1 and d[0] != c["heads"][0] for d in c["random"]["heads"])   # single heads of the other three
    best = tr["top"]["2"][0]
    assert c["heads"] == [[best["layer"], best["head"]]]


def test_exact_match_scores_of_a_uniform_head_are_its_baselines_through_capture():
    # the copier's L0H0 attends uniformly to the prefix: on every n its exactly-n score and its longer-match share are the uniform ones
    m = copier(LETTERS + SEP)
    rows = regbench_instances(3, 40, seed=3)
    toks = torch.tensor([m.encode(r["text"]) for r in rows])
    padded = torch.cat([toks, torch.full((3, 5), m.tokenizer.pad_token_id)], 1)
    mask = torch.cat([torch.ones_like(toks), torch.zeros(3, 5, dtype=torch.long)], 1)
    s, ex = ngram_scan_exact(m, padded, (1, 2), batch_size=2, attention_mask=mask)
    em = exact_match_metrics(s, ex, (1, 2), top_k=None)
    l0h0 = [r for r in em["top"]["1"] + em["top"]["2"] if (r["layer"], r["head"]) == (0, 0)]
    assert len(l0h0) == 2 and all(r["contested_queries"] > 10 for r in l0h0)
    for r in l0h0:
        assert abs(r["exact"] - r["exact_uniform"]) < 1e-4 and abs(r["longer_share"] - r["longer_share_uniform"]) < 1e-4
        assert r["lo"] <= r["longer_share"] <= r["hi"] and r["n_seqs"] == 3
    torch.testing.assert_close(ex, ngram_scan_exact(m, toks, (1, 2), batch_size=3)[1])   # padding and batching change nothing
    assert all(r["score_lo"] <= r["score"] <= r["score_hi"] for r in l0h0)
