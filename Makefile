# The front door: `make run` starts the service, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local and CI installs take the CPU build of torch; the Docker image keeps its base image's CUDA torch.
CONSTRAINTS ?= constraints-cpu.txt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck pytest browser-deps bench gpu-check clean

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

lint: install
	$(BIN)/ruff check app workers tests bench
	$(BIN)/ruff format --check app workers tests bench

typecheck: install
	$(BIN)/mypy app workers

pytest: install browser-deps
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench

gpu-check: install
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
