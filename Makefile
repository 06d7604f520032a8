# Two commands: `make demo` runs the platform, `make test` passes the tests.
# Both set everything up on a fresh machine (a .venv with the project and its dev extras).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck imports pytest bench clean browser screenshots

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/upstairs demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy core gateway ingest alerts api simulators upstairs tests

imports: setup
	$(BIN)/lint-imports

# Debian's Chromium for the Playwright browser tests (playwright cannot download browsers here).
browser: setup
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

pytest: setup browser
	$(BIN)/pytest -q

test: lint typecheck imports browser pytest

# Renders every page of the demo into docs/screenshots/ (and prints page load times).
screenshots: setup browser
	$(PY) -m tests.browser_helpers screenshots --out docs/screenshots

bench: setup
	$(BIN)/upstairs bench ingest --readings 200000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
