"The notebooks are the source: the package must be exactly what they export, and they must stay light."
import filecmp, json, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_is_what_the_notebooks_export(tmp_path):
    for name in ("nbs", "seqlab"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    before = {p.name: p.read_text() for p in (tmp_path / "seqlab").glob("*.py")}
    subprocess.run([str(Path(sys.executable).parent / "nbdev-export")], cwd=tmp_path, check=True, capture_output=True)
    after = {p.name: p.read_text() for p in (tmp_path / "seqlab").glob("*.py")}
    stale = sorted(n for n in after if before.get(n) != after[n])
    assert not stale, f"seqlab/ differs from what the notebooks export: {stale}; run nbdev-export and commit both"


def test_the_docs_build_processes_every_notebook(tmp_path):
    """The site's build (`nbdev-docs`, with Quarto) first runs `nbdev-proc-nbs`, which executes every cell that imports,
    exports or carries `#| exec_doc` (show_doc needs them) and skips the rest. A cell it runs that needs a cell it skips,
    or a slow cell that imports, breaks or stalls the site; this runs that step on a copy of every notebook."""
    for name in ("nbs", "seqlab", "results"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "logs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    r = subprocess.run([str(Path(sys.executable).parent / "nbdev-proc-nbs"), "--n-workers", "1"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert len(list((tmp_path / "_proc").glob("*.ipynb"))) == len(list((ROOT / "nbs").glob("*.ipynb")))


def test_notebooks_are_clean_and_small():
    total = 0
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        size = nb.stat().st_size; total += size
        assert size < 1_000_000, f"{nb.name} is {size / 1e6:.1f} MB; clear its large outputs (nbdev-clean) before committing"
        cells = json.loads(nb.read_text())["cells"]
        big = [i for i, c in enumerate(cells) for o in c.get("outputs", []) if len(json.dumps(o)) > 200_000]
        assert not big, f"{nb.name} cells {big} carry outputs over 200 kB (figure or widget dumps)"
    assert total < 5_000_000


def test_readme_is_the_index_notebook():
    "README.md is generated from nbs/index.ipynb (the docs landing page): every paragraph of one is in the other."
    readme = (ROOT / "README.md").read_text()
    cells = json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"]
    md = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    md[0] = md[0].replace("> ", "", 1)  # the title cell's description line loses its quote marker
    for text in md:
        for para in text.split("\n\n"):
            assert para.strip() in readme, f"README.md is stale; regenerate it from nbs/index.ipynb: missing {para[:80]!r}"
    assert "make report" in readme and "make test" in readme
