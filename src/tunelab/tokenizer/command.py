"""`tunelab tokenizer train|compare`: argument parsing and printing only (the work is in train.py, compare.py).

    tunelab tokenizer train CORPUS... --vocab-size 8192 --output runs/tok-8k [--min-frequency 2]
    tunelab tokenizer compare runs/tok-8k tiny-qwen3 smollm2-135m-instruct --data gsm8k_test belle_seed

Importing this module imports argparse only, so `tunelab --help` stays fast (no tokenizers, no torch).
Wired into cli.py with `commands["tokenizer"] = add_parsers(sub)`.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_parsers(subparsers: Any) -> Callable[[argparse.Namespace], int]:
    """Add `tokenizer` with its `train` and `compare` subcommands; return the function that runs them."""
    p = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer, or compare tokenizers")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train byte-level BPE (CJK-aware, single digits, ChatML) into a directory",
                       description="CORPUS: .txt/.md files, folders of them, data files (.json, .jsonl, .csv, .tsv, "
                                   ".parquet) or built-in data set names; records give all message contents.")
    t.add_argument("corpus", nargs="+", metavar="CORPUS", help="text file, folder, data file or data set name")
    t.add_argument("--vocab-size", type=int, required=True, help="tokens in all: 256 bytes + 3 special + merges")
    t.add_argument("--output", required=True, help="tokenizer directory to write (empty or absent)")
    t.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge (default 2)")
    t.add_argument("--text-field", help="read this field of each data record instead of its messages")
    t.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")

    c = sub.add_parser("compare", help="characters and bytes per token, per language, for several tokenizers")
    c.add_argument("tokenizers", nargs="+", metavar="DIR_OR_NAME", help="tokenizer directory, built-in model or hub id")
    c.add_argument("--data", nargs="+", required=True, metavar="SOURCE", help="texts to measure (as CORPUS above)")
    c.add_argument("--output", default="runs/tokenizer_compare",
                   help="where compare.json, compare.md and compare.png go (default runs/tokenizer_compare)")
    c.add_argument("--text-field", help="read this field of each data record instead of its messages")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return run


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "compare": _compare}[args.tokenizer_command](args)


def _train(args: argparse.Namespace) -> int:
    from .train import train_tokenizer

    s = train_tokenizer(args.corpus, vocab_size=args.vocab_size, output=args.output,
                        min_frequency=args.min_frequency, text_field=args.text_field, overwrite=args.overwrite,
                        show_progress=True)
    print(f"trained on {s['texts']:,} texts ({s['characters']:,} characters, {s['bytes']:,} bytes) "
          f"in {s['seconds']} s: {s['vocab_size']:,} tokens")
    if s["vocab_size"] < s["requested_vocab_size"]:
        print(f"note: the corpus supplies no more merges seen at least {s['min_frequency']} times, so the vocabulary "
              f"has {s['vocab_size']:,} tokens, not {s['requested_vocab_size']:,}; add text or lower --min-frequency")
    print(f"tokenizer: {s['output']} (a Hugging Face tokenizer directory: AutoTokenizer.from_pretrained)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    compare(args.tokenizers, args.data, output=args.output, overwrite=args.overwrite, text_field=args.text_field)
    print(f"table and chart: {args.output}/compare.md, compare.png, compare.json")
    return 0
