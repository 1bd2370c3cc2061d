"""compare(): per-language characters and bytes per token equal a count by hand, and the files it writes."""
from __future__ import annotations

import json

import pytest

from tunelab.errors import OutputExistsError
from tunelab.tokenizer.compare import compare, language

EN, ZH, MIX = "The cat sat on the mat.", "我今天很高兴。", "我用Python写了3个程序。"


@pytest.fixture(scope="module")
def three_sentences(tmp_path_factory):
    f = tmp_path_factory.mktemp("data") / "three.jsonl"
    f.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (EN, ZH, MIX)), encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def bytes_only(tiny_corpus, tmp_path_factory):
    """256 bytes + 3 special tokens, no merges: one token per UTF-8 byte."""
    from tunelab.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "bytes"
    train_tokenizer([tiny_corpus], vocab_size=259, output=out)
    return out


def test_language_split():
    assert [language(t) for t in (EN, ZH, MIX)] == ["en", "zh", "mixed"]
    assert language("x = 3, y = 4, 求和") == "mixed"  # 2 of 11 non-space characters are Han: 18%
    assert language("The word 是 once in a long English sentence here") == "en"  # 1 of 40: under 10%
    assert language("  \n") == "en"


def test_numbers_equal_a_hand_count(three_sentences, bytes_only, qwen_tok, tmp_path):
    # Qwen3's tokens for the three sentences, by hand: 7 + 4 + 8
    pieces = [[qwen_tok.decode([i]) for i in qwen_tok.encode(t)] for t in (EN, ZH, MIX)]
    assert pieces == [["The", " cat", " sat", " on", " the", " mat", "."], ["我", "今天", "很高兴", "。"],
                      ["我", "用", "Python", "写了", "3", "个", "程序", "。"]]
    # characters 23, 7, 15; UTF-8 bytes 23, 7*3, 7*3 + 3 (。) + 7 ("Python3")
    assert [len(t) for t in (EN, ZH, MIX)] == [23, 7, 15]
    rows = compare([str(bytes_only), "tiny-qwen3"], [str(three_sentences)], output=tmp_path / "out", show=False)
    got = {(r["tokenizer"], r["language"]): (r["texts"], r["characters"], r["bytes"], r["tokens"],
                                             r["chars_per_token"], r["bytes_per_token"]) for r in rows}
    b = str(bytes_only)
    assert got == {
        ("tiny-qwen3", "zh"): (1, 7, 21, 4, 1.75, 5.25),
        ("tiny-qwen3", "en"): (1, 23, 23, 7, round(23 / 7, 4), round(23 / 7, 4)),
        ("tiny-qwen3", "mixed"): (1, 15, 31, 8, 1.875, 3.875),
        ("tiny-qwen3", "all"): (3, 45, 75, 19, round(45 / 19, 4), round(75 / 19, 4)),
        (b, "zh"): (1, 7, 21, 21, round(7 / 21, 4), 1.0),  # one token per byte
        (b, "en"): (1, 23, 23, 23, 1.0, 1.0),
        (b, "mixed"): (1, 15, 31, 31, round(15 / 31, 4), 1.0),
        (b, "all"): (3, 45, 75, 75, 0.6, 1.0),
    }
    assert [(r["language"], r["tokenizer"]) for r in rows][:2] == [("zh", b), ("zh", "tiny-qwen3")]
    assert {r["vocab"] for r in rows if r["tokenizer"] == b} == {259}

    out = tmp_path / "out"
    report = json.loads((out / "compare.json").read_text())
    assert report["rows"] == rows and report["data"] == [str(three_sentences)]
    assert "ratio of sums" in report["definitions"]["chars_per_token"]
    md = (out / "compare.md").read_text().splitlines()
    assert md[0] == "| language | tokenizer | vocab | texts | characters | tokens | chars/token | bytes/token |"
    assert "| zh | tiny-qwen3 | 151,669 | 1 | 7 | 4 | 1.75 | 5.25 |" in md
    assert len(md) == 2 + len(rows)
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    with pytest.raises(OutputExistsError, match="--overwrite"):
        compare(["tiny-qwen3"], [str(three_sentences)], output=out, show=False)
