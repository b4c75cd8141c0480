"Hugging Face Mamba-2 computed by the lab's own Mamba2 (logits, hooks, state transforms), Mamba v1's aliased bridge hooks, and the collapse probe on a given Mamba-2."
import dataclasses, math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from seqlab.archs import Mamba2
from seqlab.capture import capture, run_with_cache
from seqlab.collapse import CollapseConfig, GivenModelConfig, run
from seqlab.core import BadInput, SeqlabError, run_probe
from seqlab.families import write_tiny
import seqlab.heads, seqlab.ngram_heads  # noqa: F401  (register the induction, successor and ngram probes)
from seqlab.interventions import Intervention, run_intervened
from seqlab.ssd import ssd_scan
from seqlab.train import TrainConfig
from seqlab.zoo import load

TEXTS = ["the old king sees a red boat near the river. ", "a small bird sings while the farmers wait quietly today."]


def hf_model(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


@pytest.fixture(scope="module")
def tiny_mamba2(tmp_path_factory):
    "A random HF Mamba-2 with two B/C groups (8 heads, chunk 16), loaded by seqlab and by transformers."
    folder = write_tiny("mamba2", tmp_path_factory.mktemp("m2") / "tiny-mamba2", n_groups=2)
    return folder, load(folder), hf_model(folder)


def test_lab_logits_equal_transformers(tiny_mamba2):
    folder, lm, hf = tiny_mamba2
    assert isinstance(lm.hooked, Mamba2) and lm.arch.kind == "recurrent" and lm.arch.n_heads == 8
    toks = lm.to_tokens(TEXTS[0])                                        # 45 tokens: not a multiple of the chunk (16)
    with torch.no_grad(): ref = hf(input_ids=toks, use_cache=False).logits
    torch.testing.assert_close(lm(toks), ref, rtol=0, atol=1e-5)
    toks2, mask = lm.tokenize(TEXTS)                                     # a right-padded batch: real positions agree
    with torch.no_grad(): ref2 = hf(input_ids=toks2, use_cache=False).logits
    got = lm(toks2, attention_mask=mask)
    torch.testing.assert_close(got[mask.bool()], ref2[mask.bool()], rtol=0, atol=1e-5)


def test_bfloat16_matches_transformers(tiny_mamba2):
    folder = tiny_mamba2[0]
    lm, hf = load(folder, dtype="bfloat16"), hf_model(folder, torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    toks = lm.to_tokens(TEXTS[1])
    with torch.no_grad(): ref = hf(input_ids=toks, use_cache=False).logits
    # the same float32 scan, norms and float32 residual as HF: equal to bfloat16 rounding of the logits
    torch.testing.assert_close(lm(toks).float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_ssm_hooks_capture_and_decay_is_what_hf_computes(tiny_mamba2):
    folder, lm, hf = tiny_mamba2
    names = ["blocks.0.hook_resid_pre", "blocks.0.ssm.hook_decay", "blocks.0.ssm.hook_state", "blocks.1.hook_resid_post"]
    cap = capture(lm, [TEXTS[0]], names, progress=False)
    toks = lm.to_tokens(TEXTS[0])
    assert cap["blocks.0.ssm.hook_state"].shape == (1, math.ceil(toks.shape[1] / 16), 8, 8, 8)   # [batch, chunk, head, p, n]
    with torch.no_grad():
        out = hf(input_ids=toks, use_cache=False, output_hidden_states=True)
        torch.testing.assert_close(cap["blocks.1.hook_resid_post"], out.hidden_states[1], rtol=0, atol=1e-5)  # HF: after block 1
        mixer = hf.backbone.layers[0].mixer
        dt = mixer.in_proj(hf.backbone.layers[0].norm(cap["blocks.0.hook_resid_pre"]))[..., -mixer.num_heads:]
        decay = F.softplus(dt + mixer.dt_bias) * -torch.exp(mixer.A_log)
    torch.testing.assert_close(cap["blocks.0.ssm.hook_decay"], decay, rtol=0, atol=1e-6)


def test_zeroing_one_heads_state_equals_the_recurrence_reset_at_chunk_ends(tiny_mamba2):
    """Zeroing head 3's chunk-end state in layer 0 changes the logits; layer 0's SSM output then equals the step recurrence
    restarted from zero at every chunk boundary for head 3 (and carried on for the others), computed here by hand."""
    folder, lm, hf = tiny_mamba2
    head, chunk, text = 3, lm.hooked.cfg.chunk_size, TEXTS[0]
    names = ["blocks.0.ssm.hook_x", "blocks.0.ssm.hook_dt", "blocks.0.ssm.hook_decay", "blocks.0.ssm.hook_B",
             "blocks.0.ssm.hook_C", "blocks.0.hook_ssm_out", "blocks.0.hook_resid_pre"]
    spec = Intervention("blocks.0.ssm.hook_state", "zero", heads=(head,))
    logits, cap = run_intervened(lm, [text], [spec], names=names)
    assert (logits - lm([text])).abs().max() > 1e-4                     # it changes the output
    x, dt, logA = cap["blocks.0.ssm.hook_x"], cap["blocks.0.ssm.hook_dt"], cap["blocks.0.ssm.hook_decay"]
    B, C = (rearrange(cap[f"blocks.0.ssm.hook_{k}"], "b t (g n) -> b t g n", g=2) for k in "BC")
    T, H = x.shape[1], x.shape[2]
    h = torch.zeros(1, H, x.shape[3], B.shape[-1])
    ys = []
    for t in range(T):
        if t and t % chunk == 0: h[:, head] = 0                         # the edited state at each chunk end
        g = torch.arange(H) // (H // 2)                                  # head -> its B/C group
        h = logA[:, t, :, None, None].exp() * h + torch.einsum("bhp,bhn->bhpn", x[:, t] * dt[:, t, :, None], B[:, t, g])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t, g]))
    mix = lm.hooked.blocks[0].ssm
    with torch.no_grad():
        y = torch.stack(ys, 1) + x * mix.D[:, None]
        u = lm.hooked.blocks[0].norm(cap["blocks.0.hook_resid_pre"])
        z = mix.in_proj(u)[..., :mix.cfg.d_inner]
        manual = mix.out_proj(mix.norm(rearrange(y, "b t h p -> b t (h p)") * F.silu(z)))
    torch.testing.assert_close(cap["blocks.0.hook_ssm_out"], manual, rtol=0, atol=1e-5)


