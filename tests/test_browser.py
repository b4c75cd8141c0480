"""What a person sees: the report, the docs preview and a live JupyterLab explorer, in headless Chromium.

Debian's Chromium is driven by Playwright's Python package (never a browser download). Screenshots are saved in
each test's temporary folder. The assertions read rendered content: plotly's SVG and the data it drew.
"""
import os, secrets, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SEQLAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
NBS = Path(__file__).resolve().parent.parent / "nbs"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def plot_summary(page):
    "For every plotly plot on the page: how many traces it drew and how many SVG elements it holds."
    return page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
        traces: (d.data || []).length, svg: d.querySelectorAll('.main-svg *').length,
        z: d._fullData && d._fullData[0] && d._fullData[0].z ? d._fullData[0].z.length : 0,
        title: (d.querySelector('.gtitle') || {}).textContent || ''}))""")


def test_report_renders_its_figures(browser, tmp_path):
    from seqlab.cli import main
    assert main(["report", "--quick", "--probes", "induction", "--out", str(tmp_path)]) == 0
    page = browser.new_page()
    page.goto((tmp_path / "index.html").as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    plots = plot_summary(page)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    # two head grids (induction, previous-token-shifted) and the causal row (top-k ablation vs random heads)
    assert plots and plots[0]["traces"] >= 3 and plots[0]["z"] == 30 and plots[0]["svg"] > 20, plots
    assert "Induction on smollm2-135m" in plots[0]["title"]
    assert page.locator("table.summary td").count() >= 4


def test_docs_preview_renders_the_figures(browser, tmp_path):
    from seqlab.cli import build_docs_preview
    index = build_docs_preview(tmp_path / "docs", only=["index", "21_explorers"])
    page = browser.new_page()
    page.goto(index.as_uri())
    assert page.locator("li a").count() == 2 and "<b>failed</b>" not in page.content()
    page.goto((tmp_path / "docs" / "21_explorers.html").as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    plots = plot_summary(page)
    page.screenshot(path=str(tmp_path / "docs_viz.png"), full_page=True)
    assert any(p["title"] == "layer 18 head 6" and p["z"] > 0 and p["svg"] > 20 for p in plots), plots


def test_docs_site_shows_every_probe_result(browser, tmp_path):
    "The site is built without executing notebooks: each probe page must draw its committed results figures."
    from seqlab.cli import build_docs_preview
    from seqlab.references import PROBE_NOTEBOOKS
    build_docs_preview(tmp_path / "site", only=list(PROBE_NOTEBOOKS), execute=False)
    page = browser.new_page()
    for name in PROBE_NOTEBOOKS:
        page.goto((tmp_path / "site" / f"{name}.html").as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        plots = plot_summary(page)
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        assert plots and all(p["traces"] > 0 and p["svg"] > 20 for p in plots), (name, plots)
        assert page.locator("table").filter(has_text="Verdict").count() >= 1, f"{name}: no findings table on the page"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    import shutil
    port, token = _free_port(), secrets.token_hex(12)
    root = tmp_path / "nbs"  # a copy: JupyterLab autosaves what it runs, and the repository's notebooks stay clean
    shutil.copytree(NBS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
                             f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False"]
                            + (["--allow-root"] if os.geteuid() == 0 else []),
                            env=env, stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded wait for the server to answer
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
        yield url, token
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()


def test_jupyterlab_explorer_responds_to_a_widget(browser, jupyterlab, tmp_path):
    url, token = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/21_explorers.ipynb?token={token}")
    page.wait_for_function("""() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel &&
               w.sessionContext.session.kernel.status === 'idle'; }""", timeout=180_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the explorer cell loads the embedded model and scores induction heads; then its test cell sets layer 18 head 6
    title = page.locator(".jp-OutputArea .js-plotly-plot .gtitle", has_text="layer 18 head 6")
    title.first.wait_for(timeout=600_000)
    page.screenshot(path=str(tmp_path / "lab_before.png"), full_page=True)
    layer = page.locator(".widget-dropdown", has=page.locator("label", has_text="layer")).locator("select").first
    layer.scroll_into_view_if_needed()
    layer.select_option("3")  # the kernel fetches layer 3's patterns and redraws the explorer's figure
    page.locator(".jp-OutputArea .js-plotly-plot .gtitle", has_text="layer 3 head 6").first.wait_for(timeout=300_000)
    page.screenshot(path=str(tmp_path / "lab_after.png"), full_page=True)


def test_atlas_click_opens_the_heads_pattern(browser, tmp_path):
    "In the static report, clicking a head on an atlas grid draws that head's stored pattern below the figure."
    from seqlab.atlas import ATLAS, AtlasConfig, run_atlas
    from seqlab.cli import write_report
    from seqlab.families import write_tiny
    from seqlab.zoo import load
    model = load(str(write_tiny("llama", tmp_path / "tiny", seed=0, max_position_embeddings=512)))
    res = run_atlas(model, AtlasConfig(n_seqs=4, seq_len=12, dfa_seqs=3, dfa_tokens=24, successor_prompts=1, verbatim_items=2,
                                       top_k=1, n_draws=3, pattern_heads=1, pattern_text="ab cd ab cd"))
    index = write_report([{"name": "atlas", "probe": ATLAS, "result": res}], tmp_path / "report", model.name)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(index.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)

    def click(grid: int, layer: int, head: int):
        "A real mouse click at the centre of cell (layer, head) of the figure's grid number `grid` (0: induction)."
        ax = "" if grid == 0 else str(grid + 1)
        x, y = page.evaluate("""([ax, l, h]) => { const gd = document.querySelector('.js-plotly-plot'); gd.scrollIntoView();
            const fl = gd._fullLayout, xa = fl['xaxis' + ax], ya = fl['yaxis' + ax], r = gd.getBoundingClientRect();
            return [r.left + xa._offset + xa.l2p(h), r.top + ya._offset + ya.l2p(l)]; }""", [ax, layer, head])
        page.mouse.click(x, y)

    stored = res.metrics["patterns"]["heads"]
    l, h = res.metrics["top"]["successor"]                  # the successor grid (the sixth) gets the click-through too
    click(5, l, h)
    page.locator(".atlas-pattern .gtitle", has_text=f"layer {l} head {h}").wait_for(timeout=30_000)
    drawn = page.evaluate("() => document.querySelector('.atlas-pattern').data[0].z")
    assert drawn == stored[f"L{l}H{h}"] and len(drawn) == len(res.metrics["patterns"]["tokens"])
    page.screenshot(path=str(tmp_path / "atlas_click.png"), full_page=True)
    missing = [(r["layer"], r["head"]) for r in res.metrics["heads"] if f"L{r['layer']}H{r['head']}" not in stored]
    if missing:
        click(0, *missing[0])
        page.locator(".atlas-note", has_text="no stored pattern").wait_for(timeout=30_000)
