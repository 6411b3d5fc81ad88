# `make run` and `make test` create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,embedded,speed,otel]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/faas run

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check framework tests benchmarks functions
	$(BIN)/ruff format --check framework tests benchmarks functions

typecheck: $(STAMP)
	$(BIN)/mypy

# Test processes (pytest-xdist): most tests wait on brokers, nodes and timeouts, not on the CPU, so two
# share two cores well (the suite takes about half the time of one). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --durations=30

bench: $(STAMP)
	$(BIN)/python -m benchmarks

soak: $(STAMP)
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
