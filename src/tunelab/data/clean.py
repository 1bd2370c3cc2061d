"""Clean, deduplicate and split conversations; every drop is counted by its reason.

Order matters: duplicates are removed *before* the seeded train/validation split, so the two
splits never share an example (exactly or nearly: near-duplicates are found with MinHash + LSH from
`datasketch` on character 5-gram shingles, which works for Chinese as well as English).
Length filtering happens after rendering (it needs token counts): see `prepare.py`.

Normalisation (`data.normalize`) changes what the model learns from, so it is a choice:
- `none`: contents untouched (then the prepared ids equal `apply_chat_template` of the raw data);
- `basic` (default): NFC, unix newlines, zero-width characters removed, and whitespace before the
  first character of an assistant reply removed; spaces and blank lines inside messages are kept, so
  code keeps its indentation and PEP 8 blank lines. The reply rule exists because a reply starts
  right after the template's `assistant\\n`: (1) Qwen3's template drops blank lines at the start of
  the last reply (`content.lstrip('\\n')`), so the ids could not equal the template's; (2) byte-level
  tokenizers without a newline rule in their pre-tokenizer (SmolLM2's, GPT-2's) merge that `\\n` with
  following spaces into one token, so the reply would not start on a token boundary and the prompt
  a model is asked with at inference (ending in `\\n`) would not be a prefix of what it trained on;
  (3) a blank line or space before every answer would be learned as a habit. Only the first line's
  indentation is lost. Doing it for every template keeps the cleaned conversations, and so the data
  fingerprint, independent of the tokenizer;
  A preference pair's `chosen` and `rejected` replies are assistant replies and follow the same rule;
- `full`: also no-break spaces made plain, trailing spaces of every line removed, runs of blank
  lines collapsed to one, and every message stripped (tunelab's behaviour before `data.normalize`).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from typing import Any

from ..errors import DataError

NORMALIZE = ("none", "basic", "full")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"), None)


def normalise_text(text: str, mode: str = "basic") -> str:
    """`text` normalised as `mode` says (see the module docstring); `none` returns it unchanged."""
    if mode == "none":
        return text
    if mode not in NORMALIZE:
        raise DataError(f"unknown data.normalize {mode!r}; known: {', '.join(NORMALIZE)}")
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")
    if mode == "basic":
        return text
    text = text.replace("\u00a0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def normalise(example: dict[str, Any], mode: str = "basic") -> dict[str, Any]:
    if mode == "none":
        return example
    if "text" in example and "messages" not in example:
        return {**example, "text": normalise_text(example["text"], mode)}

    def content(m: dict[str, str]) -> str:
        c = normalise_text(m["content"], mode)
        return c.lstrip() if m["role"] == "assistant" else c  # `basic`'s reply rule (module docstring)

    out = {**example, "messages": [{**m, "content": content(m)} for m in example["messages"]]}
    for key in ("chosen", "rejected"):  # a pair's replies are assistant replies: the same rule
        if key in example:
            out[key] = normalise_text(example[key], mode).lstrip()
    return out


def flat_text(example: dict[str, Any]) -> str:
    if "messages" not in example:
        return example["text"]
    text = "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])
    if "chosen" in example:  # a pair is a duplicate only with the same prompt AND the same two replies
        text += f"\nchosen: {example['chosen']}\nrejected: {example['rejected']}"
    return text


def is_empty(example: dict[str, Any]) -> bool:
    if "messages" not in example:
        return not example["text"].strip()
    # whitespace only is empty too: with `data.normalize` none/basic nothing else strips it
    replies = [example[k] for k in ("chosen", "rejected") if k in example]
    return any(not m["content"].strip() and m["role"] != "system" for m in example["messages"]) \
        or any(not r.strip() for r in replies)


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


def validation_count(n: int, val_size: float) -> int:
    """Examples that go to validation: `val_size` is a fraction when < 1, else a count."""
    return int(round(val_size * n)) if val_size < 1 else int(val_size)


def split(examples: list[Any], *, val_size: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle, then the first `val_size` (a fraction < 1, or a count) go to validation.
    A split that leaves nothing to train on is a DataError (see `prepare.clean_and_split` for the
    message with the data's counts), never silently shrunk."""
    n_val = validation_count(len(examples), val_size)
    if n_val >= len(examples):
        raise DataError(f"data.val_size={val_size:g} asks for {n_val} validation examples but there are only "
                        f"{len(examples)}: nothing would be left to train on")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in order[n_val:]]
    return train, val


def content_key(obj: Any) -> str:
    """A stable hash of JSON-serialisable content (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
