"""The package's layering, read statically: probes never import each other, nobody imports another module's
private names, there is no import cycle, every module has one `__all__`, and `Probe.needs` is enforced."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "seqlab"
PROBE_MODULES = {"icl", "icl_regression", "icll", "heads", "ngram_heads", "verbatim", "collapse", "spinning"}
# the atlas sits above the probes (it puts their per-head scores on one map, so it imports them) and below viz;
# like a probe it draws nothing
NO_PLOTLY = PROBE_MODULES | {"atlas"}
MAX_LINES = 650  # "no module over ~600 lines" (issue 13), with a little slack for generated headers


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PKG.glob("*.py")) if p.stem not in ("__init__", "_modidx")}


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    "(imported seqlab module, names) for every import anywhere in the file, function bodies included."
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: mod = node.module.split(".")[0]
            elif node.module.startswith("seqlab."): mod = node.module.split(".")[1]
            elif node.module == "seqlab": out += [(a.name, []) for a in node.names]; continue
            else: continue
            out.append((mod, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("seqlab.")]
    return out


def _edges():
    mods = _modules()
    return mods, {name: {m for m, _ in _imports(tree) if m in mods and m != name} for name, tree in mods.items()}


def test_probes_never_import_probes():
    mods, edges = _edges()
    bad = [f"{a} imports {b}" for a, bs in edges.items() if a in PROBE_MODULES for b in bs if b in PROBE_MODULES]
    assert not bad, f"a probe never imports another probe; move what they share below them: {bad}"


def test_no_private_imports_across_modules():
    mods = _modules()
    bad = [f"{name} imports {mod}.{n}" for name, tree in mods.items() for mod, names in _imports(tree)
           if mod != name for n in names if n.startswith("_")]
    assert not bad, f"private names used across modules: {bad}"


def test_no_import_cycles():
    mods, edges = _edges()
    state = {}

    def visit(u, path):
        state[u] = "open"
        for v in sorted(edges[u]):
            if state.get(v) == "open": pytest.fail("import cycle: " + " -> ".join(path[path.index(v):] + [v]))
            if v not in state: visit(v, path + [v])
        state[u] = "done"

    for m in sorted(mods):
        if m not in state: visit(m, [m])


def test_views_are_above_probes():
    "Probe modules draw nothing: plotly lives in viz."
    mods = _modules()
    bad = [name for name in NO_PLOTLY & set(mods)
           if any((isinstance(n, ast.Import) and any(a.name.startswith("plotly") for a in n.names)) or
                  (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("plotly")) for n in ast.walk(mods[name]))]
    assert not bad, f"probe modules import plotly (figures belong in seqlab.viz): {bad}"


def test_atlas_sits_between_the_probes_and_viz():
    mods, edges = _edges()
    if "atlas" not in mods: pytest.skip("no atlas module")
    assert "atlas" in edges.get("viz", set()) or "atlas" in edges.get("cli", set()), "viz or cli serves the atlas"
    assert not edges["atlas"] & {"viz", "sweep", "cli", "references"}, "the atlas imports nothing above it"


def test_one_all_per_module_and_modules_stay_small():
    for p in sorted(PKG.glob("*.py")):
        if p.stem in ("__init__", "_modidx"): continue
        text = p.read_text()
        assert text.count("\n__all__ =") <= 1, f"{p.name} defines __all__ more than once (nbdev writes it)"
        n = text.count("\n")
        assert n <= MAX_LINES, f"{p.name} has {n} lines; split it (no module over ~600 lines)"


def test_every_probe_is_registered_with_one_signature():
    import inspect
    import seqlab.viz  # noqa: F401  (imports every probe module, which registers its probes)
    from seqlab.core import Result, all_probes
    probes = all_probes()
    assert list(probes) == ["icl-regression", "icll", "induction", "successor", "ngram", "verbatim", "collapse", "spinning"]
    for p in probes.values():
        params = list(inspect.signature(p.run).parameters.values())
        assert [q.name for q in params[:2]] == ["model", "cfg"], f"{p.name}: run must take (model, cfg), got {params}"
        assert params[1].default is None, f"{p.name}: cfg defaults to None (no config made at import time)"
        assert issubclass(p.result, Result) and hasattr(p.config, "quick")
        assert (ROOT / "nbs" / f"{p.page}.ipynb").exists(), f"{p.name}: page {p.page!r} is not a notebook"


def test_needs_refuses_a_wrong_model_kind():
    import seqlab.viz  # noqa: F401
    from seqlab.core import SeqlabError, get_probe, run_probe
    from seqlab.archs import Mamba2, Mamba2Config, CharTokenizer
    from seqlab.zoo import as_lab_model
    tok = CharTokenizer("abcdefgh")
    ssm = as_lab_model(Mamba2(Mamba2Config(d_vocab=tok.vocab_size, d_model=16, n_layers=1)), tok, "tiny-mamba2")
    assert ssm.arch.kind == "recurrent"
    for name in ("induction", "successor", "ngram"):
        with pytest.raises(SeqlabError, match="needs a model with attention layers"):
            run_probe(name, ssm, get_probe(name).config.quick())
    with pytest.raises(SeqlabError, match="pass one"):
        run_probe("verbatim", None, get_probe("verbatim").config.quick())
