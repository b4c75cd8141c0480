"""Interventions on hand-built models where the answer is known: a copying head, patching that restores the clean run,
a batched head sweep equal to the one-head-at-a-time loop, Mamba-2 heads, and a tiny Hugging Face Llama."""
import json, math

import pytest
import torch

from seqlab.archs import CharTokenizer, Mamba2, Mamba2Config, Transformer, TransformerConfig
from seqlab.capture import capture, hooks, run_with_hooks
from seqlab.core import BadInput
from seqlab.families import write_tiny
from seqlab.interventions import (Intervention, ablation_control, final_norm, generate, head_set_effect, head_specs, head_sweep,
                                  logit_diff, masked_loss, mean_loss, patch_heads, patch_residual, path_patch_heads, random_heads,
                                  run_intervened, run_stacked, steering_vector)
from seqlab.zoo import as_lab_model, load, write_tiny_llama

ALPHA = list("abcdefghij")            # 10 tokens; every test model has d_model != d_vocab


def copy_model(n_heads: int = 1, seed: int = 0):
    "One attention-only layer; head 0 attends uniformly to the prefix and writes each token's identity where the unembedding reads."
    V, d = len(ALPHA), 24
    cfg = TransformerConfig(d_vocab=V, d_model=d, n_layers=1, n_heads=n_heads, d_head=V, d_mlp=0, norm="rmsnorm", positional="rope")
    torch.manual_seed(seed)
    m = Transformer(cfg)
    with torch.no_grad():
        m.embed.weight.zero_(); m.embed.weight[:, :V] = torch.eye(V)          # token i -> e_i (first V dims)
        qkv = m.blocks[0].attn.qkv.weight.view(3, n_heads, V, d)
        qkv[0, 0] = 0; qkv[1, 0] = 0                                           # head 0: uniform attention
        qkv[2, 0] = 0; qkv[2, 0, :, :V] = torch.eye(V)                         # V: read the token
        W_O = m.blocks[0].attn.out.weight.view(d, n_heads, V)
        W_O[:, 0] = 0; W_O[V:2 * V, 0] = torch.eye(V)                          # O: write it into dims V..2V
        m.unembed.weight.zero_(); m.unembed.weight[:, V:2 * V] = torch.eye(V)  # read only the head's subspace
    return as_lab_model(m, CharTokenizer(ALPHA), "copy")


def random_transformer(seed=0, n_layers=2, n_heads=3):
    torch.manual_seed(seed)
    m = Transformer(TransformerConfig(d_vocab=len(ALPHA), d_model=24, n_layers=n_layers, n_heads=n_heads, d_head=8, init_std=0.3))
    return as_lab_model(m, CharTokenizer(ALPHA), "rand")


def loop_sweep(model, inputs, op, hook, n_heads):
    "The reference: one run_intervened per head."
    toks, mask = model.tokenize(inputs)
    ids = torch.arange(len(toks))
    clean = mean_loss(run_intervened(model, inputs, []), toks, mask, ids)
    out = torch.empty(model.n_layers, n_heads)
    for l in range(model.n_layers):
        for h in range(n_heads):
            logits = run_intervened(model, inputs, [Intervention(hook.format(layer=l), op, heads=h)])
            out[l, h] = (mean_loss(logits, toks, mask, ids) - clean).mean()
    return out


TEXTS = ["abcabcab", "jihgfedc", "aabbccdd", "fgfgfgfg", "dcba"]


def test_ablating_the_copy_head_removes_copying():
    m = copy_model()
    logits = run_intervened(m, ["abcab"], [])
    assert set(logits[0].argmax(-1).tolist()) <= {0, 1, 2}                     # predicts tokens it has seen
    assert logits[0, -1, ALPHA.index("a")] > logits[0, -1, ALPHA.index("j")]
    ablated = run_intervened(m, ["abcab"], [Intervention("blocks.0.attn.hook_z", "zero", heads=0)])
    torch.testing.assert_close(ablated, torch.zeros_like(ablated))            # nothing left to copy from