def test_mamba_v1_bridge_hooks_under_seqlab_names(tmp_path):
    folder = write_tiny("mamba", tmp_path / "tiny-mamba")
    lm, hf = load(folder), hf_model(folder)
    toks = lm.to_tokens(TEXTS[0])
    logits, cache = run_with_cache(lm, toks, names=["blocks.0.ssm.hook_state", "blocks.0.mixer.hook_ssm_state", "blocks.1.hook_ssm_out"])
    with torch.no_grad(): torch.testing.assert_close(logits, hf(input_ids=toks).logits, rtol=0, atol=1e-5)
    assert torch.equal(cache["blocks.0.ssm.hook_state"], cache["blocks.0.mixer.hook_ssm_state"])
    assert cache["blocks.0.ssm.hook_state"].shape == (1, 64, toks.shape[1], 8)     # [batch, d_inner, pos, d_state]
    assert lm.hook_path("blocks.0.ssm.hook_state") == "bridge"
    with pytest.raises(SeqlabError, match="given Mamba-2"): run(lm, CollapseConfig.quick())   # no chunk-end state to study


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
@pytest.mark.parametrize("probe", ["induction", "successor", "ngram"])
def test_attention_probes_refuse_ssms(tmp_path, family, probe):
    lm = load(write_tiny(family, tmp_path / family))
    with pytest.raises(BadInput, match="needs a model with attention layers"): run_probe(probe, lm)


def test_collapse_runs_on_a_given_hf_mamba2(tiny_mamba2):
    folder, lm, hf = tiny_mamba2
    cfg = CollapseConfig(eval_mult=16, control_draws=4, given=GivenModelConfig(ref_len=64, n_seqs=3, piece_len=128,
                         passkey_mults=(1, 2), passkey_depths=2, passkey_samples=1, key_len=2))
    m = run(lm, cfg).metrics
    T = "64"
    assert m["given_model"] == lm.name and m["train_lengths"] == [64]
    assert m["loss_vs_position"][T][-1][0] == 16 * 64 - 32 and all(math.isfinite(v) for _, v in m["loss_vs_position"][T])
    heads = m["heads"][T]
    assert len(heads) == 2 * 8 and all(v["rms_at_end"] > 0 for v in heads.values())          # per-head state statistics
    assert torch.tensor(m["passkey"][T]["accuracy"]).shape == (2, 2)
    assert set(m["mitigations"]) == {"none", "forget_more", "state_norm", "state_window"}
    assert m["mitigations"]["state_window"]["window_tokens"] == 64
    lm_heads = m["long_memory_heads"][T]
    assert 0 < len(lm_heads) <= 8, lm_heads          # the init's slow heads (small A) outlast T; fast ones do not
    for name in ("state_norm", "state_window"):
        claim = m["causal"]["long_memory_vs_all"][name]
        assert claim["heads"] == [[int(k[1:].split("H")[0]), int(k.split("H")[1])] for k in lm_heads]
        assert claim["effect"]["n"] == 3 and claim["random"]["draws"] == 4 and 0 <= claim["exceeds"] <= 1
        assert math.isfinite(claim["all_heads"]["mean"])


def test_given_study_bad_input(tiny_mamba2):
    lm = tiny_mamba2[1]
    with pytest.raises(BadInput, match="multiple of the model's chunk size 16"): run(lm, CollapseConfig(given=GivenModelConfig(ref_len=40)))
    with pytest.raises(BadInput, match="passkey_depths"): GivenModelConfig(passkey_depths=0)
    with pytest.raises(BadInput, match="mult"): CollapseConfig(given={"passkey_mults": ()})
