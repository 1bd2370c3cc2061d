"""Data mixtures: counts by weight, realised proportions, per-source statistics, config parsing."""
from __future__ import annotations

import pytest

from tests.conftest import shared_data
from tunelab import config as C
from tunelab.data.mixture import draw, mixture_counts
from tunelab.data.prepare import prepare


def test_counts_follow_the_weights_exactly():
    assert mixture_counts([1000, 1000], [3, 1], 400) == [300, 100]
    assert mixture_counts([1000, 1000, 1000], [1, 1, 1], 100) == [34, 33, 33]  # largest remainder, sums to 100
    # no size: the largest mixture that repeats nothing; the scarcest source (relative to its share) sets it
    assert mixture_counts([300, 1000], [3, 1]) == [300, 100]
    assert mixture_counts([300, 50], [1, 1]) == [50, 50]


def test_draw_is_seeded_repeats_only_when_needed_and_mixes():
    a, b = [("a", i) for i in range(10)], [("b", i) for i in range(4)]
    one = draw([a, b], [6, 8], seed=3)
    assert one == draw([a, b], [6, 8], seed=3) and one != draw([a, b], [6, 8], seed=4)
    assert sum(x[0] == "a" for x in one) == 6 and len({x for x in one if x[0] == "a"}) == 6  # no repeat
    assert sum(x[0] == "b" for x in one) == 8 and len({x for x in one if x[0] == "b"}) == 4  # b upsampled x2
    assert [x[0] for x in one[:8]] != ["a"] * 6 + ["b"] * 2  # interleaved, not concatenated


def test_a_prepared_mixture_has_the_weights_proportions_and_counts_per_source(qwen_tok):
    shared_data("gsm8k_train.jsonl")
    shared_data("alpaca_zh_demo.json")
    p = prepare(source="", tokenizer=qwen_tok, mix=[{"name": "gsm8k", "weight": 3, "limit": 300},
                                                    {"name": "alpaca_zh_demo", "weight": 1}],
                val_size=0.1, dedup_mode="exact", max_length=2048, use_cache=False)
    src = p.stats["sources"]
    assert src["gsm8k"]["drawn"] == 300 and src["alpaca_zh_demo"]["drawn"] == 100
    realised = src["gsm8k"]["kept"] / (src["gsm8k"]["kept"] + src["alpaca_zh_demo"]["kept"])
    assert abs(realised - 0.75) <= 0.02  # cleaning dropped at most a few duplicates
    n = sum(p.stats["examples_out"].values())
    assert sum(s["kept"] for s in src.values()) == n
    assert sum(s["tokens"] for s in src.values()) == p.stats["tokens"]
    assert sum(s["supervised_tokens"] for s in src.values()) == p.stats["supervised_tokens"]
    train = p.load("train")
    assert "source" not in train.column_names  # counted, then dropped: training sees ids and labels only


def test_mix_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  mix:\n    - {name: gsm8k, weight: 2}\n    - {name: cmath, weight: 1, limit: 50}\n")
    cfg = C.load(path)
    assert [(m.name, m.weight, m.limit) for m in cfg.data.mix] == [("gsm8k", 2.0, None), ("cmath", 1.0, 50)]
    with pytest.raises(C.ConfigError, match=r"data.mix\[0\].wieght"):
        C.load(None, ["data.mix=[{name: gsm8k, wieght: 2}]"])
    with pytest.raises(C.ConfigError, match="'data.mix': expected sources each with a name and a weight above 0"):
        C.load(None, ["data.mix=[{name: gsm8k, weight: 0}]"])
