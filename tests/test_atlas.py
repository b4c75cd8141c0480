"The head atlas on a random tiny Llama: the JSON's shape, effects equal to one-at-a-time ablations, the command, bad input."
import json
from pathlib import Path

import pytest
import torch

from seqlab.atlas import CONTROLS, EFFECTS, AtlasConfig, AtlasResult, effect_tasks, run_atlas, score_grids
from seqlab.cli import main, save_result
from seqlab.core import SeqlabError
from seqlab.families import write_tiny
from seqlab.interventions import Z_HOOK, Intervention, run_intervened
from seqlab.zoo import load

# small stimuli so a run takes seconds; the default preset otherwise (every head ablated on every effect)
SMALL = dict(n_seqs=4, seq_len=12, dfa_seqs=3, dfa_tokens=24, successor_prompts=1, verbatim_items=3, n_draws=4,
             pattern_heads=2, pattern_text="ab cd ab cd. 1, 2, 3")
SETS = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
KEYS = {"layer", "head", "induction", "prev_token", "ngram", "successor", "effects"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A random tiny Llama (2 layers x 4 query heads, 2 key/value heads; character tokens) with room for the vignettes."
    folder = write_tiny("llama", tmp_path_factory.mktemp("atlas") / "tiny", seed=0, max_position_embeddings=512)
    return folder, load(str(folder))


@pytest.fixture(scope="module")
def result(tiny):
    return run_atlas(tiny[1], AtlasConfig(**SMALL))


def test_json_has_one_row_per_head_and_the_controls(result, tmp_path):
    rec = json.loads(result.to_json())
    assert {"probe", "model", "config", "metrics", "seed", "seqlab_version", "elapsed_s"} <= set(rec) and rec["probe"] == "atlas"
    heads = rec["metrics"]["heads"]
    assert [(r["layer"], r["head"]) for r in heads] == [(l, h) for l in range(2) for h in range(4)]
    for r in heads:
        assert KEYS <= set(r) and set(r["ngram"]) == {"1", "2", "3"} and set(r["effects"]) == set(EFFECTS)
        assert all(isinstance(v, float) for v in r["effects"].values())          # the default preset ablates every head
        assert all(0 <= x <= 1 for x in (r["induction"], r["prev_token"], r["successor"], *r["ngram"].values()))
        lo, hi = r["effect_intervals"]["copy_loss"]
        assert lo <= r["effects"]["copy_loss"] <= hi
    controls = rec["metrics"]["controls"]
    assert set(controls) == {f"{s}->{e}" for s, e in CONTROLS}
    for c in controls.values():
        assert len(c["heads"]) == 3 and len(c["random"]["effects"]) == SMALL["n_draws"] and 0 <= c["exceeds"] <= 1
        assert not {tuple(h) for d in c["random"]["heads"] for h in d} & {tuple(h) for h in c["heads"]}
    assert AtlasResult.load(result.save(tmp_path / "atlas.json")).metrics == result.metrics


def test_effects_equal_single_head_ablations_one_at_a_time(tiny, result):
    model, cfg = tiny[1], AtlasConfig(**SMALL)
    grids, dfa = score_grids(model, cfg)
    tasks, _ = effect_tasks(model, cfg, dfa)
    rows = {(r["layer"], r["head"]): r for r in result.metrics["heads"]}
    for name in ("copy_loss", "successor_drop", "repeat_surprisal"):
        inputs, metric = tasks[name]
        toks, mask = model.tokenize(inputs)
        ids = torch.arange(len(toks))
        clean = metric(model.forward_tokens(toks, mask, hooked=True), toks, mask, ids)
        for l, h in [(0, 3), (1, 2)]:
            spec = Intervention(Z_HOOK.format(layer=l), "mean", heads=h)      # mean over the same inputs' real tokens
            one = (metric(run_intervened(model, inputs, [spec]), toks, mask, ids) - clean).mean().item()
            assert abs(one - rows[(l, h)]["effects"][name]) < 1e-4, (name, l, h)   # the JSON keeps 4 decimals


def test_command_writes_atlas_json_and_html(tiny, result, tmp_path):
    out = tmp_path / "out"
    assert main(["atlas", "--model", str(tiny[0]), "--out", str(out), *SETS]) == 0
    rec = json.loads((out / "atlas.json").read_text())
    assert rec["metrics"] == result.metrics and rec["config"]["n_draws"] == SMALL["n_draws"]   # same settings, same numbers
    page = (out / "atlas.html").read_text()
    assert "plotly_click" in page and '"L' in page and (out / "plotly.min.js").exists()
    assert not list(out.glob(".*.tmp"))


def test_a_failed_write_leaves_the_old_json(result, tmp_path, monkeypatch):
    "The command's writer goes through a temporary file: a write that dies half-way never replaces atlas.json."
    (tmp_path / "atlas.json").write_text("old")
    real = Path.write_text
    def dying(self, text, *a, **k):
        if self.name.startswith(".atlas.json."):
            real(self, text[:100]); raise OSError("disk full")
        return real(self, text, *a, **k)
    monkeypatch.setattr(Path, "write_text", dying)
    with pytest.raises(OSError, match="disk full"): save_result(result, tmp_path)
    assert (tmp_path / "atlas.json").read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_bad_input_is_a_seqlab_error(tiny, tmp_path, capsys):
    from seqlab.archs import CharTokenizer, Mamba2, Mamba2Config
    from seqlab.zoo import as_lab_model
    tok = CharTokenizer("abcdefgh")
    ssm = as_lab_model(Mamba2(Mamba2Config(d_vocab=tok.vocab_size, d_model=16, n_layers=1)), tok, "tiny-mamba2")
    with pytest.raises(SeqlabError, match="needs a model with attention layers"): run_atlas(ssm, AtlasConfig(**SMALL))
    with pytest.raises(SeqlabError, match="ngram_n=4 must be one of"): run_atlas(tiny[1], AtlasConfig(**SMALL, ngram_n=4))
    # an unknown --set key is refused before any model loads (the model name here does not exist)
    assert main(["atlas", "--model", "no-such-model", "--set", "top_kk=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown setting 'top_kk'" in err and "Did you mean: top_k" in err and "Traceback" not in err
    assert main(["atlas", "--model", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "Unknown model 'no-such-model'" in capsys.readouterr().err
    assert not (tmp_path / "atlas.json").exists()
