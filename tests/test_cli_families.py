"""Every probe through the command line on every Hugging Face family (issue 14's acceptance): a tiny random model of
each family in seqlab.families.TINY_CONFIGS, and each probe that studies a given model run with its quick preset
(shrunk with --set where a run would take long). A probe that does not apply to the family's layers, or cannot read a
character-level tokenizer, must say so with a SeqlabError (exit status 2, one line), never crash."""
import json, math, re

import pytest
import torch

from seqlab.cli import applicable_probes, main
from seqlab.core import all_probes
from seqlab.families import FAMILIES, TINY_CONFIGS, write_tiny

PROBES = sorted(all_probes())
CONTEXT = 512   # positions of the tiny attention models (default 64): verbatim's shrunk stimuli run to 272 characters, one token each
# Settings that shrink a quick preset further (the quick presets are sized for SmolLM2 in minutes; here 11 families x
# every probe must run in about a minute). Only sizes change, never the method.
SHRINK = {
    "successor": ["--set", "probe_steps=20", "--set", "n_prompts_per_task=2", "--set", "full_vocab_top=2"],
    "verbatim": ["--set", "list_lengths=[3]", "--set", "sweep_list_length=3", "--set", "interveners=[1]",
                 "--set", 'scenarios=["intact"]', "--set", "n_boot=100",
                 "--set", "causal.items=2", "--set", "causal.draws=2", "--set", "causal.score_seqs=2"],
    "icll": ["--set", 'archs=["transformer"]', "--set", "models.train.steps=2", "--set", "models.train_sizes=[16]",
             "--set", "models.n_test=8", "--set", "models.n_val=0"],
}
# The numbers each probe's result leads with: all must be finite (a nested dict/list counts every number in it).
HEADLINES = {
    "induction": ["loss_first_copy", "loss_second_copy", "induction_scores", "causal"],
    "successor": ["best.score", "chance_pooled", "mod10.loto_accuracy", "ablation.best"],
    "verbatim": ["repeat_surprisal", "causal"],
    "icll": ["zero_shot.strict_accuracy", "zero_shot.restricted_accuracy", "accuracy"],
}
# Probes that need words or spaced letters as single tokens; a character vocabulary has no word tokens at all.
TOKEN_REFUSALS = {"ngram": r"into several tokens|word tokens", "spinning": r"one token after a space", "icll": r"one token per symbol"}


# Open bugs (requests filed): remove an entry when its fix lands (strict: the test then fails as XPASS to say so).
KNOWN_BUGS: dict = {}   # (family, probe) -> reason


@pytest.fixture(scope="module", autouse=True)
def quiet_machine(tmp_path_factory):
    "One torch thread (two threads on a shared 2-core machine spin against each other: ~10x slower on tiny models), and a private SEQLAB_HOME."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLAB_HOME", str(tmp_path_factory.mktemp("seqlab_home")))
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    "family -> folder of its tiny model (written on first use)."
    root, made = tmp_path_factory.mktemp("families"), {}
    def get(fam):
        if fam not in made:
            ctx = {} if FAMILIES[fam].kind == "recurrent" else {"n_positions" if fam == "gpt2" else "max_position_embeddings": CONTEXT}
            made[fam] = write_tiny(fam, root / fam, **ctx)
        return made[fam]
    return get


def _at(d, path: str):
    for k in path.split("."): d = d[k]
    return d


def _numbers(x):
    "Every number nested in `x`; a null counts as NaN (Result JSON writes non-finite floats as null)."
    if isinstance(x, dict): return [n for v in x.values() for n in _numbers(v)]
    if isinstance(x, (list, tuple)): return [n for v in x for n in _numbers(v)]
    if x is None: return [math.nan]
    return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []


def _one_token(folder, text: str) -> bool:
    "Whether the folder's own tokenizer (as seqlab loads it) makes `text` one token."
    from transformers import AutoTokenizer
    return len(AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False).input_ids) == 1


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("fam", sorted(TINY_CONFIGS))
def test_probe_on_family_through_the_cli(fam, probe, folders, tmp_path, capsys, request):
    p = all_probes()[probe]
    if (fam, probe) in KNOWN_BUGS: request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[fam, probe]))
    if p.needs == "own": pytest.skip(f"{probe} trains its own models (needs='own'): nothing per family to run")
    folder, kind = folders(fam), FAMILIES[fam].kind
    rc = main(["run", probe, "--model", str(folder), "--quick", "--out", str(tmp_path), *SHRINK.get(probe, [])])
    err = capsys.readouterr().err
    written = tmp_path / f"{probe}.json"
    if probe not in applicable_probes(kind):
        assert rc == 2 and f"needs a model with {p.needs} layers" in err and f"is {kind}" in err, (rc, err)
        assert not written.exists()
        return
    refuse = TOKEN_REFUSALS.get(probe)
    if probe == "icll" and _one_token(folder, " a"): refuse = None   # qwen2: transformers reloads its tokenizer as Qwen2Tokenizer, which drops spaces
    if refuse is not None:
        line = next((l for l in err.splitlines() if l.startswith("seqlab: error: ")), "")
        assert rc == 2 and re.search(refuse, line) and "Traceback" not in err, (rc, err[-2000:])
        assert not written.exists()
        return
    assert rc == 0, err
    rec = json.loads(written.read_text())
    assert rec["probe"] == probe and rec["model"] == folder.name
    assert probe in HEADLINES, f"{probe} ran: name its headline metrics in HEADLINES"
    for key in HEADLINES[probe]:
        if key == "causal" and kind != "attention": continue   # head ablations: attention models only
        nums = _numbers(_at(rec["metrics"], key))
        assert nums and all(math.isfinite(v) for v in nums), (key, nums[:10])


# The head atlas (`seqlab atlas`) is a command of its own, not a registered probe; attention models only.
ATLAS_SHRINK = ["--set", "n_seqs=2", "--set", "dfa_seqs=2", "--set", "dfa_tokens=32", "--set", "successor_prompts=1",
                "--set", "verbatim_items=2", "--set", "n_draws=2", "--set", "batch_size=4"]


@pytest.mark.parametrize("fam", sorted(TINY_CONFIGS))
def test_atlas_on_family_through_the_cli(fam, folders, tmp_path, capsys):
    from seqlab.atlas import ATLAS
    folder, kind = folders(fam), FAMILIES[fam].kind
    rc = main(["atlas", "--model", str(folder), "--quick", "--out", str(tmp_path), *ATLAS_SHRINK])
    err = capsys.readouterr().err
    if kind != ATLAS.needs:
        assert rc == 2 and f"needs a model with {ATLAS.needs} layers" in err and not (tmp_path / "atlas.json").exists(), (rc, err)
        return
    assert rc == 0, err[-3000:]
    m = json.loads((tmp_path / "atlas.json").read_text())["metrics"]
    from seqlab.zoo import load
    a = load(folder, progress=False).arch
    assert len(m["heads"]) == a.n_layers * a.n_heads
    for key in ("induction", "prev_token", "successor", "ngram"):                 # every head's scores
        nums = _numbers([h[key] for h in m["heads"]])
        assert nums and all(math.isfinite(v) for v in nums), (key, nums[:10])
    measured = {tuple(lh) for lh in m["effect_heads"]}                           # the heads whose ablation was measured
    nums = _numbers([h["effects"] for h in m["heads"] if (h["layer"], h["head"]) in measured])
    assert measured and nums and all(math.isfinite(v) for v in nums), nums[:10]
