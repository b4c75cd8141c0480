"capture: streaming equals one-shot, reductions, spill to disk and back, the budget refusal; patterns on the fast path."
from contextlib import contextmanager

import pytest
import torch

from seqlab.capture import Capture, capture, pad_cat, run_with_cache
from seqlab.core import BadInput, OverBudget
from seqlab.families import FAMILIES, TINY_CONFIGS, write_tiny

TEXTS = ["Monday, Tuesday, Wednesday", "one two three four", "The cat sat on the mat.", "A B C D E",
         "January February", "first second third", "It was a dark and stormy night."]


def test_streaming_equals_one_shot(smol):
    names = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_pattern", "logits"]
    cap = capture(smol, TEXTS, names, batch_size=3, progress=False)
    one = capture(smol, TEXTS, names, batch_size=len(TEXTS), progress=False)
    for n in names:
        a, b = cap[n], one[n]
        assert a.shape == b.shape, n
        for i, L in enumerate(cap.lengths.tolist()):  # compare real positions only
            if n.endswith("pattern"):
                assert torch.allclose(a[i, :, :L, :L], b[i, :, :L, :L], atol=1e-4), n
            else:
                assert torch.allclose(a[i, :L], b[i, :L], atol=1e-3 * b[i, :L].abs().max().item()), n


def test_reduction_is_applied_per_batch(smol):
    def last_token(name, act, mask):
        idx = mask.sum(1) - 1
        return act[torch.arange(len(act)), idx]
    cap = capture(smol, TEXTS, ["blocks.3.hook_resid_post"], batch_size=2, reduce=last_token, progress=False)
    full = capture(smol, TEXTS, ["blocks.3.hook_resid_post"], batch_size=2, progress=False)
    expected = torch.stack([full["blocks.3.hook_resid_post"][i, L - 1] for i, L in enumerate(full.lengths.tolist())])
    assert cap["blocks.3.hook_resid_post"].shape == (len(TEXTS), 576)
    assert torch.allclose(cap["blocks.3.hook_resid_post"], expected)


def test_reduction_may_take_the_tokens(smol):
    seen = []
    def count(name, act, mask, tokens):
        seen.append(tokens.shape[0]); return mask.sum(1, keepdim=True)
    cap = capture(smol, TEXTS, ["blocks.0.hook_resid_post"], batch_size=4, reduce=count, progress=False)
    assert seen == [4, 3] and cap["blocks.0.hook_resid_post"][:, 0].tolist() == cap.lengths.tolist()


def test_spill_to_disk_and_back(smol, tmp_path):
    names = ["blocks.2.hook_resid_post", "logits"]
    mem = capture(smol, TEXTS, names, batch_size=3, progress=False)
    disk = capture(smol, TEXTS, names, batch_size=3, spill_dir=tmp_path / "cap", progress=False)
    assert sorted(p.name for p in (tmp_path / "cap").iterdir()) == ["capture.json"] + [f"shard_{i:05d}.safetensors" for i in range(3)]
    again = Capture.open(tmp_path / "cap")
    for n in names:
        assert torch.equal(disk[n], again[n]) and torch.allclose(mem[n], again[n], atol=1e-5)


def test_budget_refusal_says_how_much_is_needed(smol):
    with pytest.raises(OverBudget, match=r"needs about [\d,]+ MB but its budget is"):
        capture(smol, TEXTS * 4, r"blocks\.\d+\.attn\.hook_pattern", budget_mb=1, progress=False)
    # the same request fits when spilled batch by batch or with a larger budget
    cap = capture(smol, TEXTS[:2], r"blocks\.1\.attn\.hook_pattern", budget_mb=64, progress=False)
    assert cap["blocks.1.attn.hook_pattern"].shape[:2] == (2, 9)


