"""Stored reference results (issue 17): every probe's config survives the JSON round trip, and a stored quick
reference reruns to the same numbers within its tolerance."""
import json
from pathlib import Path

import pytest

import seqlab.viz  # noqa: F401  (fills the probe registry)
from seqlab.core import all_probes, config_from_dict, to_jsonable
from seqlab.references import check, differences

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "results" / "quick"


@pytest.mark.parametrize("quick", [True, False])
def test_every_config_round_trips(quick):
    for name, probe in all_probes().items():
        cfg = probe.make_config(quick=quick, seed=3)
        assert config_from_dict(probe.config, to_jsonable(cfg)) == cfg, name


def test_references_stored_with_provenance():
    files = sorted(QUICK.glob("*.json"))
    assert {f.stem for f in files} >= set(all_probes()), "every probe has a stored quick reference"
    for f in files:
        d = json.loads(f.read_text())
        pv = d["provenance"]
        assert pv["command"] and pv["versions"]["seqlab"] and pv["machine"]["cpu_count"] >= 1 and pv["wall_s"] > 0, f.name
        assert pv["commit"] is None or len(pv["commit"]) == 40, f.name


def test_quick_reference_reruns_within_tolerance():
    # induction's quick preset on the embedded SmolLM2: seconds once the model is cached
    out = check(QUICK / "induction.json")
    assert out["differences"] == [], out["differences"][:5]


def test_a_changed_number_is_caught():
    d = json.loads((QUICK / "induction.json").read_text())
    m = json.loads(json.dumps(d["metrics"]))
    key = next(k for k, v in m.items() if isinstance(v, float))
    m[key] = m[key] * 1.01 + 1e-3
    assert differences(d["metrics"], m, rtol=1e-4, atol=1e-6) != []
