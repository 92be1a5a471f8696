# Two commands for a newcomer: `make run` and `make test`. Both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLES := examples/models/digits/model.onnx examples/models/mlp/model.onnx examples/models/slow/model.onnx

.PHONY: setup run test lint unit bench clean

setup: $(STAMP) $(EXAMPLES)

# The venv lives in the checkout; requirements.lock pins every transitive package.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[examples,dev]'
	touch $@

$(EXAMPLES) &: $(STAMP) src/wrk_ai_inference/examples.py
	$(BIN)/wrk-ai-inference examples
	touch $(EXAMPLES)

run: setup
	$(BIN)/wrk-ai-inference http

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: setup lint unit

clean:
	rm -rf $(VENV) examples/models/*/model.onnx .pytest_cache .mypy_cache .ruff_cache
