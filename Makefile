# Two commands on a fresh machine: `make run` and `make test`. Each makes its own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Run Conveyor embedded on its SQLite default (./conveyor.db): the quick start example.
run: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

## Run the test suite (unit, integration on SQLite + PostgreSQL, e2e).
test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Static checks (ruff lint + format, mypy); CI runs them before the tests.
lint: $(VENV)/.installed
	$(BIN)/ruff check core plugins workflows tests examples
	$(BIN)/ruff format --check core plugins workflows tests examples
	$(BIN)/mypy core plugins workflows

## Benchmarks (not part of the test run).
bench: $(VENV)/.installed
	$(BIN)/python tests/benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist *.egg-info conveyor.db conveyor.db-wal conveyor.db-shm
