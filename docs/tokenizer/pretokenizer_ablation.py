"""Why tunelab's pre-tokenizer is what it is: the same corpus, trainer and vocabulary size, six pre-tokenizers.

    .venv/bin/python docs/tokenizer/pretokenizer_ablation.py   # ~1 min on 2 cores -> pretokenizer_ablation.md

Trains byte-level BPE (8,192 and 32,768 tokens, min_frequency 2) on the corpus of
the example in docs/scratch.md ("Tokenizers") and measures characters per token on the held-out sources
`tunelab tokenizer compare` used there, and counts vocabulary entries that mix Han characters with Latin letters or
digits. Only the Split regex before the byte-level step changes; variants are edits of tunelab's PATTERN.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from tokenizers import Regex, decoders, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tunelab.tokenizer.compare import measure, markdown
from tunelab.tokenizer.corpus import iter_texts
from tunelab.tokenizer.train import _CJK, PATTERN, SPECIAL_TOKENS, build_tokenizer

TRAIN = ["gsm8k", "alpaca_en_demo", "alpaca_zh_demo", "belle_eval", "cmath", "math500"]
HELD_OUT = ["gsm8k_test", "belle_seed", "cn_middle_school", "gaokao_math_cloze"]
VOCABS = (8192, 32768)
LEAD = r"[^\r\n\p{L}\p{N}]?"

VARIANTS = {
    "tunelab: CJK runs, single digits": PATTERN,
    "CJK runs with a leading space only": PATTERN.replace(f"|{LEAD}[{_CJK}]+", f"| ?[{_CJK}]+"),
    "each CJK character alone": PATTERN.replace(f"|{LEAD}[{_CJK}]+", f"|[{_CJK}]"),
    "Qwen2/Qwen3 regex (CJK not split off)": PATTERN.replace(f"|{LEAD}[{_CJK}]+", "")
                                                    .replace(f"[\\p{{L}}&&[^{_CJK}]]+", r"\p{L}+"),
    "tunelab, digits in groups of up to 3": PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|"),
    "GPT-2 byte-level (plain)": None,
}


def train(pattern: str | None, vocab: int) -> PreTrainedTokenizerFast:
    tok = build_tokenizer("gpt2" if pattern is None else "cjk")
    if pattern is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((t for _, t in iter_texts(TRAIN)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def hybrids(tok: PreTrainedTokenizerFast) -> list[str]:
    """Vocabulary entries with a Han character and a Latin letter or digit, as text."""
    dec = decoders.ByteLevel()
    texts = (dec.decode([t]) for t in tok.get_vocab())
    return sorted(t for t in texts if re.search(r"[\u4e00-\u9fff]", t) and re.search(r"[A-Za-z0-9]", t))


def main() -> None:
    for name, pattern in VARIANTS.items():  # the edits must have changed the pattern
        assert pattern is None or pattern != PATTERN or name.startswith("tunelab: "), name
    held_out = [t for _, t in iter_texts(HELD_OUT)]
    parts = [f"Trained on {', '.join(TRAIN)}; measured on {', '.join(HELD_OUT)} (held out). "
             f"Written by `{Path(__file__).name}`.\n"]
    for vocab in VOCABS:
        tokenizers = {name: train(pattern, vocab) for name, pattern in VARIANTS.items()}
        for tok in tokenizers.values():  # every variant is exact on the held-out texts
            assert all(tok.decode(tok.encode(t)) == t for t in held_out)
        rows = measure(tokenizers, held_out)
        parts.append(f"\n## {vocab:,} tokens\n\n" + markdown(rows))
        parts.append("\nVocabulary entries mixing Han with Latin letters or digits:\n\n")
        for name, tok in tokenizers.items():
            found = hybrids(tok)
            parts.append(f"- {name}: {len(found)}" + (f" (e.g. {', '.join(found[:6])})" if found else "") + "\n")
    out = Path(__file__).with_suffix(".md")
    out.write_text("".join(parts))
    sys.stdout.write(out.read_text())


if __name__ == "__main__":
    main()
