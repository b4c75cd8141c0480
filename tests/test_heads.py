"Successor heads: the OV scan on a hand-built shift, GQA accessors against a forward pass, and the probe on the embedded model."
import dataclasses

import pytest
import torch

from seqlab.capture import capture
from seqlab.core import BadInput, get_probe
from seqlab.heads import (SENTENCE_TEMPLATES, SuccessorConfig, extended_embeddings, folded_unembed, head_inputs, mod10_probe, ordinal_tasks,
                          ov_outputs, wilson_interval,
                          ov_pairs_for_ids, roman_numerals, run_successor, shift_model, stacked_ov, succession_pairs, succession_sentences,
                          succession_scores)
from seqlab.viz import figure


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


def _tasks_1_to_20(n_tasks=3):
    idx = torch.arange(20 * n_tasks) % 20 + 1
    return idx, [t for t in "abcdefgh"[:n_tasks] for _ in range(20)]


def test_mod10_above_10_reads_a_shared_residue_code():
    idx, grp = _tasks_1_to_20()
    x = torch.nn.functional.one_hot(idx % 10, 10).float() + 0.1 * torch.randn(len(idx), 10, generator=torch.Generator().manual_seed(1))
    r = mod10_probe(x, idx, grp, steps=150)
    for key in ("above_10", "above_10_from_below"):
        a = r[key]
        assert a["n"] == 30 and a["accuracy"] >= 0.9 and a["lo"] > 0.7 and a["chance"] == 0.1
        assert set(a["per_task"]) == {"a", "b", "c"} and all(v["n"] == 10 for v in a["per_task"].values())


def test_mod10_above_10_is_chance_for_a_code_that_only_names_the_index():
    # every index 1..20 has its own shared direction and there is no residue feature: the usual leave-one-task-out probe
    # passes (it learns 13 -> 3 from the other tasks' 13s); the probe that never saw an index above 10 cannot
    idx, grp = _tasks_1_to_20()
    x = torch.nn.functional.one_hot(idx - 1, 20).float() + 0.1 * torch.randn(len(idx), 20, generator=torch.Generator().manual_seed(2))
    r = mod10_probe(x, idx, grp, steps=150)
    assert r["mean_accuracy"] > 0.9 and r["above_10"]["accuracy"] > 0.9
    strict = r["above_10_from_below"]
    assert strict["n"] == 30 and strict["accuracy"] < 0.3 and strict["lo"] < 0.1 < strict["hi"]
    # and the residue of tokens at or below 10 is the index itself: a small-index-only code also gives a perfect usual score there
    assert wilson_interval(0, 30)[1] < 0.12 and wilson_interval(30, 30)[0] > 0.88


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


def test_succession_sentences_tokenise_on_smollm2(smol):
    tasks = ordinal_tasks()
    prompts, marks, dropped = succession_sentences(smol, tasks, torch.Generator())
    steps = {t: len(tasks[t]["items"]) - 1 + bool(tasks[t].get("wrap")) for t in SENTENCE_TEMPLATES}
    assert dropped == 0 and len(prompts) == sum(len(v) * steps[t] for t, v in SENTENCE_TEMPLATES.items())
    assert smol.tokenizer.decode(prompts[0]) == "The meeting moved from Monday to Tuesday"
    assert prompts[0][-1] == smol.encode(" Tuesday")[0] and marks[0][-1] == 2 and sum(marks[0]) == 2
    few = succession_sentences(smol, tasks, torch.Generator().manual_seed(0), per_template=2)[0]
    assert len(few) == 2 * sum(map(len, SENTENCE_TEMPLATES.values())) and set(map(tuple, few)) <= set(map(tuple, prompts))


def test_successor_probe_on_embedded_model(smol):
    cfg = dataclasses.replace(SuccessorConfig.quick(), compare=("mlp0",), probe_steps=60, n_prompts_per_task=2,
                              causal_draws=4, causal_prompts_per_task=1, sentences_per_template=1)
    res = run_successor(smol, cfg)
    m = res.metrics
    assert len(m["heads"]) == 270 and m["heads"][0]["score"] >= m["heads"][-1]["score"]
    assert m["n_pairs"] == 296 and m["dropped_pairs"] == 534
    assert m["heads"][0]["score"] > 2 * m["chance_pooled"]
    assert m["ablation"]["best"] > m["ablation"]["random"]
    assert set(m) >= {"heads", "n_pairs", "dropped_pairs", "per_task", "mod10", "arithmetic_success", "ablation"}
    above = m["mod10"]["above_10"]                        # letters K..Z, number words eleven..twenty, November/December, XI..
    assert above["n"] > 50 and above["lo"] <= above["accuracy"] <= above["hi"] and {"letters", "number_words"} <= set(above["per_task"])
    c = m["causal"]                                       # mean-ablating L23H3 vs random single heads from any layer
    assert set(c) == {"comma_lists", "sentences"} and c["sentences"]["dropped"] == 0
    assert c["comma_lists"]["heads"] == [[m["best"]["layer"], m["best"]["head"]]] and c["sentences"]["random"]["draws"] == 4
    assert c["comma_lists"]["effect"]["n"] == 9 and c["sentences"]["effect"]["n"] == sum(map(len, SENTENCE_TEMPLATES.values()))
    assert figure(res).data
    with pytest.raises(BadInput, match="extended-embedding"): run_successor(smol, dataclasses.replace(cfg, ext="nope"))


def test_heads_probes_are_registered_with_one_run_signature():
    import inspect
    import seqlab.ngram_heads  # noqa: F401  (registers "ngram")
    for name, page in (("induction", "11_heads"), ("successor", "11_heads"), ("ngram", "11a_ngram_heads")):
        p = get_probe(name)
        assert p.needs == "attention" and p.page == page
        assert list(inspect.signature(p.run).parameters) == ["model", "cfg"]
