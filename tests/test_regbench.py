"Tests for seqlab.regbench: the REGBENCH generator, minimisation, dedup, splits, metrics, and the ICLL models' recipe."
import numpy as np
import pytest
import torch

from seqlab.core import BadInput
from seqlab.regbench import (DFA, SEP, RegbenchConfig, REGBENCH_PRESETS, ICLLModelsConfig, accepts_same_up_to, canonical_key,
                             dfa_next_dists, encode_instances, evaluate_icll, hopcroft_minimize, icll_data, icll_model,
                             icll_models, icll_scores, icll_tokenizer, letter_probs, make_splits, moore_classes, random_dfa,
                             reference_dedup_survivors, score_instances)
from seqlab.train import TrainConfig


def _general_dfa(rng):
    n = int(rng.integers(1, 8)); sigma = "abcd"[: int(rng.integers(1, 5))]
    rows = [{a: int(rng.integers(n)) for a in sigma if rng.random() < 0.7} for _ in range(n)]
    return DFA.from_dict(rows, 0, frozenset(q for q in range(n) if rng.random() < 0.5))


def test_minimised_dfa_accepts_same_strings_and_is_minimal():
    rng = np.random.default_rng(123)
    for i in range(400):
        d = _general_dfa(rng) if i % 2 else random_dfa(rng, n_states=(2, 8), alphabet_size=(2, 3), out_degree=(1, 3))
        m = hopcroft_minimize(d)
        assert accepts_same_up_to(d, m, 5)
        assert m.n_states == moore_classes(d)         # as few states as the naive refinement finds
        assert hopcroft_minimize(m) == m              # idempotent, already canonical


def test_canonical_key_equal_iff_same_language():
    rng = np.random.default_rng(7)
    ds = [random_dfa(rng, n_states=(2, 4), alphabet_size=(2, 2), out_degree=(1, 2), letters="ab") for _ in range(60)]
    for a in ds[:20]:
        for b in ds[20:]:
            assert (canonical_key(a) == canonical_key(b)) == accepts_same_up_to(a, b, 8, "ab")
    # a renamed-states copy has the same key
    d = DFA.from_dict([{"a": 2}, {"b": 0}, {"c": 1}])
    perm = DFA.from_dict([{"c": 2}, {"a": 0}, {"b": 1}], start=1)   # old states 0,1,2 renamed 1,2,0
    assert canonical_key(d) == canonical_key(perm)


def test_every_sampled_string_is_accepted_and_ranges_hold():
    cfg = RegbenchConfig(max_chars=4096)
    s = make_splits({"train": 30, "test": 10}, cfg, seed=3)
    for rows in s["splits"].values():
        for r in rows:
            strings = r["text"].split(SEP)
            assert 10 <= len(strings) <= 19 and all(1 <= len(x) <= 49 for x in strings)
            assert all(r["dfa"].accepts(x) for x in strings)
            assert 1 <= r["dfa"].n_states <= 12
    paper = REGBENCH_PRESETS["paper"]
    assert paper.n_strings == (10, 20) and paper.string_len == (1, 50)


def test_splits_disjoint_and_reference_dedup_lets_duplicates_through():
    cfg = RegbenchConfig(n_states=(2, 3), alphabet_size=(1, 2), out_degree=(1, 1), n_strings=(2, 2), string_len=(1, 3))
    rng = np.random.default_rng(0)
    drawn = [random_dfa(rng, cfg.n_states, cfg.alphabet_size, cfg.out_degree) for _ in range(300)]
    n_unique = len({canonical_key(d) for d in drawn})
    kept_by_reference = reference_dedup_survivors(drawn)
    assert kept_by_reference == 300 and n_unique < 300       # the identity set keeps every duplicate
    duplicates_let_through = kept_by_reference - n_unique
    assert duplicates_let_through > 100
    s = make_splits({"train": 40, "val": 10, "test": 10}, cfg, seed=0)
    keys = {k: [r["key"] for r in v] for k, v in s["splits"].items()}
    assert all(len(set(v)) == len(v) for v in keys.values())
    assert not (set(keys["train"]) & set(keys["test"])) and not (set(keys["train"]) & set(keys["val"])) \
        and not (set(keys["val"]) & set(keys["test"]))
    assert s["n_duplicates"] > 0


