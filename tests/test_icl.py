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


# ---- regression ----
from seqlab.icl import (ICLLConfig, RegressionConfig, averaging_predictions, knn_predictions, least_squares_predictions,
                        lsa_gamma, lsa_predict, ridge_predictions, run_icl_regression, run_icll, sample_regression, train_lsa,
                        zero_shot_ids)


def test_regression_baselines_hand_built():
    xs = torch.tensor([[[1., 0.], [0., 1.], [2., 3.]]]); w = torch.tensor([2., -1.])
    ys = xs @ w
    assert torch.allclose(least_squares_predictions(xs, ys), torch.tensor([[0., 0., 1.]]), atol=1e-5)
    assert torch.allclose(averaging_predictions(xs, ys)[0], torch.tensor([0., 0., .5]), atol=1e-6)
    assert torch.allclose(knn_predictions(xs, ys)[0, :2], torch.tensor([0., 2.]))
    assert abs(ridge_predictions(xs, ys, 1e-6)[0, 2].item() - 1.0) < 1e-4
    # ridge with a large penalty shrinks towards 0
    assert abs(ridge_predictions(xs, ys, 1e6)[0, 2].item()) < 1e-3


def test_lsa_closed_form_tiny_case():
    g = torch.Generator().manual_seed(1)
    cov, N = torch.diag(torch.tensor([2., .5])), 4
    xs, ys, _ = sample_regression(100_000, N + 1, 2, g, cov=cov)
    h = torch.einsum("ni,nid->nd", ys[:, :N], xs[:, :N]) / N
    feats = torch.einsum("na,nb->nab", xs[:, N], h).reshape(-1, 4).double()
    A = torch.linalg.lstsq(feats, ys[:, N].double()[:, None]).solution.reshape(2, 2).float()
    assert torch.allclose(A, torch.linalg.inv(lsa_gamma(cov, N)), atol=0.03)
    # GD from ZFB's initialisation approaches the closed form; the other blocks stay near zero
    out = train_lsa(2, 10, steps=400, lr=0.05, batch=1024, sigma=0.1, generator=g)
    assert out["history"][-1]["gap"] < 0.1 < out["history"][0]["gap"]
    # the prediction form with only c and K nonzero
    PV = torch.zeros(3, 3); PV[-1, -1] = 2.0; KQ = torch.zeros(3, 3); KQ[:2, :2] = torch.eye(2)
    xq = xs[:3, N]
    direct = 2.0 * torch.einsum("ni,nid,nd->n", ys[:3, :N], xs[:3, :N], xq) / N
    assert torch.allclose(lsa_predict(PV, KQ, xs[:3, :N], ys[:3, :N], xq), direct, atol=1e-4)


def test_configs_refuse_bad_values():
    with pytest.raises(BadInput, match="n_points"): RegressionConfig(d=0)
    with pytest.raises(BadInput, match="curriculum"): RegressionConfig(d=4, curriculum_d_start=6)
    with pytest.raises(BadInput, match="Unknown ICLL architectures"): ICLLConfig(archs=("gpt5",))


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    return tmp_path


def test_run_icl_regression_tiny_and_cached(tmp_home):
    cfg = RegressionConfig(d=2, n_points=5, d_model=16, n_layers=1, steps=10, curriculum_every=0, n_eval=32, n_boot=20,
                           lsa_steps=20, lsa_batch=64, progress=False)
    r = run_icl_regression(None, cfg)
    m = r.metrics
    assert set(m["error_curve"]) >= {"transformer", "least_squares", "ridge", "3nn", "averaging", "lsa"}
    assert all(len(c) == 5 for c in m["error_curve"].values())
    assert m["error_curve"]["least_squares"][3] < 1e-6                 # k >= d: exact
    assert set(m["shift"]) == set(m["error_curve"]) and m["lsa_closed_form_gap"] >= 0
    assert list(tmp_home.glob("checkpoints/icl-regression-*/model.safetensors"))
    r2 = run_icl_regression(None, cfg)                                  # loads the cached checkpoint
    assert r2.metrics["error_curve"]["transformer"] == m["error_curve"]["transformer"]
    assert r.figure() is not None and r.summary()


def test_zero_shot_ids_and_tiny_icll_run(smol, tmp_home):
    ids, letter_ids = zero_shot_ids(smol, "ab|c")
    assert len(ids) == 4 and len(letter_ids) == 18 and len(set(letter_ids.tolist())) == 18
    cfg = ICLLConfig(string_len=(1, 4), max_chars=40, train_sizes=(8,), n_val=2, n_test=4, archs=("transformer", "mamba2+ngram"),
                     d_model=16, n_layers=1, steps=3, batch_size=4, n_zero_shot=2, zero_shot_max_chars=30, progress=False)
    r = run_icll(smol, cfg)
    m = r.metrics
    assert set(m["accuracy"]) == {"transformer", "mamba2+ngram"} and set(m["baselines"]) == {"1gram", "2gram", "3gram"}
    assert all(0 <= v <= 1 for v in m["accuracy"].values()) and all(0 <= v <= 1 for v in m["tvd"].values())
    assert 0 <= m["zero_shot"]["strict_accuracy"] <= m["zero_shot"]["restricted_accuracy"] + 1e-9   # a letter argmax over the whole vocabulary is the letter argmax
    assert m["train_sizes"] == [8] and m["baselines_oracle"]["tvd"] == 0.0
    assert r.figure() is not None and r.summary()
