# One command per task. `make help` lists them. CI (.ci/run) calls `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# pytest-xdist workers for `make test` (auto: one per CPU). Each worker is its own pytest session, with
# its own databases, Redis keys and servers (tests/conftest.py says how).
TEST_WORKERS ?= auto
# `make test` writes bytecode (to the ignored __pycache__ folders) even where the environment sets
# PYTHONDONTWRITEBYTECODE: otherwise each worker re-rewrites the assertions of every test module and
# pytest plugin (about 7 s of CPU per worker) and every server and command-line process the tests start
# compiles the project again.

.PHONY: help demo test lint bench clean

help:  ## list the commands
	@grep -E '^[a-z]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(BIN)/dho-share: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/dho-share  ## run the system with demo data on http://127.0.0.1:8080 (SQLite; Redis when reachable)
	$(BIN)/dho-share demo

# axe-core (npm) is injected into the console's pages by the browser tests; without npm those tests are
# skipped locally (and fail in CI, which sets DHO_REQUIRE_ALL_TESTS).
node_modules/axe-core/axe.min.js: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the console's accessibility checks will be skipped"; fi

# FHIR.js (npm `fhir`) validates response shapes in the tests; without npm those checks are skipped
# locally (and fail in CI, which sets DHO_REQUIRE_ALL_TESTS).
tests/fhirjs/node_modules/.package-lock.json: tests/fhirjs/package-lock.json
	@if command -v npm >/dev/null; then cd tests/fhirjs && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the FHIR.js response checks will be skipped"; fi

test: $(BIN)/dho-share tests/fhirjs/node_modules/.package-lock.json node_modules/axe-core/axe.min.js  ## lint, type-check and run every test on SQLite and PostgreSQL, in parallel
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=10

lint: $(BIN)/dho-share  ## ruff, mypy and the import contracts only
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/dho-share  ## ingest and search benchmarks over HTTP against granian (see BENCHMARKS.md)
	$(BIN)/python -m benchmarks

clean:  ## remove the virtual environment and local data
	rm -rf $(VENV) var node_modules
