"""Tiny corpora from ../shared/data and tokenizers trained on them once per session."""
from __future__ import annotations

import json
from itertools import islice

import pytest

from tests.conftest import shared_data

VOCAB = 2000


def _write_texts(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """200 GSM8K questions + 200 alpaca_zh_demo outputs (about 48k + 35k characters) as {"text"} lines."""
    with open(shared_data("gsm8k_train.jsonl"), encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in islice(f, 200)]
    zh = json.loads(shared_data("alpaca_zh_demo.json").read_text(encoding="utf-8"))
    return _write_texts(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", questions + [r["output"] for r in zh[:200]])


@pytest.fixture(scope="session")
def held_out():
    """Texts not in the tiny corpus: 100 alpaca_zh_demo outputs and 100 GSM8K test questions."""
    zh = json.loads(shared_data("alpaca_zh_demo.json").read_text(encoding="utf-8"))
    with open(shared_data("gsm8k_test.jsonl"), encoding="utf-8") as f:
        en = [json.loads(line)["question"] for line in islice(f, 100)]
    return [r["output"] for r in zh[200:300]] + en


@pytest.fixture(scope="session")
def trained_dir(tiny_corpus, tmp_path_factory):
    from tunelab.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "cjk"
    train_tokenizer([tiny_corpus], vocab_size=VOCAB, output=out)
    return out


@pytest.fixture(scope="session")
def trained(trained_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained_dir)


@pytest.fixture(scope="session")
def gpt2_dir(tiny_corpus, tmp_path_factory):
    """The baseline: plain byte-level BPE (GPT-2's regex), same corpus, same size, same trainer."""
    from tunelab.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "gpt2"
    train_tokenizer([tiny_corpus], vocab_size=VOCAB, output=out, pre_tokenizer="gpt2")
    return out
