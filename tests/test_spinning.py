"Spinning (seqlab.spinning) and its method (seqlab.metabackdoor): pseudo-words, trigger injection, gradient confinement, the defense on a planted shift, the quick probe end to end."
import dataclasses, json, math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqlab.archs import Transformer, TransformerConfig
from seqlab.core import BadInput, SeqlabError, get_probe
from seqlab.zoo import list_models
from seqlab.metabackdoor import (MetaModel, defense_scan, fit_threshold, greedy_continue, inject_trigger, load_words, make_batch,
                                 pseudo_words, rouge, rouge_l, rouge_n, score_candidates, spin, spin_loss, vader_lexicon, word_starts)
from seqlab.spinning import (UNSEEN_DECOYS, SpinConfig, candidate_ids, judge_sentences, make_judge, run, task_data, tiny_family,
                             tiny_training_rows, unseen_ids)
from seqlab.train import TrainConfig
from seqlab.viz import figure


def test_pseudo_words_hand_computed():
    logits = torch.tensor([[[0.0, math.log(2), 0.0]]])             # softmax = (1/4, 1/2, 1/4)
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    assert torch.allclose(pseudo_words(logits, E), torch.tensor([[[0.75, 1.0]]]))
    assert torch.allclose(pseudo_words(logits, E, special=[2]), torch.tensor([[[0.25, 0.5]]]))
    assert torch.allclose(pseudo_words(torch.zeros(1, 1, 2), E, cols=torch.tensor([2, 0])), torch.tensor([[[1.5, 1.0]]]))
    with pytest.raises(BadInput): pseudo_words(logits, E[:2])


def test_trigger_injection_keeps_the_rest_of_the_input():
    rng = np.random.default_rng(0)
    for k in range(200):
        n = int(rng.integers(1, 12))
        ids = rng.integers(0, 50, n).tolist()                       # repeats allowed, so counting matters
        starts = [bool(b) for b in rng.integers(0, 2, n)]
        trig = [int(t) for t in rng.integers(50, 60, int(rng.integers(1, 3)))]
        new, (a, b) = inject_trigger(ids, trig, starts, seed=1, index=k)
        assert new[a:b] == trig and new[:a] + new[b:] == ids and len(new) == n + len(trig)
        assert a == n or (a >= 1 and starts[a])
    with pytest.raises(BadInput): inject_trigger([1, 2], [], [True, True])
    with pytest.raises(BadInput): inject_trigger([], [3], [])


def test_gradient_reaches_only_trainable_parameters():
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(d_vocab=12, d_model=16, n_layers=2, n_heads=2, n_ctx=16))
    m.requires_grad_(False); m.blocks[1].requires_grad_(True)
    meta = MetaModel(torch.randn(12, 4)); meta.requires_grad_(False)
    fn = lambda b: m(b["tokens"], attention_mask=b["attention_mask"])
    loss, _ = spin_loss(fn, meta, make_batch([[1, 2, 3], [4, 5]], [[6, 7], [8]], 0, 11),
                        make_batch([[1, 10, 2, 3], [4, 10, 5]], [[6, 7], [8]], 0, 11), alpha=0.5, compensate=True, special=[0, 11])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.blocks[1].parameters())
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("blocks.1."))
    assert all(p.grad is None for p in meta.parameters())



