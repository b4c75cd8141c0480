"capture: streaming equals one-shot, reductions, spill to disk and back, the budget refusal."
import pytest
import torch

from seqlab.capture import Capture, capture, pad_cat
from seqlab.core import BadInput, OverBudget

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
