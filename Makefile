# Every target bootstraps .venv itself: a fresh machine needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist, one test file per process at a time). The suite mostly
# waits on Postgres, subprocesses and timers, so three keep two cores busy.
TEST_WORKERS ?= 3
# Schemathesis makes one case per operation at collection; xdist would fold them into
# one, so the API fuzz runs on its own, in one process.
FUZZ := tests/integration/test_openapi_fuzz.py

.PHONY: run test lint typecheck unit bench clean chromium screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: embedded Postgres + migrations + API + worker + Studio with examples/quickstart
run: $(STAMP)
	$(BIN)/hogsend dev --seed-demo

## test: lint, types and the whole pytest suite (unit, integration, acceptance, migrations)
## in TEST_WORKERS processes, then the API fuzz on its own; installs Debian's chromium
## first when missing (the browser tests drive it)
test: $(STAMP) chromium lint typecheck
	$(BIN)/python -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile \
		--ignore=$(FUZZ); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	$(BIN)/python -m pytest -p no:cacheprovider -p no:xdist $(FUZZ) || status=$$?; \
	exit $$status

## chromium: Debian's /usr/bin/chromium for the Playwright tests (never `playwright install`)
chromium:
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

## screenshots: run the Studio browser test and keep its screenshots in docs/screenshots
screenshots: $(STAMP) chromium
	STUDIO_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -p no:cacheprovider -q \
		tests/acceptance/test_studio_browser.py tests/acceptance/test_studio_journeys_browser.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

## bench: every benchmark in bench/, JSON results into bench/results/
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .hogsend .mypy_cache .ruff_cache
