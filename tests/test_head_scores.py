"""head_scores: the per-head pattern scores shared by the head probes, on hand-made patterns and a tiny lab Transformer."""
import math

import pytest
import torch

from seqlab.archs import CharTokenizer, Transformer, TransformerConfig
from seqlab.core import BadInput
from seqlab.head_scores import (induction_scores, ngram_exact_scores, ngram_exact_summary, ngram_head_scores, pattern_scores,
                                prev_token_scores, repeated_random_tokens, top_heads)
from seqlab.heads import InductionConfig, run_induction
from seqlab.zoo import as_lab_model

CHARS = "abcdefghijklmnop"


def toy(seed=0):
    torch.manual_seed(seed)
    m = Transformer(TransformerConfig(d_vocab=len(CHARS) + 1, d_model=24, n_layers=3, n_heads=2, d_head=8, init_std=0.3))
    return as_lab_model(m, CharTokenizer(CHARS, bos="|"), "toy")


def test_pattern_scores_reproduce_the_induction_probe():
    m = toy()
    cfg = InductionConfig(n_seqs=3, seq_len=6, batch_size=2, seed=4)
    res = run_induction(m, cfg)
    got = pattern_scores(m, cfg.n_seqs, cfg.seq_len, seed=cfg.seed, batch_size=cfg.batch_size)
    assert torch.equal(got["induction"], torch.tensor(res.metrics["induction_scores"]))
    assert torch.equal(got["prev_token"], torch.tensor(res.metrics["prev_token_scores"]))
    part = pattern_scores(m, 3, 6, seed=4, batch_size=2, layers=[2])
    assert part["induction"][:2].isnan().all() and torch.equal(part["induction"][2], got["induction"][2])
    with pytest.raises(BadInput, match="layers 0..2"): pattern_scores(m, 2, 6, layers=[3])


def test_scores_on_hand_made_patterns():
    L, off = 3, 1; n = off + 2 * L
    pat = torch.zeros(2, 3, n, n)
    for i in range(n):
        pat[:, 0, i, i - L + 1 if i >= off + L else 0] = 1    # induction
        pat[:, 1, i, max(i - 1, 0)] = 1                        # previous token
        pat[:, 2, i, i] = 1                                    # itself
    ind, prev = induction_scores(pat, L, off)
    assert ind[0].tolist() == [1.0, 0.0, 0.0] and prev[0].tolist()[1:] == [1.0, 0.0]
    assert torch.equal(prev_token_scores(pat), prev) and torch.equal(prev_token_scores(pat[0]), prev[0])
    toks = torch.tensor([[0, 1, 2, 0, 1, 2, 0]])
    r = ngram_head_scores(pat[:1], toks, ns=(1, 2))[0]          # [head, n, (score, baseline, count)]
    assert r.shape == (3, 2, 3) and (r[:, 1, 2] <= r[:, 0, 2]).all()   # a 2-gram match is a 1-gram match
    assert r[2, 0, 0] == 0                                       # attending to itself is never a match


def test_top_heads_order_ties_and_nan():
    s = torch.tensor([[0.2, 0.9, 0.2], [math.nan, 0.5, 0.9]])
    assert top_heads(s, 3) == [(0, 1), (1, 2), (1, 1)]          # ties in index order
    assert top_heads(s, 5)[-1] == (0, 2) and top_heads(s, 0) == []
    with pytest.raises(BadInput, match="k must be in 0..5"): top_heads(s, 6)


def test_repeated_random_tokens_copy_and_refuse():
    m = toy()
    t = repeated_random_tokens(m, 4, 5, torch.Generator().manual_seed(0))
    assert t.shape == (4, 11) and (t[:, 0] == m.bos_token_id).all() and torch.equal(t[:, 1:6], t[:, 6:])
    with pytest.raises(BadInput, match="seq_len >= 2"): repeated_random_tokens(m, 1, 1, torch.Generator())


def _longest_match_pattern(tokens, max_n):
    "Attend, at every query, uniformly to the keys with the longest match (up to max_n tokens); to itself where nothing matches."
    from seqlab.archs import ngram_match
    T = tokens.shape[1]
    pat = torch.zeros(1, 1, T, T)
    Ms = [ngram_match(tokens, n) > 0 for n in range(1, max_n + 1)]
    for i in range(T):
        best = next((M[0, i] for M in reversed(Ms) if M[0, i].any()), None)
        if best is None: pat[0, 0, i, i] = 1
        else: pat[0, 0, i] = best.float() / best.sum()
    return pat


def test_exact_n_scores_on_a_hand_built_sequence():
    # b d x a d y a d: at the last d (after a) the key after "a d" matches 2 tokens, the key after "b d" exactly 1
    seq = torch.tensor([[0, 1, 2, 3, 1, 4, 3, 1]])
    pat = torch.zeros(1, 3, 8, 8)
    for i in range(8):
        pat[0, 2, i, :i + 1] = 1 / (i + 1)                                     # uniform
        if i not in (4, 6, 7): pat[0, :2, i, i] = 1
    for i, (longest, first) in {4: (2, 2), 6: (4, 4), 7: (5, 2)}.items():
        pat[0, 0, i, longest] = 1; pat[0, 1, i, first] = 1
    s = ngram_exact_summary(ngram_exact_scores(pat, seq, ns=(1, 2))[0])     # [head, n]
    assert s["exact_queries"][:, 0].tolist() == [3.0] * 3 and s["contested_queries"][:, 0].tolist() == [1.0] * 3
    torch.testing.assert_close(s["exact"][:, 0], torch.tensor([2 / 3, 1.0, (1 / 5 + 1 / 7 + 1 / 8) / 3]))
    torch.testing.assert_close(s["longer_share"][:, 0], torch.tensor([1.0, 0.0, 0.5]))
    assert s["exact_queries"][:, 1].tolist() == [1.0] * 3                    # only query 7 has a key matching exactly 2 ("a d")
    assert s["contested_queries"][:, 1].tolist() == [0.0] * 3 and s["longer_share"][:, 1].isnan().all()
    # the old score cannot tell heads 0 and 1 apart at n = 1: both put all their attention on M_1
    r = ngram_head_scores(pat, seq, ns=(1,))[0, :2, 0]
    torch.testing.assert_close(r[:, 0] / r[:, 2], torch.ones(2))


def test_exact_n_scores_separate_longest_match_from_uniform_on_random_tokens():
    toks = torch.randint(0, 3, (1, 60), generator=torch.Generator().manual_seed(0))   # 3 symbols: many nested matches
    ns = (1, 2, 3)
    oracle = ngram_exact_summary(ngram_exact_scores(_longest_match_pattern(toks, 4), toks, ns)[0, 0])
    assert (oracle["contested_queries"] > 5).all()
    torch.testing.assert_close(oracle["longer_share"], torch.ones(3))        # never attends to a shorter match when a longer exists
    assert (oracle["longer_share_uniform"] < 0.8).all()
    uni = torch.tril(torch.ones(60, 60)) / torch.arange(1, 61)[:, None]
    u = ngram_exact_summary(ngram_exact_scores(uni[None, None], toks, ns)[0, 0])
    torch.testing.assert_close(u["exact"], u["exact_uniform"]); torch.testing.assert_close(u["longer_share"], u["longer_share_uniform"])
