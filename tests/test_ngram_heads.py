"n-gram heads: scores on hand-made patterns, the scan through capture on a padded lab Transformer, the nested icll config, and the probe on the embedded model."
import pytest
import torch

from seqlab.core import BadInput, get_probe
from seqlab.ngram_heads import NgramConfig, icll_preset_name, ngram_head_scores, ngram_scan, run_ngram
from seqlab.regbench import ICLLModelsConfig
from seqlab.viz import figure


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
    res = run_ngram(smol, NgramConfig(n_seqs=2, seq_tokens=48, word_half_len=24, batch_size=2, icll=None))
    m = res.metrics
    assert len(m["heads"]) == 3 * 270 and {"layer", "head", "n", "score"} <= set(m["heads"][0])
    best = m["top"]["words"]["1"][0]
    assert best["score"] > 0.5 and best["score"] > 3 * best["baseline"]   # induction-like heads exist on repeated words
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
