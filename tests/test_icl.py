"Tests for seqlab.icl: the REGBENCH generator, minimisation, dedup, n-gram baselines, metrics, and the regression pieces."
import numpy as np
import pytest
import torch

from seqlab.core import BadInput
from seqlab import icl
from seqlab.icl import (DFA, LETTERS, SEP, RegbenchConfig, REGBENCH_PRESETS, accepts_same_up_to, canonical_key,
                        dfa_next_dists, hopcroft_minimize, icll_scores, make_splits, moore_classes, ngram_backoff_dists,
                        random_dfa, reference_dedup_survivors, sample_instance)


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


def test_ngram_baselines_hand_built():
    t = "ab|ab|ab"
    p1, p2, p3 = (ngram_backoff_dists(t, n) for n in (1, 2, 3))
    assert torch.allclose(p1[6, :2], torch.tensor([.6, .4]))
    assert torch.allclose(p2[6, :2], torch.tensor([0., 1.]))
    assert torch.allclose(p2[2, :2], torch.tensor([.5, .5]))       # '|' never followed by a letter yet: back off
    assert torch.allclose(p3[5, :2], torch.tensor([1., 0.]))
    # "abcabd": after the second 'b' the 2-gram has seen b->c once; the 3-gram context 'ab' also -> c
    q2, q3 = ngram_backoff_dists("abcabd", 2), ngram_backoff_dists("abcabd", 3)
    assert q2[4].argmax() == LETTERS.index("c") and q3[4].argmax() == LETTERS.index("c")
    assert torch.allclose(q2.sum(-1), torch.ones(5))


def test_metrics_hand_computed():
    pd = torch.zeros(1, 18); pd[0, :2] = .5
    pm = torch.zeros(1, 18); pm[0, :3] = torch.tensor([.1, .3, .6])
    s = icll_scores(pm, pd, torch.tensor([True]))
    assert s["accuracy"].item() == 0.0                               # argmax 'c' is not an out-edge
    assert abs(s["tvd"].item() - 0.6) < 1e-6 and abs(s["l1"].item() - 1.2) < 1e-6   # 1/2 (.4 + .2 + .6)