def test_bad_inputs():
    with pytest.raises(BadInput, match="inclusive"): RegbenchConfig(n_states=(5, 4))
    with pytest.raises(BadInput, match="states are"): DFA.from_dict([{"a": 3}])
    with pytest.raises(BadInput, match="not from this DFA"): dfa_next_dists(DFA.from_dict([{"a": 0}]), "ab")
    with pytest.raises(BadInput, match="same shape"): icll_scores(torch.zeros(2, 18), torch.zeros(3, 18), torch.ones(2, dtype=torch.bool))


def test_metrics_hand_computed():
    pd = torch.zeros(1, 18); pd[0, :2] = .5
    pm = torch.zeros(1, 18); pm[0, :3] = torch.tensor([.1, .3, .6])
    s = icll_scores(pm, pd, torch.tensor([True]))
    assert s["accuracy"].item() == 0.0                               # argmax 'c' is not an out-edge
    assert abs(s["tvd"].item() - 0.6) < 1e-6 and abs(s["l1"].item() - 1.2) < 1e-6   # 1/2 (.4 + .2 + .6)




def test_score_instances_matches_per_instance_scores():
    pd = torch.zeros(2, 18); pd[:, :2] = .5
    pm = torch.zeros(2, 18); pm[0, :3] = torch.tensor([.7, .1, .2]); pm[1, :3] = torch.tensor([.2, .2, .6])
    agg = score_instances([pm, pd], [(pd, torch.tensor([True, True])), (pd, torch.tensor([True, False]))], 3)
    assert abs(agg["accuracy"] - 2 / 3) < 1e-6 and agg["accuracy_by_position"][:2] == [1.0, 0.0]
    assert len(agg["tvd_by_position"]) == 3 and np.isnan(agg["tvd_by_position"][2])


def test_icll_config_nests_data_and_training():
    q = ICLLModelsConfig.quick()
    assert q.data.max_chars == 96 and q.train.steps == 200 and q.train.lr == 3e-3
    import dataclasses
    r = dataclasses.replace(q, seed=7, progress=True)
    assert r.train.seed == 7 and r.train.progress            # one seed, copied into the trainer's config
    assert ICLLModelsConfig(**dataclasses.asdict(q)) == q     # round trip through JSON-like dicts
    with pytest.raises(BadInput, match="train_sizes"): ICLLModelsConfig(train_sizes=(0,))


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    return tmp_path


TINY = dict(data=RegbenchConfig(string_len=(1, 4), max_chars=40), train_sizes=(4, 8), n_val=2, n_test=4, d_model=16,
            n_layers=1, batch_size=4, train=TrainConfig(steps=3), progress=False)


def test_icll_models_cached_and_read_through_capture(tmp_home):
    cfg = ICLLModelsConfig(**TINY)
    data = icll_data(cfg)
    nets = icll_models(cfg, ["transformer", "lstm+ngram"], data=data)
    assert [m.name for m in nets.values()] == ["icll-transformer-n8", "icll-lstm+ngram-n8"]
    assert nets["transformer"].meta["n_params"] == sum(p.numel() for p in nets["transformer"].hooked.parameters())
    ckpts = sorted(p.name for p in (tmp_home / "checkpoints").glob("icll-*"))
    assert len(ckpts) == 2 and ckpts[0].startswith("icll-lstm+ngram-n8-")
    again = icll_model("transformer", cfg, data=data)            # loaded from the cache: same weights
    for a, b in zip(again.hooked.parameters(), nets["transformer"].hooked.parameters()): assert torch.equal(a, b)
    assert len(list((tmp_home / "checkpoints").glob("icll-*"))) == 2
    small = icll_model("transformer", cfg, n_train=4, data=data)
    assert small.name == "icll-transformer-n4" and len(list((tmp_home / "checkpoints").glob("icll-*"))) == 3
    with pytest.raises(BadInput, match="exceeds"): icll_model("transformer", cfg, n_train=9, data=data)
    # letter_probs (through capture) equals the model's own forward pass, batch by batch
    rows = data["splits"]["test"]
    texts = [r["text"] for r in rows]
    probs = letter_probs(nets["transformer"], texts, batch_size=2)
    for s in (0, 2):
        enc = encode_instances(texts[s:s + 2], icll_tokenizer(), max(len(t) for t in texts[s:s + 2]))
        logits = nets["transformer"].hooked(enc["tokens"], attention_mask=enc["attention_mask"]).detach()
        for b in range(2): assert torch.equal(probs[s + b], logits[b, : len(texts[s + b]) - 1, :18].softmax(-1))
    ev = evaluate_icll(nets["transformer"], rows, cfg)
    assert 0 <= ev["accuracy"] <= 1 and len(ev["tvd_by_position"]) == 39
