# Quick start: `make demo` (set up + main job on the bundled sample), `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-quick lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list changes (idempotent and fast on re-runs).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(VENV)/bin/pneumolab demo

test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(PY) -m pytest -q

# The suite without the two end-to-end study runs (CI and `make test` run everything).
test-quick: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
