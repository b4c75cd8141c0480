"The induction probe on the embedded model."
import torch

from seqlab.head_scores import induction_scores
from seqlab.heads import InductionConfig, run_induction
from seqlab.viz import figure


def test_induction_heads_found_and_second_copy_is_easy(smol):
    res = run_induction(smol, InductionConfig.quick())
    m = res.metrics
    assert m["top_heads"][0]["score"] > 0.5
    assert m["loss_second_copy"] < 0.4 * m["loss_first_copy"]
    scores = [h["score"] for h in m["top_heads"]]
    assert scores == sorted(scores, reverse=True)
    assert len(m["induction_scores"]) == 30 and len(m["induction_scores"][0]) == 9
    d = res.to_dict()
    assert {"probe", "model", "config", "metrics", "seed", "seqlab_version", "elapsed_s"} <= set(d)
    c = m["causal"]["top_induction_heads"]              # mean-ablating the top 5 heads vs 5 random heads from any layer
    assert [tuple(h) for h in c["heads"]] == [(t["layer"], t["head"]) for t in m["top_heads"][:5]]
    assert c["exceeds"] == 0 and c["effect"]["lo"] > 2 * c["random"]["hi"] > 0
    assert c["random"]["draws"] == 10 and len({l for draw in c["random"]["heads"] for l, _ in draw}) > 2   # from many layers
    iv = m["intervals"]                                 # bootstrap over the 8 sequences: the copies differ by far more than the interval
    assert iv["loss_second_copy"]["hi"] < iv["loss_first_copy"]["lo"] and iv["top_heads"][0]["lo"] > 0.5 and iv["top_heads"][0]["n"] == 8
    assert abs(iv["loss_first_copy"]["mean"] - m["loss_first_copy"]) < 1e-4
    fig = figure(res)                                   # the view draws both grids, layer x head
    assert [tuple(t.z.shape) for t in fig.data if t.type == "heatmap"] == [(30, 9), (30, 9)]


def test_induction_is_deterministic_given_the_seed(smol):
    cfg = InductionConfig(n_seqs=2, seq_len=8, batch_size=2, seed=7, causal_seqs=1, causal_draws=2)
    a, b = run_induction(smol, cfg), run_induction(smol, cfg)
    assert a.metrics["top_heads"] == b.metrics["top_heads"] and a.metrics["causal"] == b.metrics["causal"]


def test_scores_on_a_uniform_pattern_are_chance():
    L, off = 5, 1; n = off + 2 * L
    uniform = torch.tril(torch.ones(n, n)); uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    ind, prev = induction_scores(uniform, L, off)
    expected = torch.tensor([1 / (i + 1) for i in range(off + L, off + 2 * L)]).mean()
    assert torch.isclose(ind[0, 0], expected)
