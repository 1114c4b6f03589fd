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
# Reproducible builds (the relu_module wheel): every timestamp a build writes is the last commit's.
export SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 315532800)
RELU_SRC    := $(shell find relu_module -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' -o -name '*.toml' \) -not -path '*/build/*' 2>/dev/null)

.PHONY: gpu-run help setup gateway-deps lock data run measure record-cpu check-repro train export serve client serve-targets serve-soak tune lint format profile bench-serving report test test-fast bench wheel nix-check clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Three steps: (1) every third-party package from constraints.txt in pip's hash-checking mode: a
# file whose sha256 is not in the lock (tampered, substituted, another build) is refused; (2)
# relu-module, built here from relu_module/ (a local build has no published hash to check); (3)
# mlpipe itself, editable. --no-deps: the lock already holds the whole closure; `pip check` proves it.
$(STAMP): constraints.txt pyproject.toml $(RELU_SRC)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r constraints.txt
	$(PIP) install -q --no-deps --no-build-isolation ./relu_module
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $@

setup: $(STAMP) ## create .venv: hash-checked constraints.txt, then relu_module and mlpipe (idempotent)

gateway-deps: ## Debian's nginx + njs for the serving gateway (apt-get as root; else says what to run)
	@bash .ci/nginx.sh

LOCK_WHEELS := build/lock-wheels
lock: ## regenerate constraints.txt (exact pins + sha256 of every file) from pyproject.toml
	rm -rf $(LOCK_WHEELS)
	$(PY) -m build --no-isolation --wheel --outdir $(LOCK_WHEELS) relu_module
	# relu-module resolves from the wheel just built (its deps enter the lock), but is left out of
	# the lock itself (--unsafe-package): it is built locally, so it has no stable hash.
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --generate-hashes --extra dev \
	  --unsafe-package relu-module --find-links $(LOCK_WHEELS) --no-emit-find-links \
	  --no-emit-index-url --strip-extras --output-file constraints.txt pyproject.toml

data: setup ## fetch the DVC-tracked data from the committed remote (no network needed)
	test -f data/digits.csv.gz || dvc pull data.dvc

# The measurement stages, in order (they declare no outs, so DVC cannot order them; see
# measurements/dvc.yaml). --force: a measurement is re-taken on every run.
MEASURE := tune serve knee profile_cpu bench relu_bench report
run: data gateway-deps ## the main job: dvc repro (verify_data -> train -> export, profile), the measurements, a summary (exit 1 on a consistency violation)
	dvc repro
	$(MAKE) --no-print-directory measure
	$(PY) -m mlpipe.report report.write=false

measure: data ## re-take every measurement (tune, serve, measured CPU profile and knees, bench, relu bench, report)
	dvc repro --force --single-item $(addprefix measurements/dvc.yaml:,$(MEASURE))

record-cpu: setup ## after committing a new dvc.lock: record its CPU contract beside it (dvc.lock.cpu.json)
	$(PY) -m mlpipe.common.repro > dvc.lock.cpu.json

check-repro: setup ## rebuild train+export in two fresh clones; compare the bytes with each other and dvc.lock
	$(PY) -m pytest -m slow tests/test_reproducibility.py -v

train: data ## train with the default config (dvc repro train); prints the test accuracy
	dvc repro train
	@$(PY) -c "import json; m = json.load(open('reports/train/metrics.json')); print(f\"test_acc {m['test_acc']:.4f}  test_loss {m['test_loss']:.4f}\")"

export: data ## ONNX export + parity + Triton repositories (dvc repro export)
	dvc repro export

serve: export ## tritonserver (loopback) + the nginx gateway + watchdog (Ctrl-C drains and stops it)
	mlpipe-serve

client: export ## send the test split to a server started for the purpose; accuracy + latency
	mlpipe-client

serve-targets: tune ## the serving targets: readiness, batch-1 p50 vs ORT, tuned vs untuned configs
	mlpipe-serve-targets

tune: export ## Triton config chosen by measurement: Pareto front + tuned repository (reports/tune/)
	dvc repro --force --single-item measurements/dvc.yaml:tune

serve-soak: export ## load through the gateway with 20 % bad requests, every answer checked: reports/serve/soak.json
	mlpipe-serve-soak

profile: setup ## FLOPs, bytes and roofline per layer (default and wide model)
	dvc repro profile

bench-serving: export ## latency/throughput per backend (torch, ORT, Triton HTTP/gRPC): reports/bench/
	dvc repro --force --single-item measurements/dvc.yaml:bench

report: data ## reports/REPORT.md from whatever stages have run
	mlpipe-report

CXX_SRC     := $(sort $(wildcard relu_module/src/*.cpp relu_module/src/*.hpp relu_module/src/torch_ops/*.cpp mlpipe/measure/*.cpp))

lint: setup ## ruff (lint + format check) on the Python, clang-format check on the C++
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --style=file:relu_module/.clang-format --dry-run --Werror $(CXX_SRC)

format: setup ## apply ruff's fixes and formatting, and clang-format, in place
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format --style=file:relu_module/.clang-format -i $(CXX_SRC)

test: data gateway-deps ## the full test suite (slow tests included, as in CI)
	$(PY) -m pytest

test-fast: data ## tests without the slow ones
	$(PY) -m pytest -m "not slow"

gpu-run: setup ## on a CUDA machine: every GPU measurement (bench, profile, knees, gpu tests) -> reports/gpu/
	PYTHON=$(PY) bash measurements/gpu-run.sh

bench: setup ## relu_module benchmark (full): reports/relu/; Hydra overrides in RELU_BENCH_ARGS
	mlpipe-relu-bench $(RELU_BENCH_ARGS)

wheel: setup ## sdist + wheel of relu_module under relu_module/dist/ (both reproducible: SOURCE_DATE_EPOCH)
	umask 022 && $(PY) -m build --no-isolation relu_module   # umask: file modes in the wheel
	bash .ci/normalize-sdist.sh relu_module/dist/relu_module-*.tar.gz   # setuptools stamps build times

nix-check: setup ## parse every .nix file, then tests/test_nix.py (evaluates the flake where ../shared/nixpkgs-lib exists)
	bash .ci/nix-parse.sh
	NIXPKGS_LIB="$${NIXPKGS_LIB:-$$(cd ../shared/nixpkgs-lib/lib 2>/dev/null && pwd)}" $(PY) -m pytest tests/test_nix.py

clean: ## remove the venv, builds and generated reports (keeps DVC data and cache)
	rm -rf $(VENV) relu_module/build relu_module/dist relu_module/src/*.egg-info .pytest_cache .hypothesis
	find reports -mindepth 1 -maxdepth 1 ! -name gpu -exec rm -rf {} +
