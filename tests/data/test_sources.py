"""Tests for tunelab.data.sources: file types, error messages, built-in data sets, hub fallback."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelab.data import sources
from tunelab.data.conversation import DataError
from tunelab.data.sources import (BUILTIN_DATA, find_data_dir, iter_records, load_conversations, resolve)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5"},
    {"instruction": "翻译成英文", "input": "你好，世界", "output": "Hello, world"},
]
EXPECTED = [
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
     "answer": None, "meta": {"source": "t"}},
    {"messages": [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                  {"role": "assistant", "content": "2 + 3 = 5"}], "answer": None, "meta": {"source": "t"}},
    {"messages": [{"role": "user", "content": "翻译成英文\n\n你好，世界"}, {"role": "assistant", "content": "Hello, world"}],
     "answer": None, "meta": {"source": "t"}},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_and_where(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert load_conversations(str(path), source="t") == EXPECTED
    assert [w for w, _ in iter_records(str(path))] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_jsonl_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert [w for w, _ in iter_records(str(path))] == [f"{path}:1", f"{path}:3"]


def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    assert load_conversations(str(path), source="t") == EXPECTED
    assert [w for w, _ in iter_records(str(path))] == [f"{path}[0]", f"{path}[1]", f"{path}[2]"]


def test_json_lines_with_json_extension(tmp_path):
    path = write_jsonl(tmp_path / "d.json", ROWS)
    assert load_conversations(str(path), source="t") == EXPECTED
    assert next(iter_records(str(path)))[0] == f"{path}:1"


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert load_conversations(str(path), source="t") == EXPECTED
    assert next(iter_records(str(path)))[0] == f"{path}[0]"


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert load_conversations(str(path), source="t") == EXPECTED
    assert [w for w, _ in iter_records(str(path))][-1] == f"{path}[2]"


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_conversations(str(tmp_path / "ds"), source="t") == EXPECTED
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_conversations(str(tmp_path / "dd"), source="t") == EXPECTED
    assert load_conversations(str(tmp_path / "dd"), split="test", source="t") == EXPECTED[:1]
    with pytest.raises(DataError, match="no split 'validation'; splits: train, test"):
        load_conversations(str(tmp_path / "dd"), split="validation")


def test_plain_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        list(iter_records(str(tmp_path)))


def test_malformed_jsonl_line_3(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{\"instruction\": \"x\",\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    assert str(path) in str(e.value) and "line 3" in str(e.value)


def test_json_neither_json_nor_json_lines(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json: neither valid JSON \(line 3, .*nor JSON lines"):
        list(iter_records(str(path)))


def test_bad_record_names_where(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"instruction": "q", "response": "a"}])
    with pytest.raises(DataError) as e:
        load_conversations(str(path), format="alpaca")
    assert str(e.value).startswith(f"{path}:2: ") and "'output'" in str(e.value) and "'response'" in str(e.value)


def test_detection_uses_first_record(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"text": "stray"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: .*'instruction'"):
        load_conversations(str(path))


def test_unrecognised_first_record(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: cannot detect the data format from keys \['foo'\]"):
        load_conversations(str(path))


def test_explicit_format_columns_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "reply": f"a{i}"} for i in range(10)])
    convs = load_conversations(str(path), format="alpaca", columns={"instruction": "prompt", "output": "reply"},
                               limit=4)
    assert [c["messages"][1]["content"] for c in convs] == ["a0", "a1", "a2", "a3"]
    assert convs[0]["meta"] == {"source": str(path)}


def test_text_records_skip_validation(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": "two"}])
    assert load_conversations(str(path), source="t") == [{"text": "one", "meta": {"source": "t"}},
                                                          {"text": "two", "meta": {"source": "t"}}]


def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataError, match=r"unsupported file type '.xml'; supported: data .json, .jsonl, .csv, .tsv, "
                                        r".parquet; text .txt, .md; or a folder"):
        list(iter_records(str(tmp_path / "d.xml")))
    with pytest.raises(DataError, match="not an existing file or directory"):
        resolve(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="not an existing file"):
        resolve("data/missing.jsonl")


def test_hub_id_offline(monkeypatch):
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert resolve("someone/some-data") == ("hub", "someone/some-data", "auto", None)
    with pytest.raises(DataError) as e:
        load_conversations("someone/some-data", split="test")
    msg = str(e.value)
    assert "could not fetch data set 'someone/some-data'" in msg and "hub" in msg and "local path" in msg
    assert "ConnectionError: no network" in msg
    assert calls == [(("someone/some-data",), {"split": "test"})]


def test_hub_rows(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda repo, split: datasets.Dataset.from_list(ROWS))
    assert load_conversations("owner/name", source="t") == EXPECTED
    assert next(iter_records("owner/name"))[0] == "owner/name[0]"


def test_builtin_missing_file_message(monkeypatch, tmp_path):
    monkeypatch.setitem(BUILTIN_DATA, "nosuch", ("nosuch_file.jsonl", "alpaca", "test entry"))
    monkeypatch.setenv("TUNELAB_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        resolve("nosuch")
    msg = str(e.value)
    assert "'nosuch'" in msg and "'nosuch_file.jsonl'" in msg and str(tmp_path) in msg
    assert "TUNELAB_DATA" in msg and "path" in msg


def test_find_data_dir_prefers_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_DATA", str(tmp_path))
    assert find_data_dir() == tmp_path.resolve()
    assert sources.data_dirs()[0] == tmp_path


def test_local_path_wins_over_builtin_name(monkeypatch, tmp_path):
    write_jsonl(tmp_path / "gsm8k", ROWS)  # a file literally named like a built-in set
    monkeypatch.chdir(tmp_path)
    assert resolve("gsm8k")[:3] == ("file", "gsm8k", "auto")


def builtin(name, **kw):
    try:
        resolve(name)
    except DataError as e:
        pytest.skip(str(e))
    return load_conversations(name, limit=5, **kw)


@pytest.mark.parametrize("name", [n for n, (f, _, _) in BUILTIN_DATA.items() if f])
def test_every_builtin_file_loads(name):
    convs = builtin(name)
    assert len(convs) == 5
    pairs = BUILTIN_DATA[name][1].startswith("pairs")  # a preference pair's messages are its prompt
    for c in convs:
        assert c["messages"][-1]["role"] == ("user" if pairs else "assistant") and c["meta"]["source"] == name
        assert pairs == ("chosen" in c and "rejected" in c)
        assert (c["meta"].get("task") == "math") == (BUILTIN_DATA[name][1] in ("math", "gsm8k", "cmath"))


def test_builtin_known_values():
    assert builtin("math500")[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert builtin("math500")[0]["meta"]["unique_id"] == "test/precalculus/807.json"
    gsm = builtin("gsm8k")[0]
    assert gsm["answer"] == "72"
    assert gsm["messages"][1]["content"] == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
                                             "altogether in April and May.\nThe answer is \\boxed{72}.")
    assert builtin("gsm8k_test")[0]["answer"] == "18"
    assert builtin("cmath")[0]["answer"] == "9"
    assert builtin("cmath_distractor")[0]["answer"] == "5"
    assert builtin("cn_middle_school")[0]["answer"] == "-2"
    assert builtin("gaokao_math_cloze")[0]["answer"] == "2"
    assert builtin("alpaca_en_demo")[0]["messages"][0]["content"] == "Describe a process of making crepes."
    assert builtin("alpaca_zh_demo")[0]["messages"][0]["content"].startswith("识别并解释给定列表中的两个科学理论")
    assert builtin("belle_eval")[0]["messages"][0]["content"] == "请你写出一个可以生成五个不同随机数的 Python 程序。"
    assert builtin("belle_seed")[0]["messages"] == [
        {"role": "user", "content": "请以下面词语为主题写一首诗\n\n夏天"},
        {"role": "assistant", "content": "不但春妍夏亦佳，随缘花草是生涯。\n鹿葱解插纤长柄，金凤仍开最小花。"}]


def test_builtin_gsm8k_unboxed():
    assert builtin("gsm8k", gsm8k_boxed=False)[0]["messages"][1]["content"].endswith("April and May.\n#### 72")


@pytest.mark.parametrize("name, langs", [("arith", {"en", "zh"}), ("arith_en", {"en"}), ("arith_zh", {"zh"})])
def test_generated_arith(name, langs):
    pytest.importorskip("tunelab.data.arith")
    convs = load_conversations(name, n=20, seed=3)
    assert len(convs) == 20
    assert {c["meta"]["lang"] for c in convs} <= langs
    assert all(c["meta"]["task"] == "math" and isinstance(c["answer"], str) for c in convs)
    assert convs == load_conversations(name, n=20, seed=3)  # same seed, same data
    assert [w for w, _ in iter_records(name, n=2)] == [f"{name}[0]", f"{name}[1]"]


# -- roles out of order --------------------------------------------------------------------------------------
def _chat(*turns, system=None):
    convs = [{"from": r, "value": v} for r, v in turns]
    return {"conversations": convs, **({"system": system} if system else {})}


def test_two_turns_of_one_role_in_a_row_name_the_record(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [_chat(("human", "hi"), ("gpt", "hello")),
                                              _chat(("human", "a"), ("human", "b"), ("gpt", "c"))])
    with pytest.raises(DataError, match=rf"^{path}:2: roles out of order: message 1 is a second user turn in a row "
                                        r"\(messages 0 and 1\); user and assistant turns must alternate$"):
        load_conversations(str(path))
    path = write_jsonl(tmp_path / "d.jsonl", [_chat(("human", "a"), ("gpt", "b"), ("gpt", "c"), system="s")])
    with pytest.raises(DataError, match=rf"^{path}:1: roles out of order: message 3 is a second assistant turn"):
        load_conversations(str(path))


def test_leading_assistant_turns_are_removed_and_counted(tmp_path):
    from collections import Counter

    from tunelab.data.sources import iter_conversations

    path = write_jsonl(tmp_path / "c.jsonl", [
        _chat(("gpt", "Hello! How can I help you today?"), ("human", "1+1?"), ("gpt", "2")),
        _chat(("gpt", "Hi."), ("gpt", "Anyone there?"), ("human", "yes"), ("gpt", "good"), system="Be kind."),
        _chat(("human", "q"), ("gpt", "a")),
    ])
    fixes = Counter()
    convs = [c for _, c in iter_conversations(str(path), fixes=fixes)]
    assert [c["messages"] for c in convs] == [
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "yes"},
         {"role": "assistant", "content": "good"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    assert fixes == {"leading_assistant_turn": 3}
    path = write_jsonl(tmp_path / "e.jsonl", [_chat(("gpt", "Hello!"), ("human", "bye"))])
    with pytest.raises(DataError, match=rf"{path}:1: a training conversation needs at least one assistant message"):
        load_conversations(str(path))


def test_validate_alone_refuses_a_leading_assistant_turn():
    from tunelab.data.conversation import validate

    with pytest.raises(DataError, match=r"^x:3: message 1 is an assistant turn before any user turn"):
        validate({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"},
                               {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, "x:3")


# -- text files and folders ----------------------------------------------------------------------------------
def test_text_file_and_folder_are_text_corpora(tmp_path):
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / "docs" / "b.md").write_bytes(b"# B\r\n\r\nsecond\r\n")
    (tmp_path / "docs" / "deep" / "a.txt").write_text("first\n\n\nparagraph two", encoding="utf-8")
    (tmp_path / "docs" / "notes.json").write_text('{"text": "not a text file"}')
    assert resolve(str(tmp_path / "docs")) == ("textdir", str(tmp_path / "docs"), "text", None)
    assert list(iter_records(str(tmp_path / "docs"))) == [
        (str(tmp_path / "docs" / "b.md"), {"text": "# B\r\n\r\nsecond\r\n"}),  # whole files, exactly as written
        (str(tmp_path / "docs" / "deep" / "a.txt"), {"text": "first\n\n\nparagraph two"})]
    assert load_conversations(str(tmp_path / "docs" / "deep" / "a.txt"), source="t") == [
        {"text": "first\n\n\nparagraph two", "meta": {"source": "t"}}]


def test_folder_without_text_files_names_both_kinds(tmp_path):
    (tmp_path / "x.jsonl").write_text("{}")
    with pytest.raises(DataError, match=rf"folder '{tmp_path}' has no .txt or .md files .*save_to_disk"):
        list(iter_records(str(tmp_path)))


# -- files that are not UTF-8 --------------------------------------------------------------------------------
GBK = "答案".encode("gbk")  # b"\xb4\xf0\xb0\xb8"


@pytest.mark.parametrize("name,content,offset,line", [
    ("d.jsonl", b'{"text": "ok"}\n{"text": "' + GBK + b'"}\n', 25, 2),
    ("d.json", b'[{"text": "ok"},\n {"text": "' + GBK + b'"}]', 28, 2),
    ("d.csv", b"instruction,output\nq,a\n" + GBK + b",b\n", 23, 3),
    ("d.txt", "第一行\n".encode() + GBK, 10, 2),
])
def test_not_utf8_names_file_byte_offset_and_line(tmp_path, name, content, offset, line):
    path = tmp_path / name
    path.write_bytes(content)
    assert content[offset:offset + 1] == b"\xb4"
    with pytest.raises(DataError, match=rf"^{path}: not UTF-8 text: byte 0xb4 at byte offset {offset} \(line {line}\); "
                                        r"convert the file first"):
        load_conversations(str(path))


def test_csv_field_longer_than_csv_limit_is_a_record_not_a_traceback(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "output"])
        writer.writeheader()
        writer.writerows([{"instruction": "q", "output": "x" * 200_000}, {"instruction": "q2", "output": "y"}])
    convs = load_conversations(str(path))
    assert [len(c["messages"][1]["content"]) for c in convs] == [200_000, 1]

