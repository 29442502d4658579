# Two commands on a fresh machine: `make up` runs the product, `make test` runs the tests.
# Each sets itself up (virtual environment, installs, migrations) and is safe to repeat.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test up api test test-fast lint bench migrate clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	# OCR of scanned PDFs: Debian's Tesseract with English and German models (root only; without it scans fail with "OCR unavailable").
	@command -v tesseract >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu >/dev/null; } || echo "tesseract not installed: scanned PDFs will fail with 'OCR unavailable'"
	touch $(STAMP)

# Test-only packages (pytest, moto, playwright, schemathesis, ...) come with `make test` only.
$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(BIN)/pip install --quiet -r requirements-test.lock
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)
	# axe-core for the dashboard's accessibility check, from the npm registry into tests/.axe.
	@if command -v npm >/dev/null; then test -f tests/.axe/node_modules/axe-core/axe.min.js || npm install --prefix tests/.axe --no-save --no-audit --no-fund axe-core@4 >/dev/null; else echo "npm not found: the dashboard's axe-core check skips (fails in CI)"; fi

migrate: install
	$(BIN)/expert-pipeline migrate

up: install
	$(BIN)/expert-pipeline up

api: install
	$(BIN)/expert-pipeline up --api-only

test: install-test
	$(BIN)/pytest

# Lint, format and types of the package, as CI checks them before the tests.
lint: install-test
	$(BIN)/ruff check expert_pipeline status_api
	$(BIN)/ruff format --check expert_pipeline status_api
	$(BIN)/mypy

test-fast: install-test
	$(BIN)/pytest -m "not slow and not browser"

bench: install
	$(BIN)/pip install --quiet -r bench/requirements.txt
	@command -v wrk >/dev/null || echo "bench/api_load.py needs wrk: apt-get install wrk"
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .expert_pipeline .pytest_cache
