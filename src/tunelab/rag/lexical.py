"""Words for BM25: jieba segmentation for Chinese, lower-cased letter/digit runs for everything else.

    tokenize("Natalia sold 48 clips")   -> ["natalia", "sold", "48", "clips"]
    tokenize("小明有5个苹果")            -> ["小明", "有", "5", "个", "苹果"]

Text is NFKC-normalised first (full-width digits and letters become ASCII) and lower-cased. Only runs
of CJK ideographs go through jieba, so an English word is the same token whether or not it stands next
to Chinese text, and jieba (its dictionary takes about a second to load) is loaded only for Chinese.
No stemming and no stop words: BM25's idf already discounts common words, and a math corpus needs its
numbers. `match_query` turns tokens into an FTS5 query (see `tunelab.rag.store` for the scoring).
"""
from __future__ import annotations

import logging
import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")  # no underscore: SQLite's unicode61 tokenizer splits on it too
_jieba = None


def _segment(run: str) -> list[str]:
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)  # it prints "Building prefix dict ..." on every first use
        _jieba = jieba
    return [w for w in _jieba.lcut(run) if w.strip()]


def tokenize(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    pos = 0
    for m in _CJK.finditer(text):
        out += _WORD.findall(text, pos, m.start())
        out += _segment(m.group())
        pos = m.end()
    out += _WORD.findall(text, pos)
    return out


def match_query(tokens: list[str]) -> str | None:
    """An FTS5 MATCH expression scoring documents that contain any of the tokens; None if there are none."""
    unique = list(dict.fromkeys(tokens))
    # Quoted, each token is a literal string to FTS5 (never an operator such as OR, NOT or NEAR).
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique) or None
