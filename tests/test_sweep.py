"""Sweeps on a real local Ray (2 CPUs) inside a loopback-only network namespace: cells equal `seqlab run`, reruns do
no work, a killed worker's cell is retried, a failing cell is recorded while the rest finish, the summary's intervals
are right.

Ray may only start here inside a private network namespace holding just loopback (these machines must send nothing
past it; there Ray binds to 127.0.0.1). So the Ray part runs as a script under `unshare -n`, once per module; the
checks read what it left in its folders. Without permission for `unshare -n` (not root, or a container that forbids
it) the Ray tests are skipped with that reason."""
import json, math, os, re, statistics, subprocess, sys
from pathlib import Path

import pytest

from seqlab.cli import main
from seqlab.core import BadInput
from seqlab.sweep import expand, interval_table, run_sweep, summarize, summary_table

# icl-regression shrunk by overrides to seconds per cell: it trains its own tiny models, so it needs no download
TINY = {"train.steps": 10, "lsa_steps": 10, "n_eval": 32, "n_boot": 10, "lsa_batch": 64, "batch_size": 8}
SPEC = {"probes": ["icl-regression"], "seeds": [0, 1, 2], "quick": True, "set": TINY, "grid": {"backbone.n_layers": [1, 2]}}
T_975_DF2 = 4.302652729749464   # Student's t, 0.975 quantile, 2 degrees of freedom (3 seeds): the textbook table

IN_NETNS = r'''
import json, os, re, signal, sys, threading, time
from pathlib import Path
import ray
from seqlab.sweep import run_sweep, start_ray
root, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
out = {}
t = time.time(); start_ray(num_cpus=2); out["ray_start_s"] = time.time() - t      # one Ray for the three sweeps
out["first"] = run_sweep(spec, root / "sweep", progress=False)
out["rerun"] = run_sweep(spec, root / "sweep", progress=False)
killed = {}
def kill_first_cell():
    "SIGKILL the worker running the first cell to start (its log's first line names its pid)."
    logs = root / "kill" / "logs"
    while not killed:
        for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            m = re.search(r"pid (\d+)", log.read_text())
            if m: os.kill(int(m.group(1)), signal.SIGKILL); killed.update(pid=int(m.group(1)), cell=log.stem); break
        time.sleep(0.005)
threading.Thread(target=kill_first_cell, daemon=True).start()
out["kill"] = run_sweep({**spec, "seeds": [7, 8], "grid": None}, root / "kill", progress=False, max_retries=2)
out["killed"] = killed
# train.lr = 1e12 passes the config's checks and makes the probe's training diverge: a cell that fails in the probe
out["fail"] = run_sweep({**spec, "seeds": [0], "grid": {"train.lr": [1e-3, 1e12]}}, root / "fail", progress=False)
ray.shutdown()
(root / "out.json").write_text(json.dumps(out, default=str))
'''


def netns_refusal() -> str | None:
    "Why a loopback-only network namespace cannot be made here, or None when it can."
    try: r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e: return f"unshare/ip not usable: {e}"
    return None if r.returncode == 0 else f"`unshare -n` is not permitted here ({r.stderr.strip()[:200]}); Ray must not start outside one"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    "Run the sweeps on local Ray inside the namespace once; return the folder and what the script reported."
    reason = netns_refusal()
    if reason: pytest.skip(reason)
    root = tmp_path_factory.mktemp("sweep")
    (root / "in_netns.py").write_text(IN_NETNS)
    cmd = f"ip link set lo up; exec '{sys.executable}' '{root / 'in_netns.py'}' '{root}' '{json.dumps(SPEC)}'"
    r = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "SEQLAB_HOME": str(root / "home")})
    assert r.returncode == 0, r.stderr[-3000:]
    return root, json.loads((root / "out.json").read_text())


def attempts(log: str) -> list[int]:
    "The pid of each attempt at a cell, from its log's header lines."
    return [int(p) for p in re.findall(r"^== \S+ \S+ pid (\d+)", log, flags=re.M)]


def cells_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.cell.json"))]


def test_every_cell_equals_seqlab_run(swept, tmp_path, monkeypatch):
    root, out = swept
    assert out["first"]["cells"] == 6 and out["first"]["ran"] == 6 and out["first"]["failed"] == []
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path / "home"))    # `seqlab run` trains afresh, not from the sweep's cache
    for c in cells_of(root / "sweep"):
        cell = json.loads((root / "sweep" / "cells" / f"{c['id']}.json").read_text())
        args = ["run", c["probe"], "--quick", "--seed", str(c["seed"]), "--out", str(tmp_path / c["id"])]
        for k, v in c["overrides"].items(): args += ["--set", f"{k}={json.dumps(v)}"]
        assert main(args) == 0
        ran = json.loads((tmp_path / c["id"] / f"{c['probe']}.json").read_text())
        how = ("elapsed_s", "provenance")   # when, where and how long: the Ray worker and this process differ there
        assert {k: v for k, v in ran.items() if k not in how} == {k: v for k, v in cell.items() if k not in how}, c


