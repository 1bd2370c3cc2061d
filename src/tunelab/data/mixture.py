"""Data mixtures: several sources in one training set, in proportions set by weights.

    data:
      mix:
        - {name: gsm8k, weight: 3}
        - {name: alpaca_zh_demo, weight: 1, limit: 500}
      mix_size: null        # null: as many examples as the sources allow without repeating one

A source's share of the drawn examples is its weight over the sum of weights. The counts are exact
(largest remainder), so the realised proportions equal the weights to within one example per source.
Without `mix_size` the mixture is the largest that needs no repetition: T = min_i(n_i / p_i) for
n_i examples available in source i and share p_i (the first source to run out sets the size, as
LLaMA-Factory's `first_exhausted`). With a `mix_size` larger than that, a source that runs out is
repeated (another seeded shuffle of it), which is what upsampling a small source means. Examples are
drawn by a seeded shuffle of each source and the mixture is shuffled once more, so the same seed
gives the same mixture on any machine. Proportions are by examples, not tokens (OLMo mixes by tokens;
the prepared statistics report tokens per source so the token shares can be read off).
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence


def mixture_counts(available: Sequence[int], weights: Sequence[float], total: int | None = None) -> list[int]:
    """Examples to draw from each source: shares proportional to `weights`, summing to `total`."""
    shares = [w / sum(weights) for w in weights]
    if total is None:
        total = int(min(n / p for n, p in zip(available, shares)) + 1e-9)
    raw = [p * total for p in shares]
    counts = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))  # largest remainder first
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(sources: list[list[Any]], counts: Sequence[int], seed: int) -> list[Any]:
    """`counts[i]` items of `sources[i]` (seeded shuffles, repeated only when a source runs out), mixed."""
    rng = random.Random(seed)
    out = []
    for items, k in zip(sources, counts):
        picked: list[Any] = []
        while len(picked) < k and items:
            order = list(items)
            rng.shuffle(order)
            picked += order[: k - len(picked)]
        out += picked
    rng.shuffle(out)
    return out
