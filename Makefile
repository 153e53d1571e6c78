# Quick start:  make demo     (sets up .venv and runs the main job)
#               make test     (sets up .venv and runs the test suite)
# Real data for the tests: PYRO_AEVB_DATA=/path/to/data make test  (layout: mnist/, fashion-mnist/,
# frey-face/). TORCH_SPEC chooses the torch install (default: the CPU build pinned in
# requirements/torch-cpu.txt; e.g. TORCH_SPEC=torch for your platform's default build).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= -r requirements/torch-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint format setup clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-aevb demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