def test_rerun_does_no_work(swept, monkeypatch):
    root, out = swept
    assert out["rerun"]["ran"] == 0 and out["rerun"]["skipped"] == 6
    logs = {p.name: p.read_text() for p in (root / "sweep" / "logs").iterdir()}
    assert len(logs) == 6 and all(len(attempts(text)) == 1 and text.count("== done") == 1 for text in logs.values())
    import seqlab.sweep as sweep
    def no_ray(*a, **k): raise AssertionError("a rerun of a finished sweep must not start Ray")
    monkeypatch.setattr(sweep, "start_ray", no_ray)                  # safe outside the namespace: Ray is never reached
    assert run_sweep(SPEC, root / "sweep", progress=False)["ran"] == 0


def test_killed_worker_is_retried(swept):
    root, out = swept
    assert out["kill"]["failed"] == [] and out["kill"]["ran"] == 2 and out["killed"]
    log = (root / "kill" / "logs" / f"{out['killed']['cell']}.log").read_text()
    pids = attempts(log)
    assert len(pids) == 2 and pids[0] == out["killed"]["pid"] != pids[1], log      # killed, then run again elsewhere
    assert (root / "kill" / "cells" / f"{out['killed']['cell']}.json").exists()


def test_failed_cell_is_recorded_and_the_rest_complete(swept):
    root, out = swept
    assert out["fail"]["ran"] == 2 and len(out["fail"]["failed"]) == 1
    (bad,) = out["fail"]["failed"]
    err = json.loads((root / "fail" / "cells" / f"{bad}.error.json").read_text())
    assert err["type"] == "TrainingDiverged" and err["cell"]["overrides"]["train.lr"] == 1e12 and "Traceback" in err["traceback"]
    assert not (root / "fail" / "cells" / f"{bad}.json").exists()
    good = [c for c in cells_of(root / "fail") if c["id"] != bad]
    assert len(good) == 1 and (root / "fail" / "cells" / f"{good[0]['id']}.json").exists()
    page = summarize(root / "fail")["html"].read_text()
    assert "Failed cells" in page and "TrainingDiverged" in page


def test_summary_intervals_equal_a_hand_computation(swept):
    root, _ = swept
    paths = summarize(root / "sweep")
    import pandas as pd
    df = pd.read_parquet(paths["parquet"])
    assert pd.read_csv(paths["csv"]).shape == df.shape and df.groupby("cell")["metric"].count().nunique() == 1   # one row per cell and metric
    assert {"in_distribution" in m or m.startswith("shift.") for m in df["metric"]} == {True, False}      # nested metrics, flattened
    iv = interval_table(df)
    for n_layers in (1, 2):
        values = [json.loads((root / "sweep" / "cells" / f"{c['id']}.json").read_text())["metrics"]["lsa_closed_form_gap"]
                  for c in cells_of(root / "sweep") if c["point"] == {"backbone.n_layers": n_layers}]
        mean, half = statistics.mean(values), T_975_DF2 * statistics.stdev(values) / math.sqrt(3)
        row = iv[(iv.metric == "lsa_closed_form_gap") & (iv.setting == f"backbone.n_layers={n_layers}")].iloc[0]
        assert row["n"] == 3 and math.isclose(row["mean"], mean, rel_tol=1e-12)
        assert math.isclose(row["lo"], mean - half, rel_tol=1e-9) and math.isclose(row["hi"], mean + half, rel_tol=1e-9)
    page = paths["html"].read_text()
    assert "Student-t interval" in page and page.count("<script type='text/javascript'>") == 1 and "<script src=" not in page
    assert main(["sweep", "summarize", str(root / "sweep")]) == 0


def test_bad_spec_or_folder_fails_before_any_work(tmp_path):
    with pytest.raises(BadInput, match="Did you mean: train.steps"): expand({**SPEC, "set": {"train.step": 5}})
    with pytest.raises(BadInput, match="is not an int"): expand({**SPEC, "grid": {"train.steps": ["many"]}})
    with pytest.raises(BadInput, match="Did you mean: probes"): expand({"probs": ["induction"]})
    with pytest.raises(BadInput, match="Cannot write results to /proc"): run_sweep(SPEC, "/proc/no/sweep", use_ray=False)
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "cells").exists()


def test_yaml_and_toml_specs_expand_alike(tmp_path):
    (tmp_path / "s.yaml").write_text("probes: [icl-regression]\nseeds: [0, 1]\nquick: true\nset: {train.steps: 10}\n"
                                     "grid:\n  backbone.n_layers: [1, 2]\n")
    (tmp_path / "s.toml").write_text('probes = ["icl-regression"]\nseeds = [0, 1]\nquick = true\n[set]\n"train.steps" = 10\n'
                                     '[grid]\n"backbone.n_layers" = [1, 2]\n')
    a, b = expand(tmp_path / "s.yaml"), expand(tmp_path / "s.toml")
    assert len(a) == 4 and [c.id for c in a] == [c.id for c in b]


def test_sweep_without_ray_writes_the_same_cells(tmp_path, monkeypatch):
    "The in-process path (the benchmark's baseline) writes cells a summary reads; no Ray involved."
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path / "home"))
    spec = {**SPEC, "seeds": [0], "grid": None}
    r = run_sweep(spec, tmp_path / "s", use_ray=False, progress=False)
    assert (r["ran"], r["failed"]) == (1, []) and summary_table(tmp_path / "s")["seed"].tolist()[0] == 0
