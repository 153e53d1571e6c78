# Quick start:  make demo     (sets up .venv and runs the main job)
#               make test     (sets up .venv and runs the test suite)
# Real data for the tests: PYRO_AEVB_DATA=/path/to/data make test  (layout: mnist/, fashion-mnist/,
# frey-face/). TORCH_SPEC chooses the torch install (default: the CPU build pinned in
# requirements/torch-cpu.txt; e.g. TORCH_SPEC=torch for your platform's default build).
# Documentation: make docs (builds docs/_build/html, warnings are errors), make docs-links
# (internal links), make docs-check (headless Chromium; make browser installs it with apt).
# Tutorials: PYRO_AEVB_DATA=/path/to/data make tutorials  (executes every notebook in full mode
# and stores its outputs; TUTORIALS="01 02" for some; make tutorials-check: are they current?)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= -r requirements/torch-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
PYTEST_ARGS ?=
SPHINXOPTS ?=
DOCS_HTML := docs/_build/html
TUTORIALS ?=

.PHONY: demo test lint format setup docs-setup docs docs-links docs-check browser tutorials \
	tutorials-check clean reliability

$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test,docs]"
	touch $(DOCS_STAMP)

setup: $(STAMP)

docs-setup: $(DOCS_STAMP)

demo: $(STAMP)
	$(BIN)/pyro-aevb demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Long randomized fault injection (kill -9 / Ctrl-C / SIGTERM at random times with exact
# resume, bit flips, truncations, hostile pickles, concurrent runs, divergence on both paths,
# hypothesis); writes benchmarks/results/reliability.json, the README's "Reliability"
# figures. PYRO_AEVB_RELIABILITY_SCALE=0.1 make reliability: a tenth of the trials.
reliability: $(STAMP)
	$(BIN)/python -m pytest -n 0 -m reliability tests/reliability $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A clean build every time, so that every warning shows (and fails it).
docs: $(DOCS_STAMP)
	rm -rf $(DOCS_HTML)
	$(BIN)/python -m sphinx -W --keep-going -b html $(SPHINXOPTS) docs $(DOCS_HTML)
	$(BIN)/python docs/gen_api.py --check-inventory $(DOCS_HTML)/objects.inv

docs-links: $(DOCS_STAMP)
	$(BIN)/python docs/check_links.py $(DOCS_HTML)

docs-check: $(DOCS_STAMP) browser
	$(BIN)/python docs/check_site.py $(DOCS_HTML)

# Debian's Chromium and ChromeDriver, installed with apt (as root) when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser: $$(/usr/bin/chromium --version 2>/dev/null) (present)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null && \
		echo "browser: $$(/usr/bin/chromium --version 2>/dev/null) (installed)"; \
	else \
		echo "browser: need Debian's chromium and chromium-driver:" \
			"sudo apt-get install chromium chromium-driver" >&2; \
		exit 1; \
	fi

tutorials: $(STAMP)
	$(BIN)/python tutorials/run.py $(TUTORIALS)

tutorials-check: $(STAMP)
	$(BIN)/python tutorials/run.py --check $(TUTORIALS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache build docs/_build docs/_generated docs/api \
		docs/tutorials
