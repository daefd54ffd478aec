# The two set-up commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export FLYWHEEL_HOME ?= $(CURDIR)/.flywheel
export DAGSTER_HOME ?= $(FLYWHEEL_HOME)/dagster_home

.PHONY: install demo test test-fast dev bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## Simulate a 3-robot x 2-day fleet and materialize every asset into .flywheel/
demo: install
	$(BIN)/flywheel demo

## The whole test suite (CI runs exactly this)
test: install
	$(BIN)/pytest

## The suite without the slow end-to-end tests
test-fast: install
	$(BIN)/pytest -m "not slow"

## The Dagster UI on the same code location and lake as the demo
dev: install
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Ingest throughput beside mcap-ros2-support (prints the ratio)
bench: install
	$(BIN)/python benchmarks/bench_ingest.py

lint: install
	$(BIN)/ruff check flywheel_pipelines flywheel_pipelines_tests benchmarks

clean:
	rm -rf $(VENV) .flywheel
