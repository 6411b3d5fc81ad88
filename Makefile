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

pytest: $(STAMP)
	$(BIN)/pytest -m "not slow" --durations=30

bench: $(STAMP)
	$(BIN)/python -m benchmarks

soak: $(STAMP)
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
