# The two quick-start commands of README.md, and the helpers they stand on.
# Every target installs what it needs into .venv first (scripts/install.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
# ray: tests/test_ray_collector.py runs a local cluster (plain `ray`: ~8 s to install, ~250 MB).
TEST_EXTRAS := dev,vizdoom,miniworld,procgen,memorygym,cluster,ray
PYTEST_ARGS ?= -n 2

.PHONY: install install-dev quickstart test lint bench gpu-wheels gpu-check

install:
	VENV=$(VENV) scripts/install.sh

install-dev:
	VENV=$(VENV) scripts/install.sh $(TEST_EXTRAS)

## Quick start 1: a short RISE training run on Atari Pong with the recipe's defaults.
quickstart: install
	$(PY) recipes/atari.py preset=quickstart

## Quick start 2: the test suite (what CI runs).
test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install-dev
	$(PY) benchmarks/run_all.py

## A GPU box without a package index (docs/gpu.md): the wheels it lacks, fetched where PyPI is reachable...
gpu-wheels:
	scripts/gpu_wheels.sh

## ...and, there (its own python3 and torch), the GPU benchmarks and tests: GPU_CHECK_ARGS="--out DIR".
gpu-check:
	python3 scripts/gpu_check.py $(GPU_CHECK_ARGS)