def test_patching_the_clean_head_restores_the_clean_logits():
    m = copy_model()
    clean, corrupted = ["abcab"], ["hijhi"]
    patched = run_intervened(m, corrupted, [Intervention("blocks.0.attn.hook_z", "patch", heads=0, source=clean)])
    assert torch.equal(patched, run_intervened(m, clean, []))
    norm = patch_heads(m, clean, corrupted, logit_diff(ALPHA.index("a"), ALPHA.index("h")))
    torch.testing.assert_close(norm, torch.ones(1, 1))


def test_patch_residual_equals_a_manual_forward():
    m = random_transformer()
    clean, corrupted = ["abcdefg", "gfedcba"], ["abcjefg", "gfejcba"]
    metric = logit_diff([3, 1], [9, 4])
    got = patch_residual(m, clean, corrupted, metric)
    ct, rt = m.tokenize(clean)[0], m.tokenize(corrupted)[0]
    cache = capture(m, ct, [f"blocks.{l}.hook_resid_pre" for l in range(2)] + ["logits"], progress=False)
    ids, ones = torch.arange(2), torch.ones_like(rt)
    m_clean = metric(cache["logits"], ct, ones, ids).mean()
    m_corr = metric(m.forward(rt), rt, ones, ids).mean()
    for l in range(2):
        for p in range(rt.shape[1]):
            def put(x, hook, l=l, p=p): x = x.clone(); x[:, p] = cache[f"blocks.{l}.hook_resid_pre"][:, p]; return x
            with hooks(m, [(f"blocks.{l}.hook_resid_pre", put)]): logits = m.forward_tokens(rt, ones, hooked=True)
            want = (metric(logits, rt, ones, ids).mean() - m_corr) / (m_clean - m_corr)
            torch.testing.assert_close(got[l, p], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, 3], torch.tensor(1.0))                  # the changed token carries everything at layer 0


@pytest.mark.parametrize("op", ["mean", "zero"])
@pytest.mark.parametrize("branch", [True, False])
def test_head_sweep_equals_the_loop(op, branch):
    m = random_transformer(seed=1)
    got = head_sweep(m, TEXTS, mean_loss, op=op, branch=branch, batch_size=2)
    want = loop_sweep(m, TEXTS, op, "blocks.{layer}.attn.hook_z", 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got.abs().max() > 1e-3


def test_head_sweep_small_budget_and_subsets():
    m = random_transformer(seed=2)
    full = head_sweep(m, TEXTS, mean_loss)
    part = head_sweep(m, TEXTS, mean_loss, layers=[1], heads=[0, 2], budget_mb=0.001)   # one list per forward
    torch.testing.assert_close(part[1, [0, 2]], full[1, [0, 2]], atol=1e-5, rtol=0)
    assert part[0].isnan().all() and part[1, 1].isnan()


def test_specs_round_trip_through_json():
    specs = [Intervention("blocks.0.attn.hook_z", "mean", heads=[0, 2], positions=-1, source=["abc", [1, 2, 3]]),
             Intervention("blocks.1.hook_resid_pre", "add", vector=[[0.5] * 4] * 2, scale=-2.0, rows=0),
             Intervention("blocks.0.ssm.hook_state", "resample", heads=1, seed=7, source=["ab", "cd"])]
    back = [Intervention.from_dict(d) for d in json.loads(json.dumps([s.to_dict() for s in specs]))]
    assert back == specs
    with pytest.raises(Exception, match="no fields"): Intervention.from_dict({"hook": "x", "layer": 3})


def test_compose_in_order():
    m = random_transformer()
    h = "blocks.1.hook_resid_pre"
    v = torch.randn(24)
    both = [Intervention(h, "zero", positions=2), Intervention(h, "add", vector=v, positions=[2, 3])]
    _, cap = run_intervened(m, ["abcde"], both, names=[h])
    _, clean = run_intervened(m, ["abcde"], [], names=[h])
    torch.testing.assert_close(cap[h][0, 2], v)
    torch.testing.assert_close(cap[h][0, 3], clean[h][0, 3] + v)
    torch.testing.assert_close(cap[h][0, 4], clean[h][0, 4])


def test_resample_and_mean_values():
    m = random_transformer()
    h = "blocks.0.hook_resid_pre"
    spec = Intervention(h, "resample", seed=3, source=TEXTS[:4])
    _, cap = run_intervened(m, TEXTS[:4], [spec], names=[h])
    _, src = run_intervened(m, TEXTS[:4], [], names=[h])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cap[h], src[h][perm])
    sv = steering_vector(m, ["aaaa"], ["bbbb"], h)
    torch.testing.assert_close(sv, m.W_E[0] - m.W_E[1])                       # hook_resid_pre of layer 0 is the embedding


