"""`tunelab tokenizer train|compare` through the argument parser, as cli.py will run them."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from tunelab.errors import DataError, OutputExistsError
from tunelab.tokenizer.command import add_parsers


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tunelab")
    sub = parser.add_subparsers(dest="command")
    command = add_parsers(sub)  # what cli.py stores in commands["tokenizer"]
    return command(parser.parse_args(argv))


def test_train_then_compare(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert run(["tokenizer", "train", str(tiny_corpus), "--vocab-size", "600", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained on 400 texts" in printed and "600 tokens" in printed and "note:" not in printed
    assert json.loads((out / "tokenizer_training.json").read_text())["min_frequency"] == 2

    report = tmp_path / "cmp"
    assert run(["tokenizer", "compare", str(out), "--data", str(tiny_corpus), "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "characters and bytes per token" in printed and f"{report}/compare.md" in printed
    rows = json.loads((report / "compare.json").read_text())["rows"]
    assert [r["language"] for r in rows] == ["zh", "en", "mixed", "all"]
    assert sum(r["texts"] for r in rows if r["language"] != "all") == 400
    assert [r["tokenizer"] for r in rows] == [str(out)] * 4


def test_train_refuses_non_empty_output_before_reading(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "x").write_text("mine")
    with pytest.raises(OutputExistsError, match=f"{out} exists and is not empty; pass --overwrite"):
        run(["tokenizer", "train", str(tmp_path / "no-such-corpus.txt"), "--vocab-size", "300", "--output", str(out)])


def test_train_small_corpus_says_vocabulary_is_smaller(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("hello hello hello world\n")
    run(["tokenizer", "train", str(tmp_path / "c.txt"), "--vocab-size", "1000", "--output", str(tmp_path / "t"),
         "--min-frequency", "1"])
    assert "note: the corpus supplies no more merges seen at least 1 times" in capsys.readouterr().out


def test_train_empty_corpus_names_it(tmp_path):
    (tmp_path / "empty.md").write_text("\n\n")
    with pytest.raises(DataError, match=f"corpus '{tmp_path / 'empty.md'}' has no text"):
        run(["tokenizer", "train", str(tmp_path / "empty.md"), "--vocab-size", "300", "--output", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()  # nothing half-written


def test_action_required(capsys):
    with pytest.raises(SystemExit):
        run(["tokenizer"])
    assert "required: ACTION" in capsys.readouterr().err


def test_importing_the_command_is_light():
    code = ("import sys, tunelab.tokenizer.command; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
