# Two commands a newcomer needs: `make quickstart` and `make test`. Each creates the environment when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint bench figures

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) -m recipes.quickstart

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check genlib recipes tests benchmarks assets

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) -m benchmarks.psgd_step

# The README's figures (assets/*.png) from real --quick recipe runs, kept in runs/figures/ and reused.
figures: $(STAMP)
	$(PY) -m assets.make_figures
