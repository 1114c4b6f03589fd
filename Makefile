# mlpipe: every target a newcomer needs, set-up included. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.setup-stamp
RELU_SRC    := $(shell find relu_module -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' -o -name '*.toml' \) -not -path '*/build/*' 2>/dev/null)

.PHONY: help setup run test test-fast bench wheel nix-check clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): constraints.txt pyproject.toml $(RELU_SRC)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools pybind11 wheel
	$(PIP) install -q -c constraints.txt --no-build-isolation ./relu_module -e '.[dev]'
	touch $@

setup: $(STAMP) ## create .venv and install relu_module + mlpipe[dev] under constraints.txt (idempotent)

run: setup ## the main job: the whole pipeline, ends with a report on screen and under reports/
	$(PY) benchmarks/relu_bench.py

test: setup ## the full test suite (slow tests included, as in CI)
	$(PY) -m pytest

test-fast: setup ## tests without the slow ones
	$(PY) -m pytest -m "not slow"

bench: setup ## relu_module benchmark: table on screen, JSON + PNG under reports/relu/
	$(PY) benchmarks/relu_bench.py

wheel: setup ## sdist + wheel of relu_module under relu_module/dist/
	$(PY) -m build --no-isolation relu_module

nix-check: ## parse every .nix file (installs Debian's nix-bin if needed)
	bash .ci/nix-parse.sh

clean: ## remove the venv, builds and generated reports (keeps DVC data and cache)
	rm -rf $(VENV) relu_module/build relu_module/dist relu_module/src/*.egg-info .pytest_cache .hypothesis
	find reports -mindepth 1 -maxdepth 1 ! -name gpu -exec rm -rf {} +
