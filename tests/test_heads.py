"Successor and n-gram heads: the OV scan on a hand-built shift, GQA accessors against a forward pass, n-gram scores on hand-made patterns, and both probes on the embedded model."
import dataclasses

import pytest
import torch

from seqlab.capture import capture
from seqlab.core import BadInput, get_probe
from seqlab.heads import (NgramConfig, SuccessorConfig, extended_embeddings, folded_unembed, head_inputs, icll_preset_name,
                          ngram_head_scores, ngram_scan, ordinal_tasks, ov_outputs, ov_pairs_for_ids, roman_numerals, run_ngram,
                          run_successor, shift_model, stacked_ov, succession_pairs, succession_scores)
from seqlab.regbench import ICLLModelsConfig


def _scan(model, n_items):
    ids = torch.arange(n_items)
    out = ov_outputs(head_inputs(model, extended_embeddings(model, ids, "embed")), *stacked_ov(model))
    return succession_scores(out, folded_unembed(model), ids, ov_pairs_for_ids(list(range(n_items))))


def test_shift_head_scores_one_and_random_heads_about_chance():
    scores = _scan(shift_model(n_items=16, d_model=32, n_heads=8, seed=1), 16)["pooled"]
    assert scores[0, 0].item() == 1.0
    others = scores.flatten()[1:]                      # 15 heads with random weights
    assert others.max().item() < 0.5
    assert abs(others.mean().item() - 1 / 16) < 0.06   # chance: one of 16 tokens


def test_shift_scan_equals_a_forward_pass_with_one_token():
    # with a single token in context each head attends to itself: hook_z @ W_O is exactly the OV output
    m = shift_model(seed=2)
    out = ov_outputs(head_inputs(m, extended_embeddings(m, torch.arange(10), "embed")), *stacked_ov(m))
    z = capture(m, torch.tensor([[4]]), ["blocks.0.attn.hook_z"], progress=False)["blocks.0.attn.hook_z"]
    direct = torch.einsum("hd,hdm->hm", z[0, 0], m.W_O(0))
    torch.testing.assert_close(direct, out[0, :, 4], atol=1e-4, rtol=1e-4)


def test_gqa_accessors_agree_with_brute_force_forward(smol):
    layer = 7
    names = [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern",
             f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
    c = capture(smol, ["Monday, Tuesday, Wednesday, Thursday"], names, progress=False)
    x = smol.ln1(layer)(c[names[0]])[0]                                            # [pos, d_model]
    v = torch.einsum("pd,hde->phe", x, smol.W_V(layer))                            # per query head, GQA expanded
    group = smol.arch.n_heads // smol.arch.n_kv_heads
    torch.testing.assert_close(v, c[names[1]][0].repeat_interleave(group, dim=1), atol=1e-4, rtol=1e-4)
    z = torch.einsum("hqk,khe->qhe", c[names[2]][0], v)
    torch.testing.assert_close(z, c[names[3]][0], atol=1e-4, rtol=1e-4)
    per_head = torch.einsum("qhe,hem->qhm", c[names[3]][0], smol.W_O(layer))
    torch.testing.assert_close(per_head.sum(1), c[names[4]][0], atol=1e-4, rtol=1e-4)


def test_roman_numerals_increase_and_tasks_have_288_reference_pairs():
    r = roman_numerals(20)
    assert r[16:19] == ["XVII", "XVIII", "XIX"] and len(set(r)) == 20
    tasks = ordinal_tasks()
    assert sum(len(t["items"]) - 1 + t["wrap"] for k, t in tasks.items() if k != "roman") == 288
    with pytest.raises(BadInput, match="1..3999"): roman_numerals(0)


def test_validity_mask_on_smollm2(smol):
    pairs = succession_pairs(smol.encode, ordinal_tasks())
    tab = {r["subtask"]: r for r in pairs.table()}
    assert "numbers/space" not in tab                     # " 1" is two tokens for SmolLM2: no space-prefixed number pair survives
    assert tab["numbers/bare"]["kept"] == 8               # 1->2 ... 8->9; 9->10 needs a two-token "10"
    assert tab["days/space"]["kept"] == 7 and tab["months/space"]["kept"] == 12
    assert pairs.n_pairs == sum(r["kept"] for r in pairs.table())
    with pytest.raises(BadInput, match="Unknown forms"): succession_pairs(smol.encode, ordinal_tasks(), forms=("shout",))


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


def test_successor_probe_on_embedded_model(smol):
    cfg = dataclasses.replace(SuccessorConfig.quick(), compare=("mlp0",), probe_steps=60, n_prompts_per_task=2)
    res = run_successor(smol, cfg)
    m = res.metrics
    assert len(m["heads"]) == 270 and m["heads"][0]["score"] >= m["heads"][-1]["score"]
    assert m["n_pairs"] == 296 and m["dropped_pairs"] == 534
    assert m["heads"][0]["score"] > 2 * m["chance_pooled"]
    assert m["ablation"]["best"] > m["ablation"]["random"]
    assert set(m) >= {"heads", "n_pairs", "dropped_pairs", "per_task", "mod10", "arithmetic_success", "ablation"}
    with pytest.raises(BadInput, match="extended-embedding"): run_successor(smol, dataclasses.replace(cfg, ext="nope"))


def test_ngram_probe_on_embedded_model(smol):
    res = run_ngram(smol, NgramConfig(n_seqs=2, seq_tokens=48, word_half_len=24, batch_size=2, icll=None))
    m = res.metrics
    assert len(m["heads"]) == 3 * 270 and {"layer", "head", "n", "score"} <= set(m["heads"][0])
    best = m["top"]["words"]["1"][0]
    assert best["score"] > 0.5 and best["score"] > 3 * best["baseline"]   # induction-like heads exist on repeated words
    assert m["ngram_layer"] == {} and "trained" not in m             # icll models skipped when asked
    assert any("not measured" in str(r[1]) for r in res.summary())
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


def test_heads_probes_are_registered_with_one_run_signature():
    for name in ("induction", "successor", "ngram"):
        p = get_probe(name)
        assert p.needs == "attention" and p.page == "11_heads"
        assert list(__import__("inspect").signature(p.run).parameters) == ["model", "cfg"]
