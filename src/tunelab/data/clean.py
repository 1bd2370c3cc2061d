"""Clean, deduplicate and split conversations; every drop is counted by its reason.

Order matters: duplicates are removed *before* the seeded train/validation split, so the two
splits never share an example (exactly or nearly: near-duplicates are found with MinHash + LSH from
`datasketch` on character 5-gram shingles, which works for Chinese as well as English).
Length filtering happens after rendering (it needs token counts): see `prepare.py`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from typing import Any

_MANY_NEWLINES = re.compile(r"\n{3,}")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"), None)


def normalise_text(text: str) -> str:
    """NFC, unix newlines, no zero-width characters, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u00a0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def normalise(example: dict[str, Any]) -> dict[str, Any]:
    if "text" in example and "messages" not in example:
        return {**example, "text": normalise_text(example["text"])}
    return {**example, "messages": [{**m, "content": normalise_text(m["content"])} for m in example["messages"]]}


def flat_text(example: dict[str, Any]) -> str:
    if "messages" not in example:
        return example["text"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])


def is_empty(example: dict[str, Any]) -> bool:
    if "messages" not in example:
        return not example["text"]
    return any(not m["content"] and m["role"] != "system" for m in example["messages"])


def _shingles(text: str, k: int = 5) -> list[bytes]:
    text = re.sub(r"\s+", " ", text.lower())
    return [text[i : i + k].encode("utf-8") for i in range(max(1, len(text) - k + 1))]


def dedup(
    examples: list[dict[str, Any]], *, mode: str = "near", threshold: float = 0.9, num_perm: int = 64
) -> tuple[list[dict[str, Any]], Counter]:
    """Keep the first of each group of exact (and, with mode='near', near) duplicates."""
    drops: Counter = Counter()
    if mode == "none":
        return examples, drops
    seen: set[str] = set()
    kept = []
    for ex in examples:
        h = hashlib.sha1(flat_text(ex).encode("utf-8")).hexdigest()
        if h in seen:
            drops["duplicate_exact"] += 1
            continue
        seen.add(h)
        kept.append(ex)
    if mode != "near" or len(kept) < 2:
        return kept, drops
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    out = []
    for i, ex in enumerate(kept):
        mh = MinHash(num_perm=num_perm, seed=1)
        mh.update_batch(_shingles(flat_text(ex)))
        if lsh.query(mh):
            drops["duplicate_near"] += 1
            continue
        lsh.insert(str(i), mh)
        out.append(ex)
    return out, drops


def split(examples: list[Any], *, val_size: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle, then the first `val_size` (a fraction < 1, or a count) go to validation."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_size * len(examples))) if val_size < 1 else int(val_size)
    n_val = min(n_val, max(0, len(examples) - 1))  # always leave something to train on
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in order[n_val:]]
    return train, val


def content_key(obj: Any) -> str:
    """A stable hash of JSON-serialisable content (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
