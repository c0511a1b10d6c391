# storerec: every target is a one-line call to the `storerec` CLI (see README.md).
# `make run` and `make test` install into .venv first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STOREREC := $(BIN)/storerec
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install lock run data features import-ml100k test test-fast bench bench-data clean clean-data

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install pinned dependencies + storerec (no-op when up to date)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "storerec needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lock:  ## re-resolve dependencies from pyproject.toml and rewrite requirements.lock
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^storerec' > requirements.lock.new && mv requirements.lock.new requirements.lock

run: install  ## the whole chain on the built-in store: simulate -> features (later: train, evaluate, serve)
	$(STOREREC) run $(ARGS)

data: install  ## simulate the built-in storefront into ./data
	$(STOREREC) simulate $(ARGS)

features: install  ## build user profiles and item features from ./data
	$(STOREREC) features $(ARGS)

import-ml100k: install  ## import MovieLens-100K from ../shared/data/ml-100k into ./data-ml100k
	$(STOREREC) import --movielens ../shared/data/ml-100k --data-dir data-ml100k $(ARGS)

test: install  ## run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install  ## unit tests only (no slow or end-to-end tests)
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

bench: install  ## benchmarks (simulator and profiles at scale); figures go to docs/benchmarks.md by hand
	$(BIN)/python -m storerec.bench $(ARGS)

clean:  ## remove caches (keeps .venv and data)
	rm -rf .pytest_cache build *.egg-info

clean-data:  ## remove generated data, profiles and MLflow store
	rm -rf data mlruns reports
