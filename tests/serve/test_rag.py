"""Retrieval-augmented chat, serve and eval: the passages retrieved for the question are rendered into
the prompt by the one renderer, so `chat --rag` and `serve --rag` answer exactly what a direct
computation on the augmented conversation gives (and name the sources), and `eval --rag` predicts for an
item exactly what `chat --rag` replies to the same message."""
from __future__ import annotations

import json

import pytest

from tests.serve.conftest import Server
from tests.serve.test_chat import chat, evaluated  # noqa: F401  (a fixture)
from tunelab.cli import main
from tunelab.rag.augment import augment
from tunelab.rag.command import main as rag_main
from tunelab.rag.context import RagContext


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    d = tmp_path_factory.mktemp("kb")
    (d / "facts.jsonl").write_text(
        '{"id": "pens", "text": "A pen costs 3 yuan and a notebook costs 5 yuan at the school shop."}\n'
        '{"id": "bus", "text": "The school bus leaves at 7:40 every morning from the north gate."}\n'
        '{"id": "apples", "text": "小明有5个苹果，吃了2个，还剩3个。"}\n')
    assert rag_main(["index", str(d / "facts.jsonl"), "--output", str(d / "index")]) == 0  # BM25, no model
    return str(d / "index")


def test_chat_with_rag_answers_as_the_augmented_conversation_and_cites(random_qwen, evaluated, index):
    question = "How much does a pen cost at the school shop?"
    r = chat(random_qwen, "--rag", index, "--rag-k", "2", "--max-new-tokens", "8", stdin=question + "\n")
    assert r.returncode == 0, r.stderr[-2000:]
    rag = RagContext(index, k=2)
    messages, hits = rag.apply([{"role": "user", "content": question}])
    assert hits[0].doc_id == "pens" and "A pen costs 3 yuan" in messages[0]["content"]
    assert r.stdout == evaluated(messages, max_new_tokens=8) + "\n"
    assert f"sources: [1] {hits[0].citation}" in r.stderr


def test_serve_with_rag_returns_the_sources(random_qwen, evaluated, index, tmp_path):
    import httpx

    server = Server(random_qwen, "--rag", index, "--rag-k", "1", "--rag-placement", "before_question",
                    log=tmp_path / "server.log")
    try:
        question = "When does the school bus leave?"
        body = {"model": random_qwen, "messages": [{"role": "user", "content": question}], "max_tokens": 8,
                "temperature": 0}
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
        assert [s["doc_id"] for s in reply["sources"]] == ["bus"] and reply["sources"][0]["n"] == 1
        messages, _ = RagContext(index, k=1, placement="before_question").apply(body["messages"])
        assert messages[0]["content"].endswith(question) and "7:40" in messages[0]["content"]
        assert reply["choices"][0]["message"]["content"] == evaluated(messages, max_new_tokens=8)
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=120) as s:
            first = next(line for line in s.iter_lines() if line.startswith("data: "))
        assert '"sources"' in first and '"bus"' in first
    finally:
        server.stop()


def test_a_missing_index_fails_before_the_model_loads(random_qwen, tmp_path):
    r = chat(random_qwen, "--rag", str(tmp_path / "nope"), stdin="hi\n")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_augment_is_what_the_context_applies(index):
    rag = RagContext(index, k=1)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "bus time?"}]
    out, hits = rag.apply(msgs)
    assert out == augment(msgs, hits, mode="system") and msgs[0]["content"] == "Be brief."  # input unchanged


def test_eval_with_rag_predicts_what_chat_with_rag_replies(random_qwen, index, tmp_path):
    # a task without the math instruction, so the item's message is one line of chat input
    question = "How much does a pen cost at the school shop?"
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": question, "answer": "3 yuan\n#### 3"}) + "\n")
    (tmp_path / "pens.yaml").write_text(f"source: {tmp_path / 'q.jsonl'}\nscorer: gsm8k\ninstruction: ''\n")
    out = tmp_path / "ev"
    assert main(["eval", "--model", random_qwen, "--task", str(tmp_path / "pens.yaml"), "--max-new-tokens", "8",
                 "--rag", index, "--rag-k", "2", "--output", str(out)]) == 0
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    r = chat(random_qwen, "--rag", index, "--rag-k", "2", "--max-new-tokens", "8", stdin=question + "\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert row["prediction"] and r.stdout == row["prediction"] + "\n"
    first, second = row["meta"]["retrieved"].split("; ")
    assert f"sources: [1] {first}; [2] {second}" in r.stderr and first == "facts.jsonl:1"
