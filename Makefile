# The virtual environment lives in .venv/ at the repository root.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench-moe clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exact: pip then reuses the CPU build instead of resolving a CUDA one
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded defaults (grows with each app).
demo: setup
	$(BIN)/fathom demo --no-ui --out results
	$(BIN)/fathom bench moe --device cpu --json results/bench-moe.json

## Lint + the test suite (what CI runs).
test: setup lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache results