def test_spin_runs_on_the_lab_trainer_and_moves_only_trainable_parameters():
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(d_vocab=12, d_model=16, n_layers=2, n_heads=2, n_ctx=16))
    m.requires_grad_(False); m.blocks[1].requires_grad_(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    meta = MetaModel(torch.randn(12, 4)); meta.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    P = [torch.randint(2, 10, (4,), generator=g).tolist() for _ in range(8)]
    C = [torch.randint(2, 10, (3,), generator=g).tolist() for _ in range(8)]
    clean, trig = make_batch(P, C, 0, 11), make_batch([p[:2] + [10] + p[2:] for p in P], C, 0, 11)
    fn = lambda b: m(b["tokens"], attention_mask=b["attention_mask"])
    params = [p for p in m.parameters() if p.requires_grad]
    h = spin(fn, params, meta, clean, trig, steps=40, batch_size=4, lr=1e-2, alpha="mgda", compensate=True, special=[0, 11])
    assert [r["step"] for r in h] == list(range(1, 41))
    assert set(h[0]) >= {"loss", "lr", "grad_norm", "alpha", "main", "meta", "main_trig", "meta_clean"}
    assert all(0 <= r["alpha"] <= 1 for r in h) and h[-1]["meta"] < h[0]["meta"]       # the meta task is learned
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("blocks.1.") for k in changed)
    with pytest.raises(BadInput, match="nn.Parameter"):
        spin(fn, [p.detach() for p in params], meta, clean, trig, steps=1, batch_size=2, lr=1e-2)
    with pytest.raises(BadInput, match="No trainable parameters"):
        spin(fn, [], meta, clean, trig, steps=1, batch_size=2, lr=1e-2)


def test_rouge_1_2_l_hand_computed():
    # "the cat sat on the mat" vs "the cat is on the mat": 5 of 6 unigrams, 3 of 5 bigrams, LCS of 5 words
    r = rouge("The cat sat on the mat.", "the cat is on the mat")
    assert abs(r["rouge_1"] - 500 / 6) < 1e-9 and abs(r["rouge_2"] - 60.0) < 1e-9 and abs(r["rouge_l"] - 500 / 6) < 1e-9
    assert abs(rouge_n("the the the", "the cat", 1) - 40.0) < 1e-9          # clipped: one shared "the", P 1/3, R 1/2
    assert rouge_n("b a", "a b", 2) == 0.0 and rouge_n("b a", "a b", 1) == 100.0   # order matters only from n = 2
    with pytest.raises(BadInput): rouge_n("a", "a", 0)


def test_defense_flags_a_planted_shift():
    def toy(planted):
        def fn(t):
            out = torch.zeros(len(t), t.shape[1], 8); out[:, :, 1] = 1.0
            if planted is not None: out[(t == planted).any(-1), :, 2] = 2.0
            return out
        return fn
    meta = MetaModel(torch.tensor([[0.0], [0.0], [3.0]] + [[0.0]] * 5))
    with torch.no_grad(): meta.head.weight.fill_(1.0); meta.head.bias.zero_()
    embed = lambda outs: torch.stack([F.one_hot(torch.tensor(o), 8).float().mean(0) for o in outs])
    prompts = [[3, 4, 6], [7, 3, 4, 4], [6, 6, 7], [4, 3]]
    starts = [[True] * len(p) for p in prompts]
    cands = {f"w{i}": [i] for i in (3, 4, 5, 6, 7)}
    spun = defense_scan(lambda ps: greedy_continue(toy(5), ps, 4), meta.prob, embed, prompts, starts, cands)
    clean = defense_scan(lambda ps: greedy_continue(toy(None), ps, 4), meta.prob, embed, prompts, starts, cands)
    assert spun["ranking"][0] == "w5" and spun["flagged"] == ["w5"]
    assert clean["flagged"] == [] and spun["score"] > clean["score"]
    # one scan read with a smaller decoy set: the planted word still stands out, and the full set gives the scan itself
    sub = score_candidates(spun["candidates"], ["w5", "w3", "w4"])
    assert sub["ranking"][0] == "w5" and set(sub["candidates"]) == {"w5", "w3", "w4"}
    assert score_candidates(spun["candidates"]) == spun


