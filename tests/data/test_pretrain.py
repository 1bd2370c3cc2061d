"""`stage: pt` never drops text: every document is tokenized whole, followed by the end-of-text token,
and cut into pieces of at most max_length tokens; the pieces hold exactly the documents' tokens (tokens
in == tokens trained on), and packed rows restart positions at every piece, so no token attends across
a document boundary."""
from __future__ import annotations

import json

import pytest

from tunelab.data.batching import collate_packed, pack_bins
from tunelab.data.prepare import prepare
from tunelab.data.render import IGNORE_INDEX
from tunelab.errors import DataError

WORDS = "river stone cloud music garden engine pencil winter mirror forest candle rocket planet".split()


def document(i: int, n_words: int) -> str:
    return f"Document {i}. " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n_words)) + "."


def expected_ids(tok, text):
    return list(tok(text, add_special_tokens=True)["input_ids"]) + [tok.eos_token_id]


def by_document(tok, pieces):
    """Pieces in saved order, re-joined and split after each end-of-text token."""
    flat = [t for p in pieces for t in p]
    docs, cur = [], []
    for t in flat:
        cur.append(t)
        if t == tok.eos_token_id:
            docs.append(cur)
            cur = []
    assert cur == []  # the last piece ends with a document's end-of-text token
    return docs


def test_long_documents_are_cut_into_pieces_not_truncated(tmp_path, qwen_tok):
    texts = [document(i, n) for i, n in enumerate([5, 300, 40, 900, 64])]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    p = prepare(source=str(path), tokenizer=qwen_tok, stage="pt", max_length=64, val_size=0, dedup_mode="none")
    pieces = p.load("train")["input_ids"]
    want = [expected_ids(qwen_tok, t) for t in texts]
    assert sorted(by_document(qwen_tok, pieces)) == sorted(want)  # every token of every document, in order
    assert p.stats["documents"] == 5
    assert p.stats["tokens_in"] == sum(len(w) for w in want) == p.stats["tokens"]  # tokens in == trained on
    assert p.stats["dropped"] == {}
    assert max(len(x) for x in pieces) == 64
    assert len(pieces) == sum(-(-len(w) // 64) for w in want)  # each document's last piece kept, however short
    assert p.stats["examples_out"] == {"train": len(pieces), "validation": 0}
    assert pieces == p.load("train")["labels"]  # every token supervised (the loss skips each piece's first)
    assert p.stats["supervised_tokens"] == p.stats["tokens"] - len(pieces)


def test_packed_rows_restart_positions_at_every_document(tmp_path, qwen_tok):
    texts = [document(i, n) for i, n in enumerate([3, 10, 90, 6, 25, 4])]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    p = prepare(source=str(path), tokenizer=qwen_tok, stage="pt", max_length=48, val_size=0, dedup_mode="none")
    ds = p.load("train")
    lengths = [len(x) for x in ds["input_ids"]]
    rows = pack_bins(lengths, 48, seed=0)
    assert any(len(r) > 1 for r in rows)  # some row holds pieces of several documents
    batch = collate_packed([[ds[i] for i in r] for r in rows], pad_id=qwen_tok.pad_token_id)
    for k, r in enumerate(rows):
        expected_pos = [pos for i in r for pos in range(lengths[i])]
        assert batch["position_ids"][k, :len(expected_pos)].tolist() == expected_pos
        starts = [sum(lengths[j] for j in r[:n]) for n in range(len(r))]
        assert all(batch["labels"][k, s].item() == IGNORE_INDEX for s in starts)  # nothing predicted across


def test_text_folder_is_a_pretraining_corpus(tmp_path, qwen_tok):
    docs = tmp_path / "notes"
    (docs / "deep").mkdir(parents=True)
    (docs / "a.md").write_text("# Notes\n\nFirst paragraph.\n\n\nSecond paragraph, after two blank lines.\n")
    (docs / "deep" / "b.txt").write_text(document(1, 200))
    (docs / "ignored.json").write_text('{"text": "not read"}')
    p = prepare(source=str(docs), tokenizer=qwen_tok, stage="pt", max_length=32, val_size=0)
    got = by_document(qwen_tok, p.load("train")["input_ids"])
    want = [expected_ids(qwen_tok, (docs / "a.md").read_text()), expected_ids(qwen_tok, document(1, 200))]
    assert sorted(got) == sorted(want)  # each file one document, blank lines kept (data.normalize=basic)
    assert p.stats["documents"] == 2 and p.stats["tokens_in"] == p.stats["tokens"]
    single = prepare(source=str(docs / "a.md"), tokenizer=qwen_tok, stage="pt", max_length=32, val_size=0)
    assert by_document(qwen_tok, single.load("train")["input_ids"]) == [want[0]]


def test_stage_and_data_must_agree(tmp_path, qwen_tok):
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "plain text"}) + "\n")
    with pytest.raises(DataError, match=rf"^{text}:1: stage 'sft' needs conversations but the data is raw text"):
        prepare(source=str(text), tokenizer=qwen_tok)
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(DataError, match=rf"^{chat}:1: stage 'pt' trains on raw text .* this record is a conversation"):
        prepare(source=str(chat), tokenizer=qwen_tok, stage="pt")
