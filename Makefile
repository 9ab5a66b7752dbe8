# The front door: `make run` starts the service, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local and CI installs take the CPU build of torch; the Docker image keeps its base image's CUDA torch.
CONSTRAINTS ?= constraints-cpu.txt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck pytest pytest-postgres browser-deps postgres-deps prometheus-deps node-deps docker-deps bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/trainwire serve --host $(HOST) --port $(PORT)

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; no browser download)
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server, for the service's tests on PostgreSQL (a throwaway cluster each run)
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Debian's Prometheus server, for the test that scrapes a real server's /metrics with it
prometheus-deps:
	@command -v /usr/bin/prometheus >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus >/dev/null; }

# Debian's Node.js and npm, for the test that reads a stream with npm's `eventsource` package
node-deps:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }

# Debian's Docker engine, debootstrap and docker-compose, for the tests that build the image and run
# it under an engine of their own (tests/docker, as root; docs/docker.md)
docker-deps:
	@{ command -v dockerd && command -v docker && command -v debootstrap \
		&& command -v docker-compose; } >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq docker.io debootstrap docker-compose >/dev/null; }

lint: install
	$(BIN)/ruff check app workers tests bench trainwire examples
	$(BIN)/ruff format --check app workers tests bench trainwire examples

typecheck: install
	$(BIN)/mypy app workers trainwire

pytest: install browser-deps prometheus-deps node-deps docker-deps
	$(BIN)/pytest -q

# the service and hardening tests again, each server on a PostgreSQL database of its own
pytest-postgres: install postgres-deps
	tests/with_postgres.sh $(BIN)/pytest -q -p no:cacheprovider tests/app tests/hardening

test: lint typecheck pytest pytest-postgres

bench: install
	$(BIN)/python -m bench

# One script for a bare GPU host, no install step: the host's python and CUDA torch, and
# GPU_WHEELS=folder for the wheels the workers need besides torch (docs/gpu.md). Exit 2 without
# CUDA; GPU_CHECK_ARGS=--dry-run rehearses every part on the CPU (GPU_PYTHON=$(BIN)/python here).
GPU_PYTHON ?= $(PYTHON)
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