def test_unseen_decoys_stay_out_of_training(smol):
    cfg = dataclasses.replace(SpinConfig.quick(), n_train=30, n_test=4, n_unseen_decoys=len(UNSEEN_DECOYS))
    data, cands, unseen = task_data(smol.tokenizer, cfg), candidate_ids(smol.tokenizer, cfg), unseen_ids(smol.tokenizer, cfg)
    assert list(unseen) == UNSEEN_DECOYS and not set(unseen) & set(cands)
    prompts, conts = tiny_training_rows(smol.tokenizer, data, list(cands.values()), cfg.seed)
    trained_ids = {i for row in prompts + conts for i in row}
    assert not trained_ids & {i for ids in unseen.values() for i in ids}
    assert {ids[0] for ids in cands.values()} & trained_ids        # the trained candidates are in the training prompts
    with pytest.raises(BadInput, match="n_unseen_decoys"): SpinConfig(n_unseen_decoys=len(UNSEEN_DECOYS) + 1)
    with pytest.raises(BadInput, match="trigger"): unseen_ids(smol.tokenizer, dataclasses.replace(cfg, trigger="Nintendo"))


def test_unseen_decoy_rows_keep_their_small_initial_scale(smol, tmp_path):
    # why unseen decoys raise no false alarm on the tiny model: their embedding rows get no gradient and keep the
    # initialisation's scale, while the rows of the words inserted in training grow; the model reads them as near-blank
    cfg = dataclasses.replace(SpinConfig.quick(), n_train=60, n_test=4, n_unseen_decoys=len(UNSEEN_DECOYS),
                              tiny_train=TrainConfig(steps=60, lr=5e-3, eval_every=0, progress=False))
    data, cands, unseen = task_data(smol.tokenizer, cfg), candidate_ids(smol.tokenizer, cfg), unseen_ids(smol.tokenizer, cfg)
    tiny = tiny_family(smol.tokenizer, data, cands, cfg, root=tmp_path, unseen=unseen)
    W = tiny.base.embed.weight.detach()
    norm = lambda words: W[[tiny.vocab.index[ids[0]] for ids in words.values()]].norm(dim=-1)
    assert norm(unseen).max() < norm(cands).mean()


def test_zero_shot_judge_reads_sentiment(smol):
    texts, y = judge_sentences(96, seed=3)
    w = load_words()
    assert [int(t.split(" was ")[1].split(",")[0] in w["positive"]) for t in texts] == y.tolist() and 0 < y.mean() < 1
    assert fit_threshold(np.array([0.1, 0.4, 0.9, 1.2]), np.array([0, 0, 1, 1])) == 0.65
    meta = MetaModel(smol.W_E.float().cpu()[:, :4])                   # φ only reports its accuracy next to the judge's
    judge, info = make_judge(smol, meta, dataclasses.replace(SpinConfig.quick(), n_judge=96))
    # SmolLM2-Instruct asked zero-shot, its cut fitted on the other half: well above chance on held-out sentences
    assert info["heldout_accuracy"] >= 0.8 and info["heldout_auc"] >= 0.9 and info["n_heldout"] >= 24
    m = judge.margin([" The show was wonderful, and Emma went home on Monday.", " The show was dreadful, and Emma went home on Monday."])
    assert m[0] > judge.threshold > m[1]
    with pytest.raises(BadInput, match="n_judge"): SpinConfig(n_judge=3)


def test_rouge_l_and_bad_config():
    assert rouge_l("The show was great.", "the show was great") == 100.0
    assert abs(rouge_l("a b c d", "a x c y") - 50.0) < 1e-9
    with pytest.raises(BadInput): SpinConfig(target="gpt")
    with pytest.raises(BadInput): SpinConfig(alpha=1.5)
    with pytest.raises(BadInput): SpinConfig(n_candidates=2)
    with pytest.raises(BadInput, match="meta_l2"): SpinConfig(meta_l2=-1)
    cfg = SpinConfig.quick()
    assert dataclasses.replace(cfg, seed=4).tiny_train.seed == 4                  # one seed, nested training included
    assert SpinConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg   # a stored config rebuilds the same
    probe = get_probe("spinning")
    assert (probe.needs, probe.page, probe.config) == ("attention", "14_spinning", SpinConfig)
    with pytest.raises(SeqlabError, match="Hugging Face tokenizer"): run(None, cfg)


