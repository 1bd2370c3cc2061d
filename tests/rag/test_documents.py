"""Documents and chunks: field choice, ids and locations, folders, chunk windows, the UTF-8 check."""
from __future__ import annotations

import json

import pytest

from tunelab.errors import ConfigError, DataError
from tunelab.rag.chunking import chunk_spans, token_spans
from tunelab.rag.documents import expand_sources, read_documents


def test_records_field_template_auto_and_ids(tmp_path):
    f = tmp_path / "gsm.jsonl"
    f.write_text('{"question": "Q1?", "answer": "A1", "level": 2}\n\n{"question": "Q2?", "answer": "A2"}\n')
    auto = list(read_documents(f))
    assert [(d.doc_id, d.loc, d.text, d.item) for d in auto] == [("gsm.jsonl:1", ":1", "Q1?\nA1", True),
                                                                   ("gsm.jsonl:3", ":3", "Q2?\nA2", True)]
    assert auto[0].meta == {"level": 2} and auto[0].citation == "gsm.jsonl:1"  # unused short columns travel along
    assert [d.text for d in read_documents(f, field="answer")] == ["A1", "A2"]
    assert [d.text for d in read_documents(f, field="Q: {question} A: {answer}")] == ["Q: Q1? A: A1", "Q: Q2? A: A2"]
    with pytest.raises(DataError, match=r"gsm.jsonl:1: column 'solution' \(from --field\) is missing; columns: 'question'"):
        list(read_documents(f, field="solution"))
    with pytest.raises(DataError, match=r"column\(s\) \['hint'\] used in the --field template"):
        list(read_documents(f, field="{question} {hint}"))
    with pytest.raises(DataError, match=r"id column 'uid' is missing"):
        list(read_documents(f, id_field="uid"))


def test_csv_alpaca_blank_input_and_id_column(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("id,instruction,input,output\nx7,Add 2 and 3,,5\n")
    (doc,) = read_documents(f)
    assert (doc.doc_id, doc.loc, doc.text) == ("x7", "[0]", "Add 2 and 3\n5")  # blank input left out
    g = tmp_path / "b.json"
    g.write_text(json.dumps([{"foo": "bar"}]))
    with pytest.raises(DataError, match=r"b.json\[0\]: no known text columns; choose them with --field"):
        list(read_documents(g))


def test_text_files_and_folders(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.md").write_text("# Title\nbody\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("hello")
    (tmp_path / "d" / ".hidden.txt").write_text("secret")
    (tmp_path / "d" / "image.png").write_bytes(b"\x89PNG")
    files = expand_sources([str(tmp_path / "d"), str(tmp_path / "d" / "b.md")])
    assert [p.name for p in files] == ["b.md", "a.txt"]  # sorted, hidden and unsupported skipped, no repeats
    (doc,) = read_documents(files[0])
    assert (doc.doc_id, doc.loc, doc.text, doc.item) == ("b.md", ":1", "# Title\nbody\n", False)
    with pytest.raises(DataError, match=r"image.png: unsupported file type '.png'"):
        expand_sources([str(tmp_path / "d" / "image.png")])
    with pytest.raises(DataError, match="no such file or folder"):
        expand_sources([str(tmp_path / "missing.jsonl")])


def test_non_utf8_file_names_file_and_byte_offset(tmp_path):
    f = tmp_path / "gbk.txt"
    f.write_bytes("abc\n".encode() + "数学".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.txt: not UTF-8 text: byte 0xca at byte offset 4 \(line 2\)"):
        list(read_documents(f))
    j = tmp_path / "bad.jsonl"
    j.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: not UTF-8 text: byte 0xff at byte offset 25 \(line 2\)"):
        list(read_documents(j))


def test_fallback_chunks_are_windows_with_overlap():
    text = "one two three four five six seven"
    spans = chunk_spans(text, chunk_tokens=3, overlap=1)
    assert [text[a:b] for a, b in spans] == ["one two three", "three four five", "five six seven"]
    assert [text[a:b] for a, b in chunk_spans(text, 4, 0)] == ["one two three four", "five six seven"]
    assert chunk_spans("   ", 3, 1) == []
    # CJK characters count one token each; punctuation is a token
    zh = "三角形的内角和。"
    assert [zh[a:b] for a, b in token_spans(zh)] == list(zh)
    with pytest.raises(ConfigError, match="--overlap must be at least 0 and less than --chunk-tokens"):
        chunk_spans(text, 3, 3)


def test_tokenizer_chunks_follow_the_tokenizers_offsets(tiny_encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    text = "Distance equals speed multiplied by time, so the time is the distance divided by the speed."
    spans = chunk_spans(text, chunk_tokens=8, overlap=2, tokenizer=tok)
    chunks = [text[a:b] for a, b in spans]
    n_tokens = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert all(n <= 8 for n in n_tokens) and n_tokens[0] == 8
    assert chunks[0].startswith("Distance") and chunks[-1].endswith("speed.")
    # consecutive chunks share exactly `overlap` tokens: the next starts 6 tokens after the last one did
    offsets = [a for a, _ in token_spans(text, tok)]
    assert [a for a, _ in spans] == offsets[0:len(offsets):6][:len(spans)]
