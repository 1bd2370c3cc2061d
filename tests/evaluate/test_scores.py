"""Aggregate metrics against values computed independently, here, from their definitions."""
from __future__ import annotations

import logging
import math

import pytest

from tunelab.evaluate.scores import accuracy_summary, pass_at_k, perplexity, rouge_bleu_zh, wilson_interval

Z = 1.959964


def wilson_by_hand(k, n):
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n,expected", [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)), (10, 10, (0.7225, 1.0))])
def test_wilson_interval(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == expected
    by_hand = wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, by_hand[0]), abs=1e-12) and hi == pytest.approx(min(1.0, by_hand[1]), abs=1e-12)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pass_at_k():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 5) == 1.0  # k = n with any correct sample
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10))
    assert pass_at_k(10, 10, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 0)


def test_accuracy_summary():
    s = accuracy_summary([True] * 5 + [False] * 5)
    assert s == {"n": 10, "correct": 5, "accuracy": 0.5, "ci95": [0.2366, 0.7634]}
    assert accuracy_summary([]) == {"n": 0, "correct": 0, "accuracy": 0.0, "ci95": [0.0, 1.0]}


PAIRS = [
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们去公园走走。"),
    ("机器学习是人工智能的一个分支。", "机器学习是人工智能的重要分支。"),
    ("", "这个问题的答案是二十四。"),
    ("北京是中国的首都。", "北京是中华人民共和国的首都。"),
    ("完全无关的句子", "猫在沙发上睡觉"),
]


def test_rouge_bleu_zh_matches_a_direct_computation():
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    per_pair = []
    for pred, ref in PAIRS:
        hyp, gold = list(jieba.cut(pred)), list(jieba.cut(ref))
        if " ".join(hyp).split() and " ".join(gold).split():
            r = Rouge().get_scores(" ".join(hyp), " ".join(gold))[0]
            f = [r["rouge-1"]["f"], r["rouge-2"]["f"], r["rouge-l"]["f"]]
        else:
            f = [0.0, 0.0, 0.0]
        bleu = sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)
        per_pair.append([round(x * 100, 4) for x in f + [bleu]])
    expected = [round(sum(col) / len(PAIRS), 4) for col in zip(*per_pair)]

    got = rouge_bleu_zh([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert list(got) == ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]
    assert list(got.values()) == pytest.approx(expected, abs=1e-9)
    assert per_pair[2] == [0.0, 0.0, 0.0, 0.0]  # the empty prediction scores zero everywhere
    assert 0 < got["rouge-1"] < 100 and 0 < got["bleu-4"] < 100


def test_rouge_bleu_zh_edges():
    same = rouge_bleu_zh(["我爱北京天安门。"], ["我爱北京天安门。"])
    assert same == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    assert rouge_bleu_zh([], []) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    with pytest.raises(ValueError):
        rouge_bleu_zh(["a"], [])


def test_perplexity():
    assert perplexity(math.log(4) * 10, 10) == pytest.approx(4.0)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