def test_bad_inputs(smol):
    with pytest.raises(BadInput): capture(smol, [], ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(BadInput, match="empty"): capture(smol, ["ok", ""], ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(BadInput, match="keep nothing"): capture(smol, ["ok"], [], progress=False)


def test_pad_cat_pads_every_trailing_dim():
    out = pad_cat([torch.ones(1, 2, 2), torch.ones(1, 3, 1)])
    assert out.shape == (2, 3, 2) and out[0, 2].sum() == 0 and out[1, :, 1].sum() == 0


def test_a_failed_spill_leaves_no_index_that_vouches_for_it(smol, tmp_path):
    from seqlab.core import HookNotFound
    d = tmp_path / "cap"
    capture(smol, TEXTS, ["blocks.0.hook_resid_post"], batch_size=3, spill_dir=d, progress=False)
    assert (d / "capture.json").exists()
    calls = []
    def fail_on_second(name, act, mask):
        calls.append(1)
        if len(calls) == 2: raise RuntimeError("interrupted")
        return act
    with pytest.raises(RuntimeError):
        capture(smol, TEXTS, ["blocks.0.hook_resid_post"], batch_size=3, spill_dir=d, reduce=fail_on_second, progress=False)
    with pytest.raises(BadInput, match="no complete capture"):
        Capture.open(d)  # the earlier run's index is gone: the mix of old and new shards is never read
    cap = capture(smol, TEXTS[:2], ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(HookNotFound, match="capture again"):
        cap["blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from seqlab.zoo import load, write_tiny_llama
    return load(write_tiny_llama(tmp_path_factory.mktemp("capture") / "tiny-llama"))


def test_each_batch_is_tokenized_once(tiny_hf, monkeypatch):
    calls, real = [], tiny_hf.tokenize
    monkeypatch.setattr(tiny_hf, "tokenize", lambda *a, **k: calls.append(1) or real(*a, **k))
    capture(tiny_hf, TEXTS, ["blocks.0.hook_resid_post", "logits"], batch_size=3, progress=False)
    assert len(calls) == 3


def test_a_padded_token_tensor_with_its_mask_equals_the_texts(tiny_hf):
    texts = ["Hi there", "Hi", "abc", "a longer one", "x"]
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "logits"]
    a = capture(tiny_hf, texts, names, batch_size=2, progress=False)
    toks, mask = tiny_hf.tokenize(texts)
    b = capture(tiny_hf, toks, names, batch_size=2, attention_mask=mask, progress=False)
    assert a.lengths.tolist() == b.lengths.tolist() == [8, 2, 3, 12, 1]
    for n in names:
        for i, L in enumerate(a.lengths.tolist()):
            x, y = (a[n][i, :, :L, :L], b[n][i, :, :L, :L]) if n.endswith("pattern") else (a[n][i, :L], b[n][i, :L])
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    with pytest.raises(BadInput, match="one mask row per token row"):
        capture(tiny_hf, toks, "logits", attention_mask=mask[:2], progress=False)
    with pytest.raises(BadInput, match="right-padded"):
        capture(tiny_hf, toks, "logits", attention_mask=mask.flip(1), progress=False)
    with pytest.raises(BadInput, match="token tensor"):
        capture(tiny_hf, texts, "logits", attention_mask=mask, progress=False)


# ---- attention patterns on the fast path (SDPA everywhere, eager weights only in the asked layers) ----
ATTENTION_FAMILIES = sorted(f for f in TINY_CONFIGS if FAMILIES[f].kind == "attention")
PAD_TOKS = torch.tensor([[5, 17, 30, 44, 60, 8, 9, 70, 71, 12, 33, 5], [40, 41, 42, 43, 44, 45, 46, 0, 0, 0, 0, 0]])
PAD_MASK = (PAD_TOKS != 0).long()  # the second row is right-padded


@pytest.fixture(scope="module", params=ATTENTION_FAMILIES)
def attn_family(request, tmp_path_factory):
    "(family, LabModel, transformers' own model of the same folder with eager attention)."
    import warnings
    from transformers import AutoModelForCausalLM
    from seqlab.zoo import load
    folder = write_tiny(request.param, tmp_path_factory.mktemp("pat") / request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, load(folder, progress=False), ref


@contextmanager
def attention_calls(lm, monkeypatch):
    "Which layers ran the family's eager function, which ran SDPA, and how often the bridge ran, during the block."
    import sys
    from transformers.modeling_utils import AttentionInterface
    seen = {"eager": [], "sdpa": [], "bridge": 0}
    family_module = sys.modules[type(lm.fast_module("attn", 0)).__module__]
    eager, sdpa = family_module.eager_attention_forward, AttentionInterface._global_mapping["sdpa"]
    def counting(kind, fn):
        def wrapped(module, *a, **k): seen[kind].append(module.layer_idx); return fn(module, *a, **k)
        return wrapped
    monkeypatch.setattr(family_module, "eager_attention_forward", counting("eager", eager))
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", counting("sdpa", sdpa))
    h = lm.hooked.register_forward_pre_hook(lambda *a: seen.__setitem__("bridge", seen["bridge"] + 1))
    try: yield seen
    finally:
        h.remove(); monkeypatch.undo()


def test_pattern_on_the_fast_path_equals_the_bridge_and_transformers_eager(attn_family, monkeypatch):
    fam, lm, ref = attn_family
    name = "blocks.1.attn.hook_pattern"
    with torch.no_grad(), attention_calls(lm, monkeypatch) as seen:
        logits, fast = run_with_cache(lm, PAD_TOKS, names=[name], attention_mask=PAD_MASK)
    # only the asked layer ran eager; every other layer ran SDPA (Gemma-2 has none: eager everywhere); no bridge
    assert seen == ({"eager": [0, 1], "sdpa": [], "bridge": 0} if not FAMILIES[fam].sdpa else
                    {"eager": [1], "sdpa": [0, 1], "bridge": 0}), (fam, seen)
    assert torch.equal(logits, lm.forward(PAD_TOKS, attention_mask=PAD_MASK)), fam  # SDPA's output is what the layer returns
    _, bridge = run_with_cache(lm, PAD_TOKS, names=[name, "blocks.1.attn.hook_z"], attention_mask=PAD_MASK)  # all on the bridge
    with torch.no_grad():
        hf = ref(input_ids=PAD_TOKS, attention_mask=PAD_MASK, output_attentions=True, use_cache=False).attentions[1]
    assert fast[name].shape == (2, lm.arch.n_heads, 12, 12)   # key/value heads expanded to query heads
    for other, what in ((bridge[name], "bridge"), (hf, "transformers eager")):  # padded rows included
        torch.testing.assert_close(fast[name], other, atol=1e-5, rtol=1e-5, msg=lambda m: f"{fam} vs {what}: {m}")
    assert fast[name][1, :, :7, 7:].abs().max() == 0  # real tokens never attend to padding
    assert lm.fast.config._attn_implementation == ("sdpa" if FAMILIES[fam].sdpa else "eager")  # switched back


def test_a_module_without_layer_idx_falls_back_to_the_bridge(tiny_hf, monkeypatch):
    lm, name = tiny_hf, "blocks.0.attn.hook_pattern"
    _, fast = run_with_cache(lm, PAD_TOKS, names=[name], attention_mask=PAD_MASK)
    monkeypatch.delattr(lm.fast_module("attn", 0), "layer_idx")
    seen = []
    h = lm.hooked.register_forward_pre_hook(lambda *a: seen.append(1))
    try: _, slow = run_with_cache(lm, PAD_TOKS, names=[name], attention_mask=PAD_MASK)
    finally: h.remove()
    assert seen == [1]
    torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-5)


def test_pattern_capture_on_the_embedded_model_equals_the_bridge(smol):
    texts = ["The capital of France is Paris.", "One two three", "Monday, Tuesday"]
    names = [f"blocks.{l}.attn.hook_pattern" for l in (0, 14, 29)]
    seen = []
    h = smol.hooked.register_forward_pre_hook(lambda *a: seen.append(1))
    try: fast = capture(smol, texts, names + ["logits"], progress=False)
    finally: h.remove()
    assert seen == []  # not one bridge pass
    slow = capture(smol, texts, names + ["blocks.0.attn.hook_z", "logits"], progress=False)
    for n in names: torch.testing.assert_close(fast[n], slow[n], atol=1e-5, rtol=1e-5)
    plain = capture(smol, texts, ["logits"], progress=False)
    assert torch.equal(fast["logits"], plain["logits"])
