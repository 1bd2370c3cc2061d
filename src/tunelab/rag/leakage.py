"""Leakage check: retrieved passages must never be the test item itself, by id or by near-duplicate text.

    ex = Exclude(ids={"gsm8k_test.jsonl:17"}, texts=[question])
    ex.reason("gsm8k_train.jsonl:4", chunk_text)   # None, "id" or "near-duplicate 0.93"

Near-duplicate means the overlap coefficient of character 5-gram sets, |A ∩ B| / min(|A|, |B|), is at
least `threshold` (0.8): it catches a chunk that contains the test question (a Q&A record holding the
question and its solution) as well as a chunk cut out of the test item. Text is NFKC-normalised,
lower-cased and whitespace-collapsed first. Exact sets rather than MinHash (which `tunelab.data.clean`
uses to deduplicate whole data sets): only the few dozen candidates of one query are compared, so the
exact value is cheap and a borderline pair is never decided by hashing noise.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

NGRAM = 5
THRESHOLD = 0.8
_SPACE = re.compile(r"\s+")


def shingles(text: str, n: int = NGRAM) -> set[str]:
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    if len(text) <= n:
        return {text} if text else set()
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def overlap(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / min(|a|, |b|): 1.0 when one text is contained in the other."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


@dataclass
class Exclude:
    """What must not be retrieved for one test item: its ids and its text (question, or question + answer)."""

    ids: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)
    threshold: float = THRESHOLD

    def __post_init__(self) -> None:
        self.ids = {str(i) for i in self.ids}
        self._shingles = [s for s in (shingles(t) for t in self.texts) if s]

    def reason(self, doc_id: str, text: str) -> str | None:
        """Why this chunk is excluded, or None if it may be used."""
        if doc_id in self.ids:
            return "id"
        if self._shingles:
            chunk = shingles(text)
            best = max(overlap(chunk, s) for s in self._shingles)
            if best >= self.threshold:
                return f"near-duplicate {best:.2f}"
        return None
