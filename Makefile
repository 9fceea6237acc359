# Boilermaker workspace: one place to install, test, lint, benchmark and demo.
# uv on PATH, else the copy pip installs (`python3 -m uv` works even before a shell rehash).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: install test lint format typecheck bench demo clean

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@if [ -f package-lock.json ] && [ ! -x node_modules/.bin/azurite-blob ]; then npm ci --no-audit --no-fund; fi

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

demo: install
	$(UV) run boilermaker demo

clean:
	rm -rf dist .pytest_cache .mypy_cache .ruff_cache
