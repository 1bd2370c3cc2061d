"""Aggregate metrics: accuracy with a confidence interval, pass@k, Chinese ROUGE/BLEU, perplexity.

Exact definitions (each function implements one; tests recompute them independently):

- Wilson score interval for k successes in n trials, p = k/n, z = 1.959964 (95%):
      centre = (p + z²/2n) / (1 + z²/n)
      half   = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
      interval = [centre - half, centre + half]; n = 0 gives [0, 1] (nothing is known).
  Unlike p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at p = 0 or 1.
- pass@k (Chen et al. 2021, unbiased), n samples of which c are correct:
      pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i)
  The product form never builds the huge binomials; pass@k = 1 when n - c < k.
- rouge_bleu_zh, as LLaMA-Factory's `ComputeSimilarity` (so numbers are comparable with it):
  per pair, words = jieba.cut(text); ROUGE-1/2/L = rouge_chinese F-scores on the space-joined words
  (0 when either side has no words); BLEU-4 = nltk sentence_bleu on CHARACTERS with smoothing
  method3. Each per-pair score is x100 and rounded to 4 decimals, then averaged over pairs (the
  mean rounded to 4 decimals again). No pairs give zeros.
- spread of a score over S seeds (S whole passes, sample j seeded seed + j): mean = sum/S and
  std = sqrt(sum (x - mean)^2 / (S - 1)) (the sample standard deviation; 0 for one seed). A
  difference between two models smaller than the larger of their two stds is within seed noise.
- perplexity = exp(sum of token NLLs / number of scored tokens): the mean negative log-likelihood
  over the scored tokens only (prompt and padding tokens are not scored), exponentiated.

Run: `python -c "from tunelab.evaluate.scores import pass_at_k; print(pass_at_k(5, 2, 1))"`.
"""
from __future__ import annotations

import math
from functools import lru_cache

ROUGE_BLEU_KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95% by default); (0.0, 1.0) when n == 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)  # clamp only float noise


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k must include a correct sample
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def accuracy_summary(correct: list[bool]) -> dict:
    """{"n", "correct", "accuracy", "ci95": [lo, hi]}, rounded to 4 decimals; accuracy 0.0 when n == 0."""
    n, k = len(correct), sum(bool(c) for c in correct)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": round(k / n, 4) if n else 0.0,
            "ci95": [round(lo, 4), round(hi, 4)]}


@lru_cache(maxsize=1)
def _zh_tools():
    """jieba, Rouge and BLEU imported on first use; jieba quiet and its dictionary loaded once."""
    import logging

    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    # jieba logs "Building prefix dict..." at INFO; its default dictionary and HMM are fixed, so
    # segmentation is deterministic (we never enable parallel mode or load user dictionaries).
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba, Rouge(), sentence_bleu, SmoothingFunction().method3


def _pair_scores(pred: str, ref: str) -> dict[str, float]:
    jieba, rouge, sentence_bleu, smoothing = _zh_tools()
    hyp, gold = " ".join(jieba.cut(pred)), " ".join(jieba.cut(ref))
    if hyp.split() and gold.split():
        f = {k: v["f"] for k, v in rouge.get_scores(hyp, gold)[0].items()}
    else:  # rouge_chinese raises on empty text; an empty side shares nothing
        f = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    f["bleu-4"] = sentence_bleu([list(ref)], list(pred), smoothing_function=smoothing)
    return {k: round(f[k] * 100, 4) for k in ROUGE_BLEU_KEYS}


def rouge_bleu_zh(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L (jieba words) and BLEU-4 (characters), x100, as LLaMA-Factory reports them."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {k: 0.0 for k in ROUGE_BLEU_KEYS}
    pairs = [_pair_scores(p, r) for p, r in zip(predictions, references)]
    return {k: round(sum(s[k] for s in pairs) / len(pairs), 4) for k in ROUGE_BLEU_KEYS}


def spread(values: list[float]) -> dict:
    """{"values", "mean", "std"} over seeds, std with S - 1 in the denominator, rounded to 4 decimals."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"values": [], "mean": None, "std": None}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"values": [round(v, 4) for v in vals], "mean": round(mean, 4), "std": round(std, 4)}


def within_spread(a: dict, b: dict, diff: float) -> bool:
    """A difference `diff` between two results is within seed noise when it is no larger than the
    larger of their seed stds (results without seeds have none: never flagged)."""
    stds = [r["seeds"]["std"] for r in (a, b) if isinstance(r.get("seeds"), dict) and r["seeds"].get("std") is not None]
    return bool(stds) and abs(diff) <= max(stds)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(nll_sum / n_tokens): exp of the mean NLL over the scored tokens; inf if it overflows."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one scored token, got n_tokens={n_tokens}")
    mean = nll_sum / n_tokens
    return math.exp(mean) if mean < 709.0 else math.inf  # exp(709.8) is the largest float
