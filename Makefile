# LLM Gateway: `make run` serves, `make test` checks everything. Both install what they need
# on first use (a virtual environment in .venv, buf and the Node.js test client in
# tools/node_modules, Debian's redis-server for the Redis tests).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := tools/node_modules/.bin/buf
PY_STAMP := $(VENV)/.installed
NODE_STAMP := tools/node_modules/.installed

.PHONY: ensure-redis ensure-prometheus image-check k8s-schemas help run test lint typecheck proto-lint proto-breaking proto-bundle polyglot-check generate check-generated pytest fmt bench image lock clean soak

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# The server and the client package (the generated contract) it shares with callers.
$(PY_STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e clients/python -e '.[dev]'
	@touch $@

$(NODE_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(PY_STAMP) ## Serve on :50051 (demo mode on 127.0.0.1 with the built-in simulator when no key is set)
	@if [ -z "$${OPENROUTER_API_KEY:-}$${OPENROUTER_API_KEY_FILE:-}" ]; then \
	  export GATEWAY_SIMULATOR="$${GATEWAY_SIMULATOR:-true}"; fi; \
	exec $(BIN)/python -m service

test: lint typecheck proto-lint proto-breaking check-generated pytest ## Every check: ruff, mypy, buf lint + breaking, generated code, tests

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy

proto-lint: $(NODE_STAMP)
	$(BUF) lint
	$(BUF) format --diff --exit-code proto --exclude-path proto/google

proto-breaking: $(NODE_STAMP) ## buf breaking against the last release tag (v*)
	BUF=$(BUF) ./scripts/buf-breaking.sh

GENERATED := clients/python/src/llmgateway/v1

proto-bundle: $(PY_STAMP) ## Write the contract and every proto a client imports to build/proto-bundle
	./scripts/proto-bundle.sh build/proto-bundle

polyglot-check: $(PY_STAMP) $(NODE_STAMP) ## Go client check (installs Debian's Go packages; minutes; not in make test)
	./scripts/polyglot-check.sh

generate: $(PY_STAMP) ## Regenerate the contract's Python code (clients/python/src/llmgateway/v1) from proto/
	./scripts/generate.sh

check-generated: $(PY_STAMP) ## Fail when the generated Python code is stale
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && ./scripts/generate.sh "$$tmp" && \
	  diff -r -x __pycache__ "$$tmp/llmgateway/v1" $(GENERATED) >/dev/null || \
	  { echo "$(GENERATED) is stale: run 'make generate' and commit the result." >&2; exit 1; }

# The tests run real Redis and Prometheus servers; CI machines start without them.
ensure-redis: ## Install Debian's redis-server when it is missing (root)
	./scripts/apt-ensure.sh --as redis --stop redis-server redis-server:redis-server

ensure-prometheus: ## Install Debian's prometheus (server and promtool) when missing (root)
	./scripts/apt-ensure.sh --as prometheus --stop prometheus prometheus:prometheus promtool:prometheus

pytest: $(PY_STAMP) $(NODE_STAMP) ensure-redis ensure-prometheus
	$(BIN)/pytest -q

fmt: $(PY_STAMP) $(NODE_STAMP) ## Format Python and proto files
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BUF) format -w proto --exclude-path proto/google

k8s-schemas: $(PY_STAMP) ## Regenerate the Kubernetes ConfigMap of schemas/ (deploy/kubernetes/base)
	$(BIN)/python scripts/k8s-schemas-configmap.py

bench: $(PY_STAMP) ## Benchmarks against the simulator (minutes; not part of make test)
	$(BIN)/python -m bench

SOAK_SECONDS ?= 60
SOAK_FUZZ_SECONDS ?= 60

soak: $(PY_STAMP) ensure-redis ## Mixed load with faults for SOAK_SECONDS, ledger rows == calls; then a longer fuzz (minutes; not part of make test)
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)
	LLMGW_FUZZ_SECONDS=$(SOAK_FUZZ_SECONDS) $(BIN)/pytest -q -s tests/fuzz/test_fuzz_rpcs.py

image: ## Build the container image (needs a Docker engine)
	docker build -t llm-gateway:dev .

image-check: $(PY_STAMP) ## Build the image with buildah (no engine, no registry needed) and run it: serve, answer, drain
	./scripts/image-check.sh

lock: ## Re-pin requirements.lock from a fresh resolve of pyproject.toml
	rm -rf /tmp/llmgw-lock && $(PYTHON) -m venv /tmp/llmgw-lock
	/tmp/llmgw-lock/bin/pip install -q -U pip && /tmp/llmgw-lock/bin/pip install -q -e clients/python -e '.[dev]'
	/tmp/llmgw-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean: ## Remove the virtual environment and installed tools
	rm -rf $(VENV) tools/node_modules tools/build .mypy_cache .ruff_cache build