def test_path_patching_is_the_frozen_scale_direct_path():
    m = copy_model(n_heads=2, seed=3)
    clean, corrupted = ["abcab"], ["hijhi"]
    metric = logit_diff(ALPHA.index("a"), ALPHA.index("h"))
    got = path_patch_heads(m, clean, corrupted, metric)
    z = "blocks.0.attn.hook_z"
    c = capture(m, clean, [z, "logits"], progress=False)
    r = capture(m, corrupted, [z, "blocks.0.hook_resid_post", "logits"], progress=False)
    x = r["blocks.0.hook_resid_post"]
    sigma = (x.pow(2).mean(-1, keepdim=True) + m.hooked.ln_final.eps).sqrt()
    ids, ones = torch.arange(1), torch.ones(1, 5, dtype=torch.long)
    for h in range(2):
        delta = (c[z] - r[z])[:, :, h] @ m.W_O(0)[h]
        logits = r["logits"] + (delta / sigma * m.hooked.ln_final.w) @ m.W_U
        want = (metric(logits, None, ones, ids) - metric(r["logits"], None, ones, ids)) / (metric(c["logits"], None, ones, ids) - metric(r["logits"], None, ones, ids))
        torch.testing.assert_close(got[0, h], want[0], atol=1e-5, rtol=1e-5)


def tiny_mamba():
    torch.manual_seed(0)
    m = Mamba2(Mamba2Config(d_vocab=len(ALPHA), d_model=16, n_layers=2, d_head=8, d_state=4, chunk_size=4))
    return as_lab_model(m, CharTokenizer(ALPHA), "mamba")


def test_mamba2_state_and_decay_heads():
    m = tiny_mamba()
    text = ["abcdefghijabcdefghij"]                                         # 20 tokens, 5 chunks of 4
    clean = run_intervened(m, text, [])
    state = run_intervened(m, text, [Intervention("blocks.0.ssm.hook_state", "zero", heads=1, positions=1)])
    torch.testing.assert_close(state[:, :8], clean[:, :8])                 # before the end of chunk 1: untouched
    assert (state[:, 8:] - clean[:, 8:]).abs().amax(-1).min() > 1e-6        # every position after it moves
    decay = run_intervened(m, text, [Intervention("blocks.1.ssm.hook_decay", "scale", heads=0, positions=5, scale=0.0)])
    torch.testing.assert_close(decay[:, :5], clean[:, :5])
    assert (decay[:, 5:] - clean[:, 5:]).abs().max() > 1e-6
    _, cap = run_intervened(m, text, [Intervention("blocks.0.ssm.hook_state", "zero", heads=1, positions=1)], names=["blocks.0.ssm.hook_state"])
    assert cap["blocks.0.ssm.hook_state"][0, 1, 1].abs().max() == 0


def test_mamba2_head_sweep_equals_the_loop():
    m = tiny_mamba()
    got = head_sweep(m, TEXTS, mean_loss, hook="blocks.{layer}.ssm.hook_x")
    torch.testing.assert_close(got, loop_sweep(m, TEXTS, "mean", "blocks.{layer}.ssm.hook_x", m.arch.n_heads), atol=1e-5, rtol=0)


def test_generation_applies_the_specs_at_every_step():
    m = random_transformer()
    spec = Intervention("blocks.0.attn.hook_z", "zero", heads=1)
    out, cap = generate(m, ["abc", "hij"], [spec], max_new_tokens=5, names=["blocks.1.hook_resid_pre"])
    for p, o in zip(["abc", "hij"], out):
        toks = m.tokenize([p])[0]
        for t in o:
            nxt = int(run_intervened(m, toks, [spec])[0, -1].argmax())
            assert nxt == t
            toks = torch.cat([toks, torch.tensor([[nxt]])], 1)
    assert cap["blocks.1.hook_resid_pre"].shape[:2] == (2, 8)
    assert out != generate(m, ["abc", "hij"], [], max_new_tokens=5)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load(str(write_tiny_llama(tmp_path_factory.mktemp("llama"))), progress=False)


