# storerec: every target is a one-line call to the `storerec` CLI (see README.md).
# `make run` and `make test` install into .venv first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STOREREC := $(BIN)/storerec
STAMP := $(VENV)/.installed
ARGS ?=
MODEL ?= als
TRIALS ?=
PORT ?=
SERVE_ARGS ?=
VERSION ?=
ALIAS ?= champion
USERS ?=
K ?= 10
OUT ?= recs.parquet
EXPERIMENT ?=
SHOPPERS ?= 2000
A ?= champion
B ?= challenger
PYTEST_ARGS ?=
KIND ?= replenish
CAMPAIGN ?=

.PHONY: help install lock run serve data features import-ml100k train tune evaluate promote models recommend-batch mlflow-ui \
        campaign campaign-report simulate-traffic ab-report replay export-events sync-events retrain bench-live \
        lint test test-fast browser screenshots bench bench-offline bench-quality bench-ml100k bench-serve behaviour fuzz soak clean clean-data

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install pinned dependencies + storerec (no-op when up to date)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "storerec needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $$(grep -cvE '^(#|$$)' requirements.lock) pinned packages into $(VENV) (1-3 min on 2 cores with pip's cache warm, longer when it downloads; each one is numbered as pip takes it)"
	set -o pipefail; $(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -r requirements.lock \
	  | awk -v n=$$(grep -cvE '^(#|$$)' requirements.lock) -f scripts/pip-progress.awk
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lock:  ## rewrite requirements.lock from what .venv holds now (after a deliberate upgrade)
	{ echo '# Exact versions tested on Python 3.11 / linux x86_64. Regenerate with: make lock'; $(BIN)/python -m pip freeze --exclude-editable --all | grep -vE '^(storerec|pip)=='; } > requirements.lock.new && mv requirements.lock.new requirements.lock

run: install  ## the whole chain on the built-in store, then serve it: make run [PORT=3001] [ARGS='for storerec run'] [SERVE_ARGS='for storerec serve']
	$(STOREREC) run $(ARGS) && $(STOREREC) serve $(if $(PORT),--port $(PORT)) $(SERVE_ARGS)

serve: install  ## start the HTTP service on the champion (http://127.0.0.1:3000: API page at /docs, explorer at /explore) [PORT=3001]
	$(STOREREC) serve $(if $(PORT),--port $(PORT)) $(ARGS)

data: install  ## simulate the built-in storefront into ./data
	$(STOREREC) simulate $(ARGS)

features: install  ## build user profiles and item features from ./data
	$(STOREREC) features $(ARGS)

import-ml100k: install  ## (re-)import MovieLens-100K from ../shared/data/ml-100k into ./data-ml100k (replaces what that folder holds)
	$(STOREREC) import --movielens ../shared/data/ml-100k --data-dir data-ml100k --replace $(ARGS)

train: install  ## train, evaluate, log and register one model: make train MODEL=als [ARGS='--param factors=128']
	$(STOREREC) train --model $(MODEL) $(ARGS)

tune: install  ## coordinate search, selected on an inner split of the train window, reported once on the validation window: make tune MODEL=als [TRIALS=N, default the CLI's]
	$(STOREREC) tune --model $(MODEL) $(if $(TRIALS),--trials $(TRIALS)) $(ARGS)

evaluate: install  ## compare models on one split, raw and through the serving pipeline; report with charts in reports/ (ARGS="--models als,ease")
	$(STOREREC) evaluate --pipeline $(ARGS)

promote: install  ## point an alias at a version: make promote VERSION=3 [ALIAS=challenger]
	$(if $(VERSION),,$(error set VERSION=N: the registered version to promote (see `make models`)))
	$(STOREREC) promote --version $(VERSION) --alias $(ALIAS)

models: install  ## list registered model versions with aliases and headline metrics
	$(STOREREC) models

recommend-batch: install  ## lists for a campaign: make recommend-batch [USERS=ids.csv] [ARGS='--segment dormant'] OUT=recs.parquet|recs.csv (no USERS: every user)
	$(STOREREC) recommend-batch --model champion $(if $(USERS),--users $(USERS)) --k $(K) --out $(OUT) $(ARGS)

campaign: install  ## loyalty campaign lists (reasons, holdout, frequency cap): make campaign KIND=replenish|winback|points-expiring|new-arrivals [OUT=campaign.csv]
	$(STOREREC) campaign --kind $(KIND) --out $(if $(filter recs.parquet,$(OUT)),campaign.csv,$(OUT)) $(ARGS)

campaign-report: install  ## treated vs holdout of a campaign over a window: make campaign-report CAMPAIGN=id [ARGS='--window-days 14 --out report.md']
	@test -n "$(CAMPAIGN)" || { echo "usage: make campaign-report CAMPAIGN=<campaign id> (storerec campaign-report --list lists them)"; exit 2; }
	$(STOREREC) campaign-report --campaign $(CAMPAIGN) $(ARGS)

simulate-traffic: install  ## play built-in-store shoppers against the running service (SHOPPERS=2000)
	$(STOREREC) simulate-traffic --shoppers $(SHOPPERS) $(ARGS)

ab-report: install  ## A/B report of a running experiment: make ab-report EXPERIMENT=champion-vs-baseline
	@test -n "$(EXPERIMENT)" || { echo "usage: make ab-report EXPERIMENT=<name from the experiments file>"; exit 2; }
	$(STOREREC) ab-report --experiment $(EXPERIMENT) $(ARGS)

replay: install  ## offline replay of two registered versions on a held-out window: make replay A=champion B=challenger
	$(STOREREC) replay --a $(A) --b $(B) $(ARGS)

export-events: install  ## logged shopper events in the events table format (OUT=logged-events.parquet)
	$(STOREREC) export-events --out $(if $(filter recs.parquet,$(OUT)),logged-events.parquet,$(OUT)) $(ARGS)

sync-events: install  ## append the event log's new events to ./data's events table (watermark in data/sync-state.json; safe to re-run)
	$(STOREREC) sync-events $(ARGS)

bench-live: install  ## POST /track replay of the built-in store's last day: next-event hit rate live vs snapshot-only, p99 at concurrency 8 (docs/live.md)
	$(STOREREC) live-replay $(ARGS)

retrain: install  ## sync -> features -> train -> quality gate vs the champion -> promote or keep -> reload services (docs/retrain.md)
	$(STOREREC) retrain $(ARGS)

mlflow-ui: install  ## open the MLflow UI on the local store (http://127.0.0.1:5000)
	$(STOREREC) mlflow-ui $(ARGS)

lint: install  ## ruff, mypy and the import layering contract (docs/architecture.md)
	$(BIN)/ruff check storerec tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: install browser  ## run the whole test suite on 2 workers (PYTEST_ARGS="-n 0": in one process; "-n 4": on 4)
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: install  ## unit tests only (no slow or end-to-end tests), on 2 workers like `make test`
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow and not e2e" $(PYTEST_ARGS)

browser:  ## Debian's chromium (+ chromium-driver) for the explorer's browser tests; apt-get as root, else they skip saying why
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser tests (about a minute)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } \
	  || echo "chromium could not be installed: the browser tests will be skipped (pytest -ra names the reason)"; \
	else echo "no chromium, and apt-get needs root here: the browser tests will be skipped (install Debian's chromium)"; fi

