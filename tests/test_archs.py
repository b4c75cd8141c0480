"The lab's own models: SSD exactness, streaming, the n-gram layer's attention, hooks, padding and bad input."
import pytest
import torch
import torch.nn as nn

from seqlab.archs import (LSTM, CharTokenizer, LSTMConfig, Mamba2, Mamba2Config, Transformer, TransformerConfig,
                          build_model, ngram_match)
from seqlab.core import BadInput, SeqlabError
from seqlab.ssd import ssd_chunked, ssd_scan, state_stats
from seqlab.capture import run_with_cache
from seqlab.zoo import as_lab_model


def _ssd_inputs(b, T, H, P, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(b, T, H, P, generator=g)
    logA = -torch.rand(b, T, H, generator=g) * 2.0
    logA[:, :, 0] = -1e-7 * torch.rand(b, T, generator=g)   # a head that barely forgets (the state-collapse regime)
    return X, logA, torch.randn(b, T, N, generator=g), torch.randn(b, T, N, generator=g), torch.randn(b, H, P, N, generator=g)


@pytest.mark.parametrize("T", [1, 7, 16, 45])
@pytest.mark.parametrize("chunk", [1, 4, 16, 32])
def test_ssd_chunked_equals_scan(T, chunk):
    X, logA, B, C, h0 = _ssd_inputs(2, T, 3, 4, 5)
    Y_ref, h_ref = ssd_scan(X, logA, B, C, h0)
    Y, ends, h = ssd_chunked(X, logA, B, C, chunk, h0)
    assert Y.shape == Y_ref.shape and ends.shape == (2, -(-T // chunk), 3, 4, 5)
    torch.testing.assert_close(Y, Y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ends[:, -1], h_ref, atol=1e-5, rtol=1e-5)


def test_ssd_chunk_states_are_scan_states_at_chunk_ends():
    X, logA, B, C, _ = _ssd_inputs(1, 20, 2, 3, 4, seed=1)
    _, ends, _ = ssd_chunked(X, logA, B, C, 6)
    for c, t in enumerate([6, 12, 18]):
        _, h_t = ssd_scan(X[:, :t], logA[:, :t], B[:, :t], C[:, :t])
        torch.testing.assert_close(ends[:, c], h_t, atol=1e-5, rtol=1e-5)


def test_ssd_chunked_gradients_match_scan():
    X, logA, B, C, _ = _ssd_inputs(1, 11, 2, 3, 4, seed=2)
    grads = []
    for fn in (lambda *a: ssd_scan(*a)[0], lambda *a: ssd_chunked(*a, 4)[0]):
        xs = [t.clone().requires_grad_() for t in (X, logA, B, C)]
        fn(*xs).square().sum().backward()
        grads.append([t.grad for t in xs])
    for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _mamba(**kw):
    torch.manual_seed(0)
    return Mamba2(Mamba2Config(**{"d_vocab": 11, "d_model": 16, "n_layers": 2, "d_state": 8, "d_head": 8, "chunk_size": 8, **kw}))


@pytest.mark.parametrize("cuts", [[5, 16], [1, 2, 3, 30], [8, 24]])
def test_mamba2_pieces_equal_one_pass(cuts):
    m = _mamba()
    toks = torch.randint(0, 11, (2, 37), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = m(toks)
        state, outs = None, []
        for a, b in zip([0] + cuts, cuts + [37]):
            o, state = m(toks[:, a:b], state=state, return_state=True); outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_mamba2_chunk_size_does_not_change_outputs():
    toks = torch.randint(0, 11, (1, 29), generator=torch.Generator().manual_seed(4))
    a = _mamba(chunk_size=4); b = _mamba(chunk_size=64)
    b.load_state_dict(a.state_dict())
    with torch.no_grad(): torch.testing.assert_close(a(toks), b(toks), atol=1e-5, rtol=1e-5)


def test_mamba2_hooks_and_interventions():
    m = _mamba()
    toks = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(5))
    logits, cache = m.run_with_cache(toks)
    H = m.cfg.n_heads
    assert cache["blocks.1.ssm.hook_x"].shape == (2, 20, H, 8)
    for name in ["dt", "decay"]: assert cache[f"blocks.0.ssm.hook_{name}"].shape == (2, 20, H)
    for name in ["B", "C"]: assert cache[f"blocks.0.ssm.hook_{name}"].shape == (2, 20, 8)
    assert cache["blocks.0.ssm.hook_state"].shape == (2, 3, H, 8, 8)
    assert (cache["blocks.0.ssm.hook_decay"] <= 0).all()   # log alpha
    # zeroing B removes every input to the state, so the state hook reads zeros
    store = {}
    with m.hooks(fwd_hooks=[("blocks.0.ssm.hook_B", lambda t, hook: torch.zeros_like(t)),
                            ("blocks.0.ssm.hook_state", lambda t, hook: store.setdefault("s", t))]):
        changed = m(toks)
    assert store["s"].abs().max() == 0 and not torch.allclose(changed, logits)


def test_mamba2_state_transform_caps_norm_and_propagates():
    m = _mamba()
    toks = torch.randint(0, 11, (1, 32), generator=torch.Generator().manual_seed(6))
    tau = 1e-3
    m.blocks[0].ssm.state_transform = lambda h, c: h * (tau / h.flatten(-2).norm(dim=-1).clamp(min=tau))[..., None, None]
    _, cache = m.run_with_cache(toks, names_filter="blocks.0.ssm.hook_state")
    assert (cache["blocks.0.ssm.hook_state"].flatten(-2).norm(dim=-1) <= tau * (1 + 1e-5)).all()


def test_mamba2_stream_matches_one_pass_and_stats():
    m = _mamba()
    toks = torch.randint(0, 11, (1, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad(): logits, cache = m.run_with_cache(toks)
    r = m.stream(toks, piece_len=16, top_k=2)
    ref = -logits.log_softmax(-1)[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]
    torch.testing.assert_close(r["nll"], ref, atol=1e-5, rtol=1e-5)
    st = state_stats(cache["blocks.0.ssm.hook_state"], 2)
    # the piece grid (16) is a multiple of the chunk grid (8), so the chunks are the same ones
    for k in ("rms", "max_abs"): torch.testing.assert_close(r["stats"][0][k], st[k], atol=1e-5, rtol=1e-5)
    assert r["stats"][0]["top_channels"].shape == (1, 5, m.cfg.n_heads, 2)
    with pytest.raises(BadInput, match="multiple of chunk_size"): m.stream(toks, piece_len=12)


def _brute_ngram(x, n):
    T = len(x); M = torch.zeros(T, T)
    for i in range(T):
        for j in range(i):
            if all(i - k >= 0 and j - 1 - k >= 0 and x[i - k] == x[j - 1 - k] for k in range(n)): M[i, j] = 1
    return M / M.sum(-1, keepdim=True).clamp(min=1)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_attention_is_exactly_the_definition(n):
    seqs = [[0, 1, 2, 0, 1, 2, 0, 1], [3, 3, 3, 3, 3, 3], [0, 1, 0, 2, 0, 1, 0, 2, 0], [4, 5, 6, 7]]
    for x in seqs:
        assert torch.equal(ngram_match(torch.tensor([x]), n)[0], _brute_ngram(x, n)), (x, n)


def test_ngram_hand_built_examples():
    # a b c a b: n=1 at the last b attends to the c that followed the earlier b; n=2 likewise; a row with no match is 0
    M1 = ngram_match(torch.tensor([[0, 1, 2, 0, 1]]), 1)[0]
    assert M1[4].tolist() == [0, 0, 1, 0, 0] and M1[3].tolist() == [0, 1, 0, 0, 0] and M1[2].sum() == 0
    M2 = ngram_match(torch.tensor([[0, 1, 2, 0, 1]]), 2)[0]
    assert M2[4].tolist() == [0, 0, 1, 0, 0] and M2[3].sum() == 0
    # repeated token: each position spreads evenly over the positions after earlier copies
    M = ngram_match(torch.tensor([[7, 7, 7, 7]]), 1)[0]
    assert M[3].tolist() == [0, 0.5, 0.5, 0]


@pytest.mark.parametrize("family", ["Transformer", "LSTM", "Mamba2"])
def test_ngram_hybrids_expose_the_pattern(family):
    cfgs = {"Transformer": {"d_vocab": 9, "d_model": 16, "n_heads": 2}, "LSTM": {"d_vocab": 9, "d_model": 16},
            "Mamba2": {"d_vocab": 9, "d_model": 16, "d_head": 8, "d_state": 4, "chunk_size": 4}}
    m = build_model(family, {**cfgs[family], "n_layers": 2, "ngram_layers": [[1, 2]]})
    toks = torch.tensor([[0, 1, 2, 0, 1, 2, 0]])
    _, cache = m.run_with_cache(toks)
    torch.testing.assert_close(cache["blocks.1.ngram.hook_pattern"], ngram_match(toks, 2))
    assert "blocks.0.ngram.hook_pattern" not in cache


def test_transformer_hook_names_and_shapes():
    m = Transformer(TransformerConfig(d_vocab=13, d_model=24, n_layers=2, n_heads=3, use_attn_result=True))
    toks = torch.randint(0, 13, (2, 7))
    logits, cache = m.run_with_cache(toks)
    assert logits.shape == (2, 7, 13)
    for l in range(2):
        for name, shape in [("hook_resid_pre", (2, 7, 24)), ("hook_resid_mid", (2, 7, 24)), ("hook_resid_post", (2, 7, 24)),
                            ("attn.hook_q", (2, 7, 3, 8)), ("attn.hook_k", (2, 7, 3, 8)), ("attn.hook_v", (2, 7, 3, 8)),
                            ("attn.hook_z", (2, 7, 3, 8)), ("attn.hook_pattern", (2, 3, 7, 7)), ("attn.hook_attn_scores", (2, 3, 7, 7)),
                            ("attn.hook_result", (2, 7, 3, 24)), ("hook_attn_out", (2, 7, 24)), ("hook_mlp_out", (2, 7, 24))]:
            assert cache[f"blocks.{l}.{name}"].shape == shape, name
    assert cache["ln_final.hook_normalized"].shape == (2, 7, 24)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 3, 7))
    assert (cache["blocks.0.attn.hook_pattern"].triu(1) == 0).all()
    # W_Q reproduces hook_q from the normalised residual stream
    q = torch.einsum("bpm,hmd->bphd", m.ln1(0)(cache["blocks.0.hook_resid_pre"]), m.W_Q(0))
    torch.testing.assert_close(q, cache["blocks.0.attn.hook_q"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["rope", "learned"])
@pytest.mark.parametrize("family", ["Transformer", "LSTM", "Mamba2"])
def test_right_padding_leaves_real_positions_alone(family, positional):
    if family != "Transformer" and positional == "learned": pytest.skip("positions are a Transformer option")
    extra = {"Transformer": {"n_heads": 2, "positional": positional}, "LSTM": {}, "Mamba2": {"d_head": 8, "d_state": 4, "chunk_size": 4}}
    torch.manual_seed(0)
    m = build_model(family, {"d_vocab": 9, "d_model": 16, "n_layers": 2, **extra[family]})
    a = torch.randint(1, 9, (1, 6))
    padded = torch.cat([a, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad(): torch.testing.assert_close(m(padded, attention_mask=mask)[:, :6], m(a), atol=1e-5, rtol=1e-5)


def test_lstm_matches_torch_lstm_two_layers():
    torch.manual_seed(0)
    m = LSTM(LSTMConfig(d_vocab=7, d_model=10, n_layers=2))
    ref = nn.LSTM(10, 10, num_layers=2, batch_first=True)
    with torch.no_grad():
        for l in range(2):
            cell = m.blocks[l].lstm
            getattr(ref, f"weight_ih_l{l}").copy_(cell.W.weight); getattr(ref, f"weight_hh_l{l}").copy_(cell.U.weight)
            getattr(ref, f"bias_ih_l{l}").copy_(cell.W.bias); getattr(ref, f"bias_hh_l{l}").zero_()
    toks = torch.randint(0, 7, (3, 9))
    _, cache = m.run_with_cache(toks)
    out, (h, c) = ref(cache["hook_embed"])
    torch.testing.assert_close(out, cache["blocks.1.lstm.hook_h"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c[1], cache["blocks.1.lstm.hook_c"][:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], out, atol=1e-5, rtol=1e-5)


def test_bad_input_is_a_seqlab_error():
    m = Transformer(TransformerConfig(d_vocab=9, d_model=16, n_ctx=8, positional="learned"))
    with pytest.raises(BadInput, match="0..8"): m(torch.tensor([[1, 9]]))
    with pytest.raises(BadInput, match="integer token ids"): m(torch.rand(1, 3))
    with pytest.raises(BadInput, match="n_ctx=8"): m(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(BadInput, match="divisible"): TransformerConfig(d_model=10, n_heads=3)
    with pytest.raises(BadInput, match="two n-gram layers"): LSTMConfig(ngram_layers=((0, 1), (0, 2)))
    with pytest.raises(BadInput, match="blocks 0..1"): Mamba2Config(n_layers=2, ngram_layers=((2, 1),))
    with pytest.raises(SeqlabError, match="no attention"): LSTM(LSTMConfig(d_vocab=9, d_model=16)).W_Q(0)
    hybrid = _mamba(ngram_layers=((0, 1),))
    with pytest.raises(BadInput, match="cannot carry state"): hybrid(torch.zeros(1, 4, dtype=torch.long), return_state=True)


@pytest.mark.parametrize("family", ["Transformer", "LSTM", "Mamba2"])
def test_lab_model_wrapper(family):
    tok = CharTokenizer("abcdefgh|", pad=".")
    extra = {"Transformer": {"n_heads": 2}, "LSTM": {}, "Mamba2": {"d_head": 8, "d_state": 4, "chunk_size": 4}}
    lm = as_lab_model(build_model(family, {"d_vocab": tok.vocab_size, "d_model": 16, "n_layers": 2, **extra[family]}), tok, f"toy-{family}")
    assert lm.arch.kind == ("attention" if family == "Transformer" else "recurrent") and lm.arch.d_vocab == 10
    logits, cache = run_with_cache(lm, ["ab|cab", "ha|"], names=["blocks.1.hook_resid_post", "hook_embed"])
    assert logits.shape == (2, 6, 10) and cache["blocks.1.hook_resid_post"].shape == (2, 6, 16)
    assert lm.W_E.shape == (10, 16) and lm.W_U.shape == (16, 10)
    if family == "Transformer":
        assert lm.W_O(1).shape == (2, 8, 16) and lm.W_K(0).shape == (2, 16, 8)


def test_mamba2_stream_accepts_piece_iterables():
    m = _mamba()
    toks = torch.randint(0, 11, (1, 37), generator=torch.Generator().manual_seed(8))
    a = m.stream(toks, piece_len=16)
    b = m.stream(iter([toks[:, :8], toks[:, 8:32], toks[:, 32:]]))
    torch.testing.assert_close(a["nll"], b["nll"], atol=1e-5, rtol=1e-5)
    assert a["nll"].shape == (1, 36)
    with pytest.raises(BadInput, match="only the last piece may be ragged"): m.stream(iter([toks[:, :5], toks[:, 5:]]))