def test_tiny_llama_sweep_and_patching(llama):
    texts = ["Hello there", "The cat sat", "ab ab ab ab"]
    got = head_sweep(llama, texts, mean_loss)
    torch.testing.assert_close(got, loop_sweep(llama, texts, "mean", "blocks.{layer}.attn.hook_z", 4), atol=1e-5, rtol=0)
    clean, corrupted = ["The cat sat"], ["The bat sat"]
    metric = logit_diff(llama.encode("s")[0], llama.encode("x")[0])
    whole = patch_residual(llama, clean, corrupted, metric, layers=[0])
    changed = [p for p in range(whole.shape[1]) if llama.tokenize(clean)[0][0, p] != llama.tokenize(corrupted)[0][0, p]]
    torch.testing.assert_close(whole[0, [p for p in range(whole.shape[1]) if p not in changed]], torch.zeros(whole.shape[1] - len(changed)), atol=1e-5, rtol=0)
    assert len(changed) == 1
    torch.testing.assert_close(whole[0, changed[0]], torch.tensor(1.0))      # at layer 0 the changed token carries it all
    p = path_patch_heads(llama, clean, corrupted, metric)
    assert p.shape == (2, 4) and torch.isfinite(p).all()


def test_random_heads_from_all_layers_reproducible_and_excluding():
    m = random_transformer(n_layers=3, n_heads=4)
    ex = [(0, 0), (2, 3)]
    draws = random_heads(m, 3, 50, seed=5, exclude=ex)
    assert draws == random_heads(m, 3, 50, seed=5, exclude=ex) and draws != random_heads(m, 3, 50, seed=6, exclude=ex)
    assert all(len(set(d)) == 3 and not set(d) & set(ex) for d in draws)
    assert {l for d in draws for l, _ in d} == {0, 1, 2}                      # every layer is drawn from
    assert {h for d in draws for h in d} == {(l, h) for l in range(3) for h in range(4)} - set(ex)
    with pytest.raises(BadInput, match="0 < k <= 10"): random_heads(m, 11, 1, exclude=ex)


def two_layer_copier(seed=0):
    "copy_model's copying head at L0H0; every other head (layer 0 and 1) random with a small output."
    V, d, H = len(ALPHA), 24, 3
    cfg = TransformerConfig(d_vocab=V, d_model=d, n_layers=2, n_heads=H, d_head=V, d_mlp=0, norm="rmsnorm", positional="rope")
    torch.manual_seed(seed)
    m = Transformer(cfg)
    with torch.no_grad():
        m.embed.weight.zero_(); m.embed.weight[:, :V] = torch.eye(V)
        for l in range(2): m.blocks[l].attn.out.weight.mul_(0.05)               # small outputs everywhere ...
        qkv = m.blocks[0].attn.qkv.weight.view(3, H, V, d)
        qkv[0, 0] = 0; qkv[1, 0] = 0; qkv[2, 0] = 0; qkv[2, 0, :, :V] = torch.eye(V)
        W_O = m.blocks[0].attn.out.weight.view(d, H, V)
        W_O[:, 0] = 0; W_O[V:2 * V, 0] = torch.eye(V)                          # ... except the copier's
        m.unembed.weight.zero_(); m.unembed.weight[:, V:2 * V] = 4 * torch.eye(V)
    return as_lab_model(m, CharTokenizer(ALPHA), "copier")


PAIRS = ["abababab", "cdcdcdcd", "efefefef", "ghghghgh", "ijijijij", "acacacac"]


