"""Tests for tunelab.data.formats: one hand-written record per format and its exact conversation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tunelab.data.conversation import DataError, validate
from tunelab.data.formats import FORMATS, detect, get_reader, parse_turns

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def read(fmt, record, **kw):
    conv = get_reader(fmt)(record, **kw)
    if "messages" in conv:
        validate(conv, "test")
    return conv


def test_registry_names():
    assert {"alpaca", "belle_math", "belle_multiturn", "sharegpt", "openai", "math", "gsm8k", "cmath",
            "text", "arith", "belle_seed"} <= set(FORMATS)


def test_alpaca_joins_input_and_keeps_contents_as_given():
    rec = {"instruction": "Translate to French: ", "input": "  good morning\n", "output": " Bonjour \n"}
    assert read("alpaca", rec) == {
        "messages": [U("Translate to French: \n\n  good morning\n"), A(" Bonjour \n")], "answer": None, "meta": {}}


def test_alpaca_empty_input_system_history_and_source():
    rec = {"instruction": "And 3+3?", "input": "", "output": "6", "system": "Be brief.",
           "history": [["1+1?", "2"], ["2+2?", "4"]]}
    assert read("alpaca", rec, source="demo") == {
        "messages": [S("Be brief."), U("1+1?"), A("2"), U("2+2?"), A("4"), U("And 3+3?"), A("6")],
        "answer": None, "meta": {"source": "demo"}}


def test_alpaca_bad_history():
    with pytest.raises(DataError, match=r"f\.json\[2\].*history item 0"):
        read("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}, where="f.json[2]")


# Laid out like BelleGroup/school_math_0.25M: `题目：` questions, empty input, solutions that start with a
# newline and (mostly) end with an `答案：` line.
BELLE_MATH = [
    {"instruction": "题目：小明有5个苹果，妈妈又给了他3个，他一共有几个苹果？", "input": "",
     "output": "\n小明原来有5个苹果，妈妈又给了他3个。\n5 + 3 = 8（个）\n答案：8个。"},
    {"instruction": "题目：一箱鸡蛋有30个，每天吃4个，吃了5天后还剩多少个？", "input": "",
     "output": "\n5天一共吃了：4 × 5 = 20（个）\n还剩：30 - 20 = 10（个）\n答案：还剩10个鸡蛋。"},
    {"instruction": "题目：小红有12颗糖，小华有9颗糖，谁的糖多？", "input": "",
     "output": "\n12 > 9，所以小红的糖多。\n答案：小红"},
    {"instruction": "题目：小明买了一支钢笔，花费了5元，又买了一本书，花费8元，现在他手里还有10元钱，他手上原来有多少钱？",
     "input": "", "output": "\n令小明手上原来有的钱为X元。\nX - 5 - 8 = 10\nX = 23\n因此，小明手上原来有23元钱。"},
]


def test_belle_math_takes_the_answer_line_as_gold():
    assert read("belle_math", BELLE_MATH[0]) == {
        "messages": [U("题目：小明有5个苹果，妈妈又给了他3个，他一共有几个苹果？"),
                     A("\n小明原来有5个苹果，妈妈又给了他3个。\n5 + 3 = 8（个）\n答案：8个。")],
        "answer": "8", "meta": {"task": "math", "answer_format": "answer_line"}}
    assert [read("belle_math", r)["answer"] for r in BELLE_MATH] == ["8", "10", "小红", None]


def test_belle_math_instruction_asks_for_the_answer_line():
    from tunelab.data.prompts import ANSWER_LINE_INSTRUCTION, apply_prompts

    conv = apply_prompts(read("belle_math", BELLE_MATH[1]))
    assert conv["messages"][0]["content"] == ("题目：一箱鸡蛋有30个，每天吃4个，吃了5天后还剩多少个？\n"
                                              "请一步一步推理，并在最后一行写出“答案：”和最终答案。")
    assert ANSWER_LINE_INSTRUCTION in conv["messages"][0]["content"] and "boxed" not in conv["messages"][0]["content"]
    assert apply_prompts(read("belle_math", BELLE_MATH[1]), instruction="只写答案")["messages"][0]["content"] \
        .endswith("\n只写答案")


def test_belle_multiturn_two_earlier_turns_trailing_assistant():
    rec = {"instruction": "Human:你好\nAssistant:你好！有什么可以帮你？\nHuman:讲个笑话\nAssistant:从前有座山。\n"
                          "Human:再讲一个\nAssistant:", "input": "", "output": "好的，再来一个。"}
    assert read("belle_multiturn", rec) == {
        "messages": [U("你好"), A("你好！有什么可以帮你？"), U("讲个笑话"), A("从前有座山。"), U("再讲一个"),
                     A("好的，再来一个。")], "answer": None, "meta": {}}


def test_belle_multiturn_three_earlier_turns_one_line_no_trailing_assistant():
    rec = {"instruction": "Human: 1+1? Assistant: 2 Human: 2+2? Assistant: 4\n\nHuman： 3+3? Assistant: 6 "
                          "Human: 4+4?", "input": "只写数字", "output": "8"}
    assert read("belle_multiturn", rec) == {
        "messages": [U("1+1?"), A("2"), U("2+2?"), A("4"), U("3+3?"), A("6"), U("4+4?\n\n只写数字"), A("8")],
        "answer": None, "meta": {}}


def test_belle_multiturn_single_question_and_errors():
    assert read("belle_multiturn", {"instruction": "Human: hi\nAssistant:", "output": "hello"})["messages"] == \
        [U("hi"), A("hello")]
    assert read("belle_multiturn", {"instruction": "plain question", "output": "x"})["messages"] == \
        [U("plain question"), A("x")]
    with pytest.raises(DataError, match="two Human turns in a row"):
        read("belle_multiturn", {"instruction": "Human: a\nHuman: b\nAssistant:", "output": "x"})
    with pytest.raises(DataError, match="must end with a Human turn"):
        read("belle_multiturn", {"instruction": "Human: a\nAssistant: b", "output": "x"})
    with pytest.raises(DataError, match="before the first"):
        read("belle_multiturn", {"instruction": "hello Human: a\nAssistant:", "output": "x"})


@given(st.lists(st.text(alphabet="abc xyz,.!?你好", min_size=1).map(str.strip).filter(bool), min_size=1, max_size=7))
def test_parse_turns_roundtrip(contents):
    text = "\n".join(f"{'Human' if i % 2 == 0 else 'Assistant'}: {c}" for i, c in enumerate(contents))
    assert parse_turns(text) == [U(c) if i % 2 == 0 else A(c) for i, c in enumerate(contents)]


def test_sharegpt_from_value_with_system_and_role_aliases():
    rec = {"system": "You are kind.", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "user", "value": "again"}, {"from": "ChatGPT", "value": "yes"},
        {"from": "human", "value": "bye"}, {"from": "bot", "value": "ciao"}]}
    assert read("sharegpt", rec, source="sg") == {
        "messages": [S("You are kind."), U("hi"), A("hello"), U("again"), A("yes"), U("bye"), A("ciao")],
        "answer": None, "meta": {"source": "sg"}}


def test_sharegpt_role_content_variant_and_system_message():
    rec = {"conversations": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a"}]}
    assert read("sharegpt", rec)["messages"] == [S("sys"), U("q"), A("a")]


def test_sharegpt_unknown_role_is_named():
    rec = {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "x"}]}
    with pytest.raises(DataError, match=r"d\.jsonl:4: message 1: unknown role 'observation'"):
        read("sharegpt", rec, where="d.jsonl:4")


def test_openai_and_conversation_roundtrip():
    rec = {"messages": [S("s"), U("q"), A("a")]}
    assert read("openai", rec) == {"messages": [S("s"), U("q"), A("a")], "answer": None, "meta": {}}
    saved = {"messages": [U("1+1?"), A("\\boxed{2}")], "answer": "2", "meta": {"task": "math", "id": 7}}
    assert read("openai", json.loads(json.dumps(saved))) == saved


def test_math_with_answer_and_meta():
    rec = {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
           "level": 1, "unique_id": "test/prealgebra/1.json"}
    assert read("math", rec) == {
        "messages": [U("What is $1+1$?"), A("It is $\\boxed{2}$.")], "answer": "2",
        "meta": {"task": "math", "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"}}


def test_math_without_answer_uses_last_boxed():
    rec = {"problem": "p", "solution": "First $\\boxed{1}$, finally $\\boxed{\\frac{1}{2}}$.", "type": "Algebra",
           "level": "Level 2"}
    conv = read("math", rec)
    assert conv["answer"] == "\\frac{1}{2}"
    assert conv["meta"] == {"task": "math", "subject": "Algebra", "level": "Level 2"}


def test_gsm8k_boxed_default():
    rec = {"question": "Natalia sold 48 clips and half as many in May. Total?",
           "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"}
    assert read("gsm8k", rec) == {
        "messages": [U("Natalia sold 48 clips and half as many in May. Total?"),
                     A("In May she sold 48/2 = 24 clips.\nTotal 48+24 = 72.\nThe answer is \\boxed{72}.")],
        "answer": "72", "meta": {"task": "math"}}


def test_gsm8k_unboxed_and_commas():
    rec = {"question": "q", "answer": "It costs 10*100 = $<<10*100=1000>>1,000.\n#### 1,000"}
    conv = read("gsm8k", rec, gsm8k_boxed=False)
    assert conv["messages"][1] == A("It costs 10*100 = $1,000.\n#### 1,000")
    assert conv["answer"] == "1000"
    assert read("gsm8k", rec)["messages"][1] == A("It costs 10*100 = $1,000.\nThe answer is \\boxed{1000}.")


def test_gsm8k_without_final_answer():
    with pytest.raises(DataError, match=r"g\.jsonl:9: a gsm8k answer must end with '#### N'"):
        read("gsm8k", {"question": "q", "answer": "no marker"}, where="g.jsonl:9")


def test_cmath():
    rec = {"grade": 1, "input": "芳芳买了一本书有99页，看了90页，她还剩多少页没有看？", "golden": "9", "reasoning_step": 1}
    assert read("cmath", rec) == {
        "messages": [U("芳芳买了一本书有99页，看了90页，她还剩多少页没有看？"), A("9")], "answer": "9",
        "meta": {"task": "math", "has_solution": False, "grade": 1}}


def test_text():
    assert read("text", {"text": " raw text\n"}) == {"text": " raw text\n"}
    assert read("text", {"body": "x"}, columns={"text": "body"}, source="c") == {"text": "x", "meta": {"source": "c"}}


def test_arith():
    rec = {"question": "3 pens cost 6 yuan. How much is one pen?", "solution": "6 ÷ 3 = 2. \\boxed{2}", "answer": 2,
           "unit": "yuan", "steps": 1, "lang": "en", "id": "arith-en-0-0"}
    assert read("arith", rec) == {
        "messages": [U("3 pens cost 6 yuan. How much is one pen?"), A("6 ÷ 3 = 2. \\boxed{2}")], "answer": "2",
        "meta": {"task": "math", "lang": "en", "id": "arith-en-0-0"}}


def test_belle_seed():
    rec = {"id": "seed_task_38", "name": "synonym_generation", "instruction": "给出下面词语的同义词",
           "instances": [{"input": "惊人地", "output": "令人惊奇地"}], "is_classification": False}
    assert read("belle_seed", rec) == {
        "messages": [U("给出下面词语的同义词\n\n惊人地"), A("令人惊奇地")], "answer": None,
        "meta": {"id": "seed_task_38", "name": "synonym_generation"}}


def test_column_mapping():
    rec = {"prompt": "Name a colour.", "response": "Blue.", "extra": 1}
    conv = read("alpaca", rec, columns={"instruction": "prompt", "output": "response"})
    assert conv["messages"] == [U("Name a colour."), A("Blue.")]
    conv = read("math", {"q": "p", "sol": "s", "final": "4"}, columns={"problem": "q", "solution": "sol", "answer": "final"})
    assert conv["messages"] == [U("p"), A("s")] and conv["answer"] == "4"


def test_column_mapping_unknown_field():
    with pytest.raises(DataError, match=r"unknown field\(s\) \['prompt'\]"):
        read("alpaca", {"instruction": "q", "output": "a"}, columns={"prompt": "q"})


def test_missing_column_message_names_where_column_and_present_columns():
    with pytest.raises(DataError) as e:
        read("alpaca", {"instruction": "q", "response": "a"}, where="data/train.jsonl:7")
    msg = str(e.value)
    assert msg.startswith("data/train.jsonl:7: ")
    assert "'output'" in msg and "columns present: 'instruction', 'response'" in msg
    with pytest.raises(DataError, match=r"x\.csv\[3\]: column 'answer_text' \(mapped from alpaca field 'output'\)"):
        read("alpaca", {"instruction": "q"}, columns={"output": "answer_text"}, where="x.csv[3]")


def test_null_and_non_text_values():
    with pytest.raises(DataError, match="'output' is null"):
        read("alpaca", {"instruction": "q", "output": None})
    with pytest.raises(DataError, match="'output' must be text, got int"):
        read("alpaca", {"instruction": "q", "output": 5})


@pytest.mark.parametrize("record, expected", [
    ({"messages": []}, "openai"),
    ({"conversations": []}, "sharegpt"),
    ({"problem": "p", "solution": "s", "answer": "a"}, "math"),
    ({"question": "q", "answer": "x\n#### 3"}, "gsm8k"),
    ({"input": "q", "golden": "3"}, "cmath"),
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"instruction": "Human: a\nAssistant: b\nHuman: c\nAssistant:", "input": "", "output": "d"}, "belle_multiturn"),
    ({"instruction": "i", "instances": []}, "belle_seed"),
    ({"question": "q", "solution": "s", "answer": "1", "lang": "en"}, "arith"),
    ({"text": "t"}, "text"),
])
def test_detect_format(record, expected):
    assert detect(record)[0] == expected


def test_detect_with_default_columns():
    assert detect({"question": "q", "std_answer": "a", "class": "math"}) == \
        ("alpaca", {"instruction": "question", "output": "std_answer"})
    assert detect({"idx": 0, "question": "q", "answer": "-2"}) == ("cmath", {"input": "question", "golden": "answer"})


def test_detect_unknown_and_unknown_format():
    with pytest.raises(DataError) as e:
        detect({"foo": 1, "bar": 2})
    assert "['bar', 'foo']" in str(e.value) and "alpaca" in str(e.value) and "sharegpt" in str(e.value)
    with pytest.raises(DataError, match="unknown data format 'nope'; known formats: alpaca, "):
        get_reader("nope")


EXPECTED_REAL = {
    "alpaca_en_demo.json": "alpaca", "alpaca_zh_demo.json": "alpaca", "belle_eval_set.jsonl": "alpaca",
    "belle_zh_seed_tasks.jsonl": "belle_seed", "cmath_dev.jsonl": "cmath", "cmath_distractor.jsonl": "cmath",
    "cn_middle_school_test.jsonl": "cmath", "gaokao_math_cloze_test.jsonl": "cmath", "gsm8k_test.jsonl": "gsm8k",
    "gsm8k_train.jsonl": "gsm8k", "math500_test.jsonl": "math",
}


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data not present")
@pytest.mark.parametrize("name", sorted(EXPECTED_REAL))
def test_detect_format_on_real_files(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    text = path.read_text(encoding="utf-8")
    first = json.loads(text)[0] if text.lstrip().startswith("[") else json.loads(text.splitlines()[0])
    fmt, columns = detect(first)
    assert fmt == EXPECTED_REAL[name]
    validate(get_reader(fmt)(first, columns=columns, where=f"{name}:1"), name)
