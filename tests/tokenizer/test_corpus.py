"""Corpus reading: text files give their exact contents in paragraphs, folders their text files, data
sources the message contents tunelab trains on; bad input is one DataError naming the file."""
from __future__ import annotations

import json
from itertools import islice

import pytest

from tests.conftest import shared_data
from tunelab.errors import DataError
from tunelab.tokenizer import corpus
from tunelab.tokenizer.corpus import iter_texts


def test_text_file_paragraphs_join_to_the_exact_file(tmp_path):
    text = "第一段，第一行\nsecond line\n\n\nnew paragraph  \r\nwith CRLF\r\n\r\n  last, no newline"
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # a BOM is not text
    pieces = list(iter_texts([f]))
    assert "".join(t for _, t in pieces) == text
    assert [t for _, t in pieces] == ["第一段，第一行\nsecond line\n\n\n", "new paragraph  \r\nwith CRLF\r\n\r\n",
                                      "  last, no newline"]
    assert [w for w, _ in pieces] == [f"{f}:1", f"{f}:5", f"{f}:8"]


def test_long_paragraph_is_cut_at_line_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 10)
    f = tmp_path / "a.md"
    f.write_text("abcdefgh\nijklmnop\nqr\n")
    assert [t for _, t in iter_texts([f])] == ["abcdefgh\nijklmnop\n", "qr\n"]


def test_folder_reads_text_files_sorted_and_recursively(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.md").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / "skip.json").write_text('{"text": "not read"}')
    assert [t for _, t in iter_texts([tmp_path])] == ["one", "two"]


def test_folder_without_text_files(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(DataError, match=f"folder '{tmp_path}' has no .txt or .md files"):
        list(iter_texts([str(tmp_path)]))


def test_non_utf8_names_file_byte_offset_and_line(tmp_path):
    f = tmp_path / "gbk.txt"
    f.write_bytes("ok line\n中文".encode("utf-8") + "\n第三行".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.txt: not UTF-8 text: byte 0xb5 at byte offset 15 \(line 3\)"):
        list(iter_texts([f]))


def test_non_utf8_data_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "' + "坏".encode("gbk") + b'"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: not UTF-8 text: byte 0xbb at byte offset 27 \(line 2\)"):
        list(iter_texts([f]))


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_corpus_without_text_is_one_error_naming_it(tmp_path, content):
    (tmp_path / "ok.txt").write_text("ok")
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(DataError, match=f"corpus '{f}' has no text: its contents are empty"):
        list(iter_texts([tmp_path / "ok.txt", f]))


def test_data_source_gives_converted_message_contents():
    texts = list(islice(iter_texts([str(shared_data("gsm8k_train.jsonl"))]), 2))
    first = json.loads(shared_data("gsm8k_train.jsonl").read_text().splitlines()[0])
    assert texts[0][1] == first["question"]
    # the reply as tunelab trains on it: calculator annotations gone, final answer boxed
    assert texts[1][1].startswith("Natalia sold 48/2 = 24 clips in May.") and texts[1][1].endswith("\\boxed{72}.")
    assert texts[1][0].endswith("gsm8k_train.jsonl:1 message 1")


def test_builtin_name_and_text_field(tmp_path):
    zh = json.loads(shared_data("alpaca_zh_demo.json").read_text())
    outputs = [t for _, t in islice(iter_texts(["alpaca_zh_demo"], text_field="output"), 3)]
    assert outputs == [r["output"] for r in zh[:3]]
    f = tmp_path / "d.csv"
    f.write_text("title,body\na,hello\nb,\n")
    assert [t for _, t in iter_texts([f], text_field="body")] == ["hello"]


def test_text_field_missing(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: no field 'text' \(--text-field\); the record has \['body'\]"):
        list(iter_texts([f], text_field="text"))
    with pytest.raises(DataError, match=f"corpus '{f}' has no text: field 'body' of its records is empty"):
        f.write_text('{"body": ""}\n{"body": null}\n')
        list(iter_texts([f], text_field="body"))


def test_unsupported_file_type(tmp_path):
    f = tmp_path / "notes.rst"
    f.write_text("text")
    with pytest.raises(DataError, match=r"notes.rst: unsupported file type '.rst'; supported: data .json, .jsonl, "
                                        r".csv, .tsv, .parquet; text .txt, .md"):
        list(iter_texts([f]))


def test_is_a_stream(tmp_path):
    """Pieces come out before the rest is read: a bad second file fails only after the first yielded."""
    (tmp_path / "a.txt").write_text("one")
    it = iter_texts([tmp_path / "a.txt", tmp_path / "missing.jsonl"])
    assert next(it)[1] == "one"
    with pytest.raises(DataError, match="missing.jsonl"):
        next(it)


def test_one_reader_with_prepare(tmp_path):
    """The corpus reads files and records through tunelab.data.sources, as `tunelab prepare` does: the same
    text, the same conversion; only the validation of training conversations is left out (a corpus of
    questions alone is still text)."""
    from tunelab.data.sources import iter_records

    (tmp_path / "a.md").write_text("one\r\n\r\ntwo\n")
    assert "".join(t for _, t in iter_texts([tmp_path])) == iter_records(str(tmp_path)).__next__()[1]["text"]
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}))
    assert list(iter_texts([f])) == [(f"{f}:1 message 0", "a"), (f"{f}:1 message 1", "b")]
