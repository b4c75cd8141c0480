"""Results on the page: every probe notebook shows its stored results, and what it shows is current.

The docs site does not execute notebooks, so the probe notebooks' results cells (first line `# stored results`) are
committed with their outputs. These tests re-execute them from the stored JSON (seconds, no training) and require the
committed outputs to match, keep measured numbers out of the markdown prose, and keep every other cell output-free.
"""
import json
from pathlib import Path

import nbformat
import pytest

from seqlab.references import PROBE_NOTEBOOKS, RESULT_CELL_MARK, exec_doc_missing, prose_numbers, result_cells, stale_pages

NBS = Path(__file__).resolve().parent.parent / "nbs"


def _nb(name): return nbformat.read(NBS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", PROBE_NOTEBOOKS)
def test_probe_notebook_draws_its_stored_results(name):
    nb = _nb(name)
    idx = result_cells(nb)
    assert idx, f"{name} has no results cell (a code cell starting with {RESULT_CELL_MARK!r})"
    mimes = [m for i in idx for o in nb.cells[i].outputs for m in o.get("data", {})]
    assert "application/vnd.plotly.v1+json" in mimes, f"{name}: no committed figure; run `seqlab reference pages nbs/{name}.ipynb`"
    tables = [o["data"]["text/markdown"] for i in idx for o in nb.cells[i].outputs if "text/markdown" in o.get("data", {})]
    assert any("| Claim | Paper | Here | Verdict |" in t for t in tables), f"{name}: no findings() table comparing with the paper"
    missing = exec_doc_missing(nb)
    assert not missing, f"{name}: results cells {missing} lack `#| exec_doc` (the docs build would not run them in order)"


@pytest.mark.parametrize("name", PROBE_NOTEBOOKS)
def test_prose_holds_no_measured_number(name):
    found = prose_numbers(NBS / f"{name}.ipynb")
    assert not found, f"{name}: measured numbers belong in a results cell's output, not in markdown:\n" + "\n".join(found[:20])


def test_only_results_cells_carry_outputs():
    carrying = []
    for p in sorted(NBS.glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        keep = set(result_cells(nb))
        carrying += [f"{p.stem}:{c.get('id', i)}" for i, c in enumerate(nb.cells)
                     if c.cell_type == "code" and c.outputs and i not in keep]
    assert not carrying, f"cells committed with outputs that are not results cells (run nbdev-clean on them): {carrying}"


def test_committed_results_are_current():
    "Re-executing every probe notebook's results cells from results/ gives the committed outputs."
    stale = stale_pages()
    assert not stale, f"results cells out of date with results/: {stale}; run `seqlab reference pages`"


def test_a_changed_result_makes_its_page_stale(tmp_path):
    "The staleness check can fail: a results cell whose committed output no longer matches is caught."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| exec_doc\n" + RESULT_CELL_MARK + "\nprint(6 * 7)")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="41\n")]
    p = tmp_path / "toy.ipynb"; nbformat.write(nb, str(p))
    assert stale_pages([p]) == ["toy:" + nb.cells[0].id]
