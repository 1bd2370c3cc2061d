"""Train a byte-level BPE tokenizer with a ChatML chat template, saved as a plain Hugging Face tokenizer.

    train_tokenizer(["corpus/", "gsm8k", "alpaca_zh_demo"], vocab_size=8192, output="runs/tok-8k")
    AutoTokenizer.from_pretrained("runs/tok-8k")   # tokenizer.json + tokenizer_config.json

The pipeline is Qwen2/Qwen3's (their tokenizer.json, read back here): a regex Split, then byte-level
BPE, no unknown token (any string encodes), a byte-level decoder. Two choices differ:
- CJK runs are pre-tokens of their own (see PATTERN);
- no Unicode normalizer (Qwen normalizes to NFC), so decode(encode(x)) == x for every string, also
  for text in decomposed form; normalizing is the data pipeline's job, not the tokenizer's.
Only the `tokenizers` library is needed to train; transformers reads the result.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..data.templates import TEMPLATES
from ..errors import UserError
from ..paths import atomic_dir, check_writable
from .corpus import iter_texts

# <|endoftext|> ends documents (eos; pretraining appends it) and pads; <|im_start|>/<|im_end|> frame
# ChatML turns. eos is not <|im_end|> because `stage: pt` appends eos between documents, which are not
# chat turns; chat stops at the template's end-of-turn token, which tunelab finds by rendering the
# template (templates.end_of_turn), and at eos. Pad is never <|im_end|> (see NOTES.md, SmolLM2).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BYTES = 256  # the byte alphabet every byte-level vocabulary starts with

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
# Qwen2/Qwen3's pattern (itself GPT-4's with single digits) with CJK runs split off from other letters:
#   contractions | CJK run | other letters | one digit | punctuation run | newlines | spaces.
# Measured in docs/tokenizer/pretokenizer_ablation.md (same corpus and trainer, held-out text):
# - CJK: Chinese has no spaces, so Qwen's `\p{L}+` takes a whole clause together with any Latin
#   letters touching it ("用Python写" is one pre-token), and BPE spends vocabulary on hybrids: at 32k
#   tokens Qwen's pattern learned 64 entries such as "ACME公司" and " 商品ID", this one none. Here a
#   run of Han/kana/Hangul is a pre-token of its own (DeepSeek-V3 splits off Han and kana runs), so a Latin
#   word or a number is tokenized the same inside Chinese text as in English text. Compression is
#   unchanged (1.20 Chinese characters per token at 8k, like Qwen's pattern; GPT-2's plain byte-level
#   1.17). Runs, not single ideographs: one pre-token per ideograph caps Chinese at one character per
#   token (1.00 at 8k). A run takes one leading non-letter (a space, "，", "“") as Qwen's letter rule
#   does; with a leading space only Chinese took 1.2% (8k) to 2.5% (32k) more tokens.
# - Digits: one per token, as Qwen and LLaMA do, not GPT-4's groups of up to 3. tunelab trains small
#   models on arithmetic word problems: with single digits a number is spelled with 10 tokens whose
#   place value is explicit, instead of 1,110 number tokens grouped from the left ("12345" -> "123",
#   "45"), on which small models learn arithmetic badly. The cost: 9% more tokens on the held-out
#   English (GSM8K) text at 8k than groups of up to 3.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    rf"|[^\r\n\p{{L}}\p{{N}}]?[{_CJK}]+"
    rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_CJK}]]+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = ("cjk", "gpt2")  # gpt2: plain byte-level BPE (GPT-2's regex), kept as the baseline


def build_tokenizer(pre_tokenizer: str = "cjk") -> Any:
    """An untrained byte-level BPE `tokenizers.Tokenizer` with tunelab's pre-tokenizer (or GPT-2's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if pre_tokenizer not in PRE_TOKENIZERS:
        raise UserError(f"unknown pre-tokenizer {pre_tokenizer!r}; known: {', '.join(PRE_TOKENIZERS)}")
    tok = Tokenizer(models.BPE())  # no unk_token: every byte is in the vocabulary
    if pre_tokenizer == "cjk":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets must cover leading spaces, the renderer maps labels through them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(
    corpus_paths: Sequence[str | Path],
    *,
    vocab_size: int,
    output: str | Path,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    chat_template: str | None = "chatml",
    min_frequency: int = 2,
    text_field: str | None = None,
    overwrite: bool = False,
    pre_tokenizer: str = "cjk",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train on the texts of `corpus_paths` (see corpus.py) and save a tokenizer directory at `output`.

    `vocab_size` counts everything: 256 bytes, the special tokens and the merges; a corpus too small
    to supply the merges gives a smaller vocabulary (the summary's `vocab_size` says so).
    The first special token is eos and pad. Returns a summary, also saved as tokenizer_training.json.
    """
    from tokenizers import pre_tokenizers, trainers

    special_tokens = list(special_tokens)
    _check_args(corpus_paths, vocab_size, special_tokens, chat_template, min_frequency)
    corpus_paths = [str(p) for p in corpus_paths]  # read twice: by the trainer and into the summary
    out = Path(output)
    check_writable(out, overwrite, kind="tokenizer", inputs=[str(c) for c in corpus_paths])  # before reading the corpus: fail in a second, not after training

    counts = {"texts": 0, "characters": 0, "bytes": 0}

    def texts() -> Iterable[str]:
        for _, text in iter_texts(corpus_paths, text_field=text_field):
            counts["texts"] += 1
            counts["characters"] += len(text)
            counts["bytes"] += len(text.encode("utf-8"))
            yield text

    tok = build_tokenizer(pre_tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    start = time.perf_counter()
    tok.train_from_iterator(texts(), trainer)
    summary = {
        "vocab_size": tok.get_vocab_size(), "requested_vocab_size": vocab_size, "min_frequency": min_frequency,
        "pre_tokenizer": pre_tokenizer, "special_tokens": special_tokens, "eos_token": special_tokens[0],
        "chat_template": chat_template, "corpus": corpus_paths, "text_field": text_field,
        **counts, "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_dir(out, kind="tokenizer", overwrite=overwrite) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        config = tokenizer_config(special_tokens, TEMPLATES[chat_template] if chat_template else None)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (tmp / "tokenizer_training.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return {**summary, "output": str(out)}


def tokenizer_config(special_tokens: list[str], chat_template: str | None) -> dict[str, Any]:
    """tokenizer_config.json written by hand, in the long-standing layout (Qwen's has the same keys):
    transformers 5's save_pretrained writes `tokenizer_class: TokenizersBackend` and a separate
    chat_template.jinja, which transformers 4 and other tools that read tokenizer_config.json miss."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "eos_token": special_tokens[0], "pad_token": special_tokens[0], "unk_token": None,
        "additional_special_tokens": special_tokens[1:],
        "add_bos_token": False, "add_prefix_space": False,
        # True would rewrite " ." as "." on decode and break decode(encode(x)) == x.
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        # no model_max_length: a context length belongs to the model trained with this tokenizer
    }
    if chat_template:
        config["chat_template"] = chat_template
    return config


def _check_args(corpus_paths: Sequence[Any], vocab_size: int, special_tokens: list[str],
                chat_template: str | None, min_frequency: int) -> None:
    if isinstance(corpus_paths, (str, Path)) or not corpus_paths:
        raise UserError("give the corpus as a non-empty list of paths or data sources")
    if not special_tokens or len(set(special_tokens)) != len(special_tokens):
        raise UserError(f"special tokens must be a non-empty list without repeats, got {special_tokens}")
    least = BYTES + len(special_tokens)
    if vocab_size < least:
        raise UserError(f"vocabulary size {vocab_size} is too small: the {BYTES} byte tokens and "
                        f"{len(special_tokens)} special tokens alone take {least}")
    if min_frequency < 1:
        raise UserError(f"min_frequency must be at least 1, got {min_frequency}")
    if chat_template is not None and chat_template not in TEMPLATES:
        raise UserError(f"unknown chat template {chat_template!r}; known: {', '.join(TEMPLATES)}")
    if chat_template == "chatml":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in special_tokens]
        if missing:
            raise UserError(f"the chatml template needs the special tokens {missing}")
        if special_tokens[0] in ("<|im_start|>", "<|im_end|>"):
            raise UserError(f"the first special token is eos and pad and must not be a ChatML turn token, "
                            f"got {special_tokens[0]!r} (e.g. put <|endoftext|> first)")