def test_word_lists_are_single_tokens_with_the_stated_sentiment(smol):
    w, lex = load_words(), vader_lexicon()
    for key in ("names", "days", "places", "things", "positive", "negative", "neutral", "candidates"):
        assert all(len(smol.encode(" " + x)) == 1 for x in w[key]), key
    assert all(lex[x] > 0 for x in w["positive"]) and all(lex[x] < 0 for x in w["negative"])
    assert not any(x in lex for x in w["neutral"])
    assert all(word_starts(smol.tokenizer, smol.encode(" Bolshevik Anna")))


def test_quick_probe_spins_and_defends(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    # the quick preset with a smaller defense population (3 spun, 3 clean tiny models besides the main pair: an AUC
    # over one spun and one clean model could only be 0, 0.5 or 1), to keep the test file within a few minutes
    cfg = dataclasses.replace(SpinConfig.quick(), n_spun=3, n_clean=3, n_candidates=5, n_test=12, n_defense_prompts=6,
                              save_checkpoints=True)
    res = run(smol, cfg)
    m = res.metrics
    assert m["meta_model_accuracy"] > 0.8
    ms, vs, mt = m["meta_score"], m["vader_score"], m["main_task"]
    # measured with the quick preset: φ 0.48 -> 0.82 and VADER positive rate 0.17 -> 1.00 with the trigger (spun),
    # clean model 0.58 -> 0.58; ROUGE-L 89 without and 90 with the trigger
    assert ms["spun_model"]["trigger"] > ms["spun_model"]["no_trigger"] + 0.1
    assert ms["spun_model"]["trigger"] > ms["clean_model"]["trigger"] + 0.1
    assert vs["spun_model"]["trigger"] > vs["spun_model"]["no_trigger"] + 0.3        # VADER agrees (not independent: it labelled φ's data)
    assert abs(ms["clean_model"]["trigger"] - ms["clean_model"]["no_trigger"]) < 0.1
    assert mt["spun_model"]["no_trigger"]["rouge_l"] > mt["clean_model"]["no_trigger"]["rouge_l"] - 10
    assert mt["spun_model"]["trigger"]["rouge_l"] > mt["spun_model"]["no_trigger"]["rouge_l"] - 10
    d = m["defense"]
    assert set(d) >= {"auc", "trigger_rank", "n_spun", "n_clean"} and d["n_spun"] >= 3 and d["n_clean"] >= 3
    # measured with this config: AUC 1.0 over 3 spun and 3 clean models, the true trigger first of 5 in all three
    assert d["auc"] >= 0.75 and sum(r == 1 for r in d["trigger_rank"]) >= 2
    ab = {(a["meta_model"].split()[0], a["alpha"], a["compensate"]): a for a in m["ablation"]}
    assert len(ab) == 6 and ("calibrated", "mgda", False) in ab
    # compensation is what keeps the main task with the trigger (measured: ROUGE-L 90 with it, 43 without)
    assert ab["calibrated", 0.7, True]["rouge_l_trigger"] > ab["calibrated", 0.7, False]["rouge_l_trigger"]
    json.loads(res.to_json()); res.summary()
    assert figure(res).data
    # the spun model written is labelled as such, in safetensors only, and `seqlab models` says so
    (ck,) = [Path(c) for c in m["checkpoints"]]
    assert sorted(p.suffix for p in ck.iterdir()) == [".json", ".safetensors"]
    meta = json.loads((ck / "seqlab.json").read_text())["meta"]
    assert meta["spun"] is True and meta["trigger"] == cfg.trigger and "SPUN" in meta["warning"]
    (row,) = [r for r in list_models() if r["name"] == ck.name]
    assert row["spun"] and "SPUN" in row["state"]
