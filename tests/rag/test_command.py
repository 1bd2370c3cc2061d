"""`tunelab rag ...` through its argv entry point: the printed results and one clear message per bad input."""
from __future__ import annotations

import json

from tunelab.rag.command import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_query_eval_info_remove(capsys, corpus, questions_file, tmp_path, tiny_encoder):
    kb = tmp_path / "kb"
    code, out, _ = run(capsys, "index", corpus, "--output", kb, "--encoder", tiny_encoder, "--chunk-tokens", "16")
    assert code == 0 and "2 file(s)" in out and "2 added, 0 re-indexed, 0 unchanged" in out and "32-dim" in out
    code, out, _ = run(capsys, "index", corpus, "--output", kb)  # same settings and encoder as the index's
    assert code == 0 and "0 added, 0 re-indexed, 2 unchanged" in out

    code, out, _ = run(capsys, "query", kb, "三角形的内角和", "-k", "2", "--mode", "bm25")
    assert code == 0 and "bm25 top 2 for: 三角形的内角和" in out and "qa.jsonl:12" in out and "bm25:1" in out
    code, out, _ = run(capsys, "query", kb, "三角形的内角和", "-k", "3", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["doc_id"] == "zh-triangle"
    assert rows[0]["source"] == "qa.jsonl:12" and set(rows[0]["ranks"]) <= {"bm25", "dense"}

    report = tmp_path / "report.json"
    code, out, _ = run(capsys, "eval", kb, questions_file, "-k", "5", "--output", report)
    assert code == 0 and out.startswith("| mode | recall@1 | recall@5 | mrr@5 | questions | excluded |")
    saved = json.loads(report.read_text())
    assert list(saved["report"]) == ["bm25", "dense", "hybrid"] and saved["report"]["bm25"]["questions"] == 10
    assert f"| bm25 | {saved['report']['bm25']['recall@1']:.3f} |" in out

    code, out, _ = run(capsys, "info", kb)
    assert code == 0 and "dense index: flat" in out and "notes.md" in out and "qa.jsonl" in out
    code, out, _ = run(capsys, "remove", kb, corpus / "notes.md")
    assert code == 0 and "removed" in out
    code, out, _ = run(capsys, "info", kb)
    assert "notes.md" not in out and f"{12:,} chunks" in out


def test_bad_inputs_give_one_message(capsys, corpus, tmp_path, tiny_encoder, other_tiny_encoder):
    code, _, err = run(capsys, "query", tmp_path / "missing", "question")
    assert code == 2 and err.startswith("tunelab rag: error: ") and "not a tunelab rag index (does not exist)" in err
    assert len(err.strip().splitlines()) == 1

    kb = tmp_path / "kb"
    assert run(capsys, "index", corpus, "--output", kb, "--encoder", tiny_encoder)[0] == 0
    code, _, err = run(capsys, "query", kb, "question", "--encoder", other_tiny_encoder)
    assert code == 2 and "was built with encoder" in err and "cannot be compared" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jsonl").write_text('{"question": "", "answer": ""}\n')
    (empty / "b.md").write_text("\n\n")
    code, _, err = run(capsys, "index", empty, "--output", tmp_path / "kb2")
    assert code == 2 and "nothing to index: 2 file(s) read" in err and "gave no text" in err
    assert not (tmp_path / "kb2").exists()  # no empty index left behind

    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    code, _, err = run(capsys, "index", latin, "--output", tmp_path / "kb3")
    assert code == 2 and "latin.txt: not UTF-8 text: byte 0xe9 at byte offset 3 (line 1)" in err
    assert not (tmp_path / "kb3").exists()

    code, _, err = run(capsys, "index", corpus, "--output", kb, "--chunk-tokens", "8", "--overlap", "8")
    assert code == 2 and "--overlap must be at least 0 and less than --chunk-tokens (8), got 8" in err
