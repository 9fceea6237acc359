# Boilermaker workspace: one place to install, test, lint, benchmark and demo.
# uv on PATH, else the copy pip installs (`python3 -m uv` works even before a shell rehash).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help install test lint format typecheck bench soak demo docs docs-serve clean

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --group docs --compile-bytecode
	@# As pip does on install: without bytecode every process compiles what it imports
	@# (0.9 s more for each CLI command here, where PYTHONDONTWRITEBYTECODE is set).
	$(UV) run --no-sync python -m compileall -q -j 0 packages >/dev/null
	@if [ -f package-lock.json ] && [ ! -x node_modules/.bin/azurite-blob ]; then npm ci --no-audit --no-fund; fi
	$(UV) run --no-sync python tests/compat/published_env.py install
	@# The peers the benchmarks compare with, each pinned in its own environment (never fails).
	$(UV) run --no-sync python bench/peer_envs.py install

test: install
	$(UV) run pytest $(PYTEST_ARGS)

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy packages/*/src

typecheck: install
	$(UV) run mypy packages/*/src

format:
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

bench: install
	$(UV) run python -m bench

soak: install
	$(UV) run python -m bench.soak

demo: install
	$(UV) run boilermaker demo

# NO_MKDOCS_2_WARNING: mkdocs-material's end-of-life banner, not a warning about these docs.
docs: install
	NO_MKDOCS_2_WARNING=1 $(UV) run mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(UV) run mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf dist site .pytest_cache .mypy_cache .ruff_cache

help:
	@echo "make install     uv sync (dev and docs groups) and npm ci"
	@echo "make test        install, then run the test suite (docs examples and site included)"
	@echo "make lint        ruff and mypy"
	@echo "make bench       benchmarks"
	@echo "make soak        real workers killed, connections dropped, emulator and Azurite restarted"
	@echo "make demo        a small workload on a local emulator and Azurite"
	@echo "make docs        build the documentation site into site/ (mkdocs --strict)"
	@echo "make docs-serve  serve the documentation at http://127.0.0.1:8000, rebuilt on change"
