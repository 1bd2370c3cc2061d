"""Step similarity: how well a model's solution follows the reference solution's steps.

    step_similarity(prediction, reference)  ->  {"recall", "precision", "f1", "order", "n_ref", "n_pred", ...}

Definition (exactly what `step_similarity` computes; tests recompute it by hand):
1. Steps. A text is split into steps at blank lines when it has any ("\\n\\n"); otherwise at line
   breaks; a text of one line is split into sentences (after ". ", "。", "！", "？", "!", "?", ";", "；"
   — a "." between digits never ends a sentence). Empty steps are dropped. GSM8K calculator
   annotations `<<48/2=24>>` and the final `#### N` line are removed from references first.
2. Tokens. A step's tokens are its CJK characters one by one, words of letters, numbers (with
   their decimal point) and every other non-space character one by one, lower-cased.
3. Similarity. sim(a, b) = ROUGE-L F1 of the two token sequences: with L the length of their
   longest common subsequence, P = L/|b|, R = L/|a|, F1 = 2PR/(P+R) (0 when L = 0).
4. Alignment. Each reference step r_i is matched to the model step m_j with the highest sim
   (the first of equal ones); it is *recalled* when that similarity is >= threshold (0.5).
   Symmetrically, a model step is *supported* when its best similarity to any reference step is
   >= threshold.
   - step recall    = recalled reference steps / reference steps;
   - step precision = supported model steps / model steps;
   - step F1        = their harmonic mean (0 when both are 0);
   - order agreement = over the pairs (i < k) of recalled reference steps matched to different
     model steps, the fraction whose matches keep the reference order (j_i < j_k); 1.0 when there
     is no such pair (nothing can be out of order).
   - mean best similarity: the mean over reference steps of their best sim (no threshold).
A model output with no steps scores 0 recall and precision (order 1.0 by the rule above).
Aggregated over items as plain means (`aggregate_steps`), reported beside exact-match accuracy.
"""
from __future__ import annotations

import re
from typing import Any

THRESHOLD = 0.5
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=\.)(?=\s)|(?<=\.)$")
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z]+|\d+(?:\.\d+)?|\S")


def split_steps(text: str) -> list[str]:
    text = re.sub(r"<<[^<>]*>>", "", text or "")
    text = re.sub(r"\n?####[^\n]*\s*$", "", text).strip()
    if not text:
        return []
    if re.search(r"\n\s*\n", text):
        parts = re.split(r"\n\s*\n", text)
    elif "\n" in text:
        parts = text.split("\n")
    else:
        parts = _SENTENCE_END.split(text)
    return [p.strip() for p in parts if p.strip()]


def tokens(step: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(step)]


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token sequences (a: reference side, b: candidate side; F1 is symmetric)."""
    if not a or not b:
        return 0.0
    lcs = _lcs(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


def step_similarity(prediction: str, reference: str, threshold: float = THRESHOLD,
                    max_steps: int = 60) -> dict[str, Any]:
    """Step recall, precision, F1 and order agreement of `prediction` against `reference` (see module doc).
    At most `max_steps` steps of each side are compared (the cost is quadratic)."""
    ref = [tokens(s) for s in split_steps(reference)][:max_steps]
    pred = [tokens(s) for s in split_steps(prediction)][:max_steps]
    out: dict[str, Any] = {"n_ref": len(ref), "n_pred": len(pred)}
    if not ref or not pred:
        return {**out, "recall": 0.0, "precision": 0.0, "f1": 0.0, "order": 1.0, "mean_best": 0.0}
    sim = [[rouge_l(r, m) for m in pred] for r in ref]
    best_j = [max(range(len(pred)), key=lambda j: (row[j], -j)) for row in sim]
    best = [row[j] for row, j in zip(sim, best_j)]
    recalled = [i for i, b in enumerate(best) if b >= threshold]
    supported = sum(max(sim[i][j] for i in range(len(ref))) >= threshold for j in range(len(pred)))
    recall, precision = len(recalled) / len(ref), supported / len(pred)
    pairs = [(best_j[i], best_j[k]) for a, i in enumerate(recalled) for k in recalled[a + 1:]
             if best_j[i] != best_j[k]]
    order = sum(x < y for x, y in pairs) / len(pairs) if pairs else 1.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {**out, "recall": round(recall, 4), "precision": round(precision, 4), "f1": round(f1, 4),
            "order": round(order, 4), "mean_best": round(sum(best) / len(best), 4)}


def aggregate_steps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over items of recall, precision, F1, order agreement and mean best similarity."""
    keys = ("recall", "precision", "f1", "order", "mean_best")
    if not rows:
        return {"n": 0, **{k: None for k in keys}}
    return {"n": len(rows), **{k: round(sum(r[k] for r in rows) / len(rows), 4) for k in keys}}
