# mlpipe: every target a newcomer needs, set-up included. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.setup-stamp
# dvc stages call the console scripts (mlpipe-train, ...): the venv's bin comes first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
RELU_SRC    := $(shell find relu_module -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' -o -name '*.toml' \) -not -path '*/build/*' 2>/dev/null)

.PHONY: help setup data run train export serve client serve-measure profile bench-serving report test test-fast bench wheel lint-cpp nix-check clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): constraints.txt pyproject.toml $(RELU_SRC)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt pip setuptools pybind11
	$(PIP) install -q -c constraints.txt --no-build-isolation ./relu_module -e '.[dev]'
	touch $@

setup: $(STAMP) ## create .venv and install relu_module + mlpipe[dev] under constraints.txt (idempotent)

data: setup ## fetch the DVC-tracked data from the committed remote (no network needed)
	test -f data/digits.csv.gz || dvc pull data.dvc

run: data ## the main job: dvc repro (train -> export -> profile -> bench -> report), then a summary
	dvc repro
	$(PY) -m mlpipe.report report.write=false

train: data ## train with the default config (dvc repro train); prints the test accuracy
	dvc repro train
	@$(PY) -c "import json; m = json.load(open('reports/train/metrics.json')); print(f\"test_acc {m['test_acc']:.4f}  test_loss {m['test_loss']:.4f}\")"

export: data ## ONNX export + parity + Triton repositories (dvc repro export)
	dvc repro export

serve: export ## serve the exported model on the bundled tritonserver (Ctrl-C stops it)
	mlpipe-serve

client: export ## send the test split to a server started for the purpose; accuracy + latency
	mlpipe-client

serve-measure: export ## the serving targets: readiness, batch-1 p50 vs ORT, batching on/off
	mlpipe-client client.measure.enabled=true serve.http_port=0 serve.grpc_port=0 serve.metrics_port=0

profile: setup ## FLOPs, bytes and roofline per layer (default and wide model)
	dvc repro profile

bench-serving: export ## latency/throughput per backend (torch, ORT, Triton HTTP/gRPC): reports/bench/
	dvc repro bench

report: data ## reports/REPORT.md from whatever stages have run
	mlpipe-report

test: data ## the full test suite (slow tests included, as in CI)
	$(PY) -m pytest

test-fast: data ## tests without the slow ones
	$(PY) -m pytest -m "not slow"

bench: setup ## relu_module benchmark (full): reports/relu/; Hydra overrides in RELU_BENCH_ARGS
	$(PY) -m mlpipe.measure.relu_bench $(RELU_BENCH_ARGS)

wheel: setup ## sdist + wheel of relu_module under relu_module/dist/
	$(PY) -m build --no-isolation relu_module

lint-cpp: setup ## clang-format check of relu_module's C++ (style: relu_module/.clang-format)
	cd relu_module && ../$(VENV)/bin/clang-format --dry-run --Werror src/*.cpp src/*.hpp

nix-check: ## parse every .nix file (installs Debian's nix-bin if needed)
	bash .ci/nix-parse.sh

clean: ## remove the venv, builds and generated reports (keeps DVC data and cache)
	rm -rf $(VENV) relu_module/build relu_module/dist relu_module/src/*.egg-info .pytest_cache .hypothesis
	find reports -mindepth 1 -maxdepth 1 ! -name gpu -exec rm -rf {} +