screenshots: install browser  ## the README's explorer pictures (docs/img/explore-*.png), taken by the browser tests
	@tmp=$$(mktemp -d) && STOREREC_SCREENSHOTS=$$tmp $(BIN)/python -m pytest -n 0 -q tests/test_explore.py \
	  && mkdir -p docs/img && mv $$tmp/explore-*.png docs/img/ && rmdir $$tmp && ls docs/img/explore-*.png

bench: install  ## every benchmark (ML-100K quality vs the libraries, simulator + profiles at 10M events, serving under load)
	$(STOREREC) bench --suite all $(ARGS)

bench-offline: install  ## simulator + profiles at 10M events: seconds and peak memory (medians)
	$(STOREREC) bench --suite offline $(ARGS)

bench-serve: install  ## the HTTP service under load (wrk + open loop) against a hand-written Starlette+implicit server, and at 2k-1M items
	$(STOREREC) bench --suite serve $(ARGS)

bench-quality: install  ## storerec run/tune vs tuned implicit/LightFM/EASE on ML-100K, Last.fm and Online Retail (fetch: docs/benchmarks.md)
	$(STOREREC) bench-quality $(ARGS)

bench-ml100k: install  ## every model on MovieLens-100K against implicit/LightFM called directly
	$(STOREREC) bench --suite ml100k $(ARGS)

behaviour: install  ## recorded-request check around a refactoring: make behaviour MODE=record (old code), then MODE=compare (new code)
	$(STOREREC) behaviour $(or $(MODE),compare) $(ARGS)

fuzz: install  ## schemathesis against the live OpenAPI spec: 0 server errors, 0 schema violations (ARGS='--examples 200')
	$(STOREREC) fuzz $(ARGS)

soak: install  ## 10 min at concurrency 16, a reload every 30 s, a 40 s event-log lock: nothing acknowledged lost
	$(STOREREC) soak $(ARGS)

clean:  ## remove caches (keeps .venv and data)
	rm -rf .pytest_cache build *.egg-info

clean-data:  ## remove generated and imported data (data, data-*), profiles, the MLflow store, reports, the event log and its exports
	rm -rf data data-*/ mlruns reports eventlog logged-events.parquet
