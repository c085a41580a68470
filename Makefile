# covid-stats: `make run` starts the whole system locally, `make test` runs the tests.
# Needs only Python 3.11+ and make; everything else installs into .venv from pinned files.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGES := libs/covid-stats-contract libs/covid-stats-runtime services/api \
            services/stats-fetcher tools/replay-upstream tools/devstack
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements/dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "covid-stats needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) -V 2>&1))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation $(addprefix -e ,$(PACKAGES))
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install the pinned dependencies and the packages

.PHONY: run
run: $(STAMP) ## Start Redis, PostgreSQL, the replay upstream, the fetcher and the api (Ctrl-C stops all)
	$(BIN)/python -m devstack run

.PHONY: test
test: $(STAMP) ## Run the tests against real local servers (PYTEST_ARGS="-k api" to pick)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: $(STAMP) ## Benchmark cached reads vs the naive path and a bare ASGI app (needs wrk)
	$(BIN)/python -m devstack.bench_api

.PHONY: bench-fetcher
bench-fetcher: $(STAMP) ## Measure a cold refresh of the archive and a no-change refresh
	$(BIN)/python -m devstack.bench_fetcher

.PHONY: lint
lint: $(STAMP) ## ruff (lint and format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: format
format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: lock
lock: $(STAMP) ## Recompile requirements/*.txt from requirements/*.in (needs network)
	cd requirements && for f in api stats-fetcher dev; do \
		../$(BIN)/uv pip compile --quiet --python-version 3.11 --no-header --no-annotate $$f.in -o $$f.txt; \
	done

.PHONY: clean
clean: ## Remove .venv and the local servers' data (.local)
	rm -rf $(VENV) .local
