"""Answer extraction (tunelab.data.answers): each extractor alone, and the gold answers the data readers
take with the same functions."""
from __future__ import annotations

import pytest

from tunelab.data.answers import (
    EXTRACTORS,
    extract_answer_is,
    extract_chinese_answer,
    extract_choice,
    extract_hash_answer,
    extract_last_number,
    final_answer_line,
    last_boxed,
    split_hash_answer,
)
from tunelab.data.formats import read_belle_math, read_gsm8k, read_math


@pytest.mark.parametrize("text,expected", [
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{a}\boxed{b}", "b"),
    (r"$\boxed{5}$", "5"),
    (r"\boxed 7$", "7"),
    (r"\fbox{9}", "9"),
    (r"\boxed {x^{2}}", "x^{2}"),
    (r"\boxed{1} \boxed{2", "1"),  # an unclosed last box is skipped
    (r"\boxedx{1}", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_other_extractors():
    assert extract_hash_answer("a\n#### 5\nb\n#### 1,234 ") == "1234"
    assert extract_hash_answer("no hashes") is None
    assert extract_answer_is("So the answer is 3.5. Then") == "3.5"
    assert extract_answer_is(r"The answer is $\boxed{7}$.") == "7"
    assert extract_answer_is("nothing") is None
    assert extract_chinese_answer("答：这条鱼24元钱。") == "24"
    assert extract_chinese_answer("x=3/4（吨）") == "3/4"
    assert extract_chinese_answer("答：略。") is None
    assert extract_last_number("from 10-3 we get 1,234.5 and then 3/4.") == "3/4"
    assert extract_last_number("we get 1,234 apples") == "1234"
    assert extract_last_number("it is -7") == "-7"
    assert extract_last_number("10-3") == "3"
    assert extract_last_number("25% off") == "25%"
    assert extract_last_number("none") is None
    assert extract_choice("答案是E", letters="ABCD") is None
    assert set(EXTRACTORS) == {"boxed", "hash", "answer_is", "chinese", "last_number", "choice"}


def test_split_hash_answer():
    assert split_hash_answer("She has 3.\n#### 1,234") == ("She has 3.\n", "1234")
    assert split_hash_answer("no final") is None
    assert split_hash_answer("empty #### ") is None


def test_gold_and_prediction_read_alike():
    """A data reader's gold answer is what the grader would extract from the same text."""
    solution = r"Half of it: $\fbox{\frac{1}{2}}$ is the result, so \boxed {7}"
    conv = read_math({"problem": "p", "solution": solution})
    assert conv["answer"] == last_boxed(solution) == "7"
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072"
    conv = read_gsm8k({"question": "q", "answer": raw})
    assert conv["answer"] == extract_hash_answer(raw) == "1072"


@pytest.mark.parametrize("text,expected", [
    ("5+3=8（个）\n答案：8个。", "8"),
    ("\n答案：小明一共有8个苹果。", "8"),
    ("答案:1,250元", "1250"),
    ("所以小红的多。\n答案：小红", "小红"),  # no number: the phrase is the answer
    ("答案：B。", "B"),
    ("答案：\\boxed{3/4}", "3/4"),
    ("答案：" + "很长" * 20, None),  # a sentence, not an answer
    ("答案是12，答：共13个。", "13"),  # the latest marker wins
])
def test_chinese_reads_the_answer_line(text, expected):
    assert extract_chinese_answer(text) == expected


def test_final_answer_line_is_the_gold_of_belle_school_math():
    assert final_answer_line("\n先算5+3=8。\n答案：8个。") == "8"
    assert final_answer_line("答案：3个，中间有答案：的文字\n最后\n答案：5") == "5"
    # a solution that ends in a sentence has no answer line: no gold answer rather than a guess
    assert final_answer_line("\n因此，小明手上原来有23元钱。") is None
    assert final_answer_line("答：这条鱼24元钱。") is None
    assert EXTRACTORS["chinese"] is extract_chinese_answer


def test_belle_math_gold_and_prediction_read_alike():
    """The grader (data/grading.py, DEFAULT_EXTRACTORS) reads a prediction's `答案：` line as the
    reader read the gold one: BELLE school_math is graded by exact match."""
    from tunelab.data.grading import grade

    conv = read_belle_math({"instruction": "题目：小明有5个苹果，妈妈又给了他3个，他一共有几个苹果？", "input": "",
                            "output": "\n小明原来有5个苹果，妈妈又给了3个，5+3=8（个）。\n答案：8个。"})
    assert conv["answer"] == "8"
    verdict = grade("5 + 3 = 8\n答案：一共有8个苹果。", conv["answer"])
    assert verdict.correct and verdict.method == "chinese" and verdict.extracted == "8"
    assert not grade("5 + 3 = 9\n答案：9个", conv["answer"]).correct
    assert grade("比较后得出。\n答案：小红", "小红").correct
