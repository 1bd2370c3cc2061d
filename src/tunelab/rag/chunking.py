"""Cut a document's text into overlapping chunks of at most N tokens, as exact substrings of the text.

    chunk_spans("a long text ...", chunk_tokens=256, overlap=32)            # character fallback
    chunk_spans(text, 256, 32, tokenizer=encoder.tokenizer)                 # the encoder's own tokens

With a (fast) Hugging Face tokenizer, tokens are the tokenizer's, found through its offset mapping,
so a chunk never exceeds what the encoder reads. Without one, the fallback counts a word, a CJK
character or a punctuation mark as one token: close to subword counts for Chinese, a little under
them for English. A chunk is `text[start:end]`, so its line in the file can be cited.
"""
from __future__ import annotations

import re
from typing import Any

from tunelab.errors import ConfigError

# One fallback token: a CJK ideograph alone (they are words or morphemes), a run of other letters and
# digits, or one other visible character.
_FALLBACK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[^\w\s]|_")


def check_sizes(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 1:
        raise ConfigError(f"--chunk-tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ConfigError(f"--overlap must be at least 0 and less than --chunk-tokens ({chunk_tokens}), got {overlap}")


def token_spans(text: str, tokenizer: Any = None) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token."""
    if tokenizer is None:
        return [m.span() for m in _FALLBACK.finditer(text)]
    # verbose=False: a whole file is longer than the model reads; only its offsets are wanted here
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    # Some tokenizers give (0, 0) for tokens that cover no character; they cannot start or end a cut.
    return [(a, b) for a, b in enc["offset_mapping"] if b > a]


def chunk_spans(text: str, chunk_tokens: int, overlap: int, tokenizer: Any = None) -> list[tuple[int, int]]:
    """Character ranges of consecutive windows of `chunk_tokens` tokens, each sharing `overlap` with the last."""
    check_sizes(chunk_tokens, overlap)
    spans = token_spans(text, tokenizer)
    if not spans:
        return []
    out, step = [], chunk_tokens - overlap
    for first in range(0, len(spans), step):
        last = min(first + chunk_tokens, len(spans)) - 1
        out.append((spans[first][0], spans[last][1]))
        if last == len(spans) - 1:
            break
    return out


def line_of(text: str, offset: int) -> int:
    """1-based line number of a character offset."""
    return text.count("\n", 0, offset) + 1
