"Tests for seqlab.icl_regression: baselines, the LSA closed form, the config, and a tiny cached run."
import dataclasses

import pytest
import torch

from seqlab.core import BadInput, get_probe
from seqlab.icl_regression import (RegressionConfig, RegressionResult, averaging_predictions, knn_predictions,
                                   least_squares_predictions, lsa_gamma, lsa_predict, ridge_predictions, run_icl_regression,
                                   sample_regression, train_lsa)
from seqlab.train import TrainConfig
from seqlab.viz import figure

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


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path))
    return tmp_path


def test_run_icl_regression_tiny_and_cached(tmp_home):
    backbone = dataclasses.replace(RegressionConfig().backbone, d_model=16, n_layers=1)
    cfg = RegressionConfig(d=2, n_points=5, backbone=backbone, train=TrainConfig(steps=10, weight_decay=0.0, eval_every=0),
                           curriculum_every=0, n_eval=32, n_boot=20, lsa_steps=20, lsa_batch=64, progress=False)
    r = run_icl_regression(None, cfg)
    m = r.metrics
    assert set(m["error_curve"]) >= {"transformer", "least_squares", "ridge", "3nn", "averaging", "lsa"}
    assert all(len(c) == 5 for c in m["error_curve"].values())
    assert m["error_curve"]["least_squares"][3] < 1e-6                 # k >= d: exact
    assert set(m["shift"]) == set(m["error_curve"])
    assert list(tmp_home.glob("checkpoints/icl-regression-*/model.safetensors"))
    r2 = run_icl_regression(None, cfg)                                  # loads the cached checkpoint
    assert r2.metrics["error_curve"]["transformer"] == m["error_curve"]["transformer"]
    assert r.summary() and len(list(tmp_home.glob("checkpoints/icl-regression-*"))) == 1
    assert figure(r).data


def test_registered_and_config_nests_backbone_and_training():
    p = get_probe("icl-regression")
    assert p.needs == "own" and p.page == "10_icl_regression" and p.result is RegressionResult
    q = p.make_config(quick=True, seed=3)
    assert q.train.seed == 3 and q.train.steps == 2500 and q.backbone.n_ctx == 2 * q.n_points
    assert RegressionConfig(**dataclasses.asdict(q)) == q


def test_trained_regressor_learns_in_context(tmp_home):
    """A claim that can fail: a tiny Transformer trained for 800 steps on d=2 predicts the query better after five
    examples than with none, beyond the 90% bootstrap bands (an untrained or broken trainer stays at ~1.0 everywhere),
    and beats the 3-nearest-neighbour baseline on average over k = 1..5. Measured (n_eval 256): 0.96 at k=0 -> 0.62 at k=5.
    At this scale it does NOT yet beat averaging at k=5 (0.62 vs 0.55) or approach least squares (0.0): that needs
    the longer runs of the headline issue."""
    backbone = dataclasses.replace(RegressionConfig().backbone, d_model=32, n_layers=2)
    cfg = RegressionConfig(d=2, n_points=6, backbone=backbone,
                           train=dataclasses.replace(RegressionConfig.quick().train, steps=800, eval_every=0),
                           curriculum_every=0, n_eval=1024, n_boot=100, lsa_steps=20, lsa_batch=64, progress=False)
    m = run_icl_regression(None, cfg).metrics
    tf, band = m["error_curve"]["transformer"], m["error_band"]["transformer"]
    lo, hi = band
    assert tf[-1] < 0.8 * tf[0] and hi[-1] < lo[0], (tf, band)
    knn = m["error_curve"]["3nn"]
    assert sum(tf[1:]) < sum(knn[1:]), (tf, knn)