def test_ablation_control_singles_out_the_copying_head():
    m = two_layer_copier()
    late = torch.zeros(len(PAIRS), 8); late[:, 4:] = 1                           # the first positions have little to copy from
    ctl = ablation_control(m, PAIRS, masked_loss(late), [(0, 0)], n_draws=8, op="mean")
    assert ctl["exceeds"] == 0 and ctl["effect"]["mean"] > max(ctl["random"]["effects"])
    assert ctl["effect"]["lo"] > 0.1 and ctl["effect"]["n"] == len(PAIRS)        # losing the copier costs loss on every input
    assert {l for d in ctl["random"]["heads"] for l, _ in d} == {0, 1} and [0, 0] not in [h for d in ctl["random"]["heads"] for h in d]
    assert ctl["random"]["lo"] <= ctl["random"]["mean"] <= ctl["random"]["hi"]
    json.dumps(ctl)


@pytest.mark.parametrize("op", ["mean", "zero"])
def test_head_set_effect_equals_a_manual_ablation(op):
    m = random_transformer(n_layers=2, n_heads=3)
    heads, ref = [(0, 2), (1, 0), (1, 2)], ["jjjjhhh", "abcdefa"]
    got = head_set_effect(m, TEXTS, mean_loss, heads, op=op, reference=ref, batch_size=2)
    names = [f"blocks.{l}.attn.hook_z" for l in range(2)]
    cap = capture(m, ref, names, progress=False)
    mask = m.tokenize(ref)[1].bool()
    means = {n: cap[n][mask].mean(0) for n in names}                           # [head, d_head] over the reference's tokens
    def ablate(l, hs):
        def fn(z, hook):
            z = z.clone(); z[:, :, hs] = 0 if op == "zero" else means[f"blocks.{l}.attn.hook_z"][hs]; return z
        return (f"blocks.{l}.attn.hook_z", fn)
    toks, tmask = m.tokenize(TEXTS)
    ids = torch.arange(len(TEXTS))
    clean = mean_loss(run_with_hooks(m, toks, [], attention_mask=tmask), toks, tmask, ids)
    abl = mean_loss(run_with_hooks(m, toks, [ablate(0, [2]), ablate(1, [0, 2])], attention_mask=tmask), toks, tmask, ids)
    torch.testing.assert_close(got, abl - clean, atol=1e-5, rtol=0)
    assert got.abs().max() > 1e-3
    assert [s.heads for s in head_specs(heads)] == [(2,), (0, 2)]


def test_masked_loss_counts_only_the_weighted_tokens():
    m = random_transformer()
    texts = TEXTS[:4]                                                          # 8 tokens each
    toks, mask = m.tokenize(texts)
    w = torch.zeros(toks.shape); w[:, 4:6] = 1
    metric = masked_loss(w)
    stacked = run_stacked(m, texts, [[]], metric, branch=True)[0]               # branched: one unpadded input at a time
    logits = m.forward(texts)
    lp = logits[:, 3:5].log_softmax(-1).gather(-1, toks[:, 4:6, None])[..., 0]
    torch.testing.assert_close(stacked, -lp.mean(1), atol=1e-5, rtol=0)


def check_final_norm(model):
    "final_norm's facts rebuild ln_final: centre?(x) / rms * gain (+ the norm's bias)."
    g, centres, eps = final_norm(model)
    norm = model.ln_final
    x = torch.randn(3, model.arch.d_model) * 3 + 1
    c = x - x.mean(-1, keepdim=True) if centres else x
    b = getattr(norm, "bias", None)
    if b is None: b = getattr(norm, "b", None)
    want = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps) * g + (0 if b is None else b.detach())
    torch.testing.assert_close(norm(x.to(g.device)).float(), want, atol=1e-5, rtol=1e-5)
    return centres


def test_final_norm_on_hf_and_lab_models(llama, tmp_path):
    assert check_final_norm(llama) is False                                   # HF Llama: RMSNorm, `weight`, `variance_epsilon`
    assert check_final_norm(load(str(write_tiny("gpt2", tmp_path / "gpt2")), progress=False)) is True   # LayerNorm
    assert check_final_norm(load(str(write_tiny("gemma2", tmp_path / "gemma2")), progress=False)) is False   # gain 1 + weight
    assert check_final_norm(random_transformer()) is True                     # lab LayerNorm: `w`, `b`
    assert check_final_norm(copy_model()) is False                            # lab RMSNorm
