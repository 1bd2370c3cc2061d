"""`tunelab eval --rag` on tiny-qwen3: each item is asked what `tunelab chat --rag` asks for the same
message (one RagContext, one renderer), the test item itself is never retrieved (a corpus that holds
it verbatim, and a record with its id), results.json says how retrieval went, evaluations with and
without retrieval never share predictions, and bad input is one message with exit status 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.evaluate.run import EvalSettings, fingerprint_settings
from tunelab.rag.command import main as rag_main
from tunelab.rag.context import RagContext
from tunelab.rag.leakage import Exclude

# test items in the MATH layout (problem, solution, answer, unique_id): items with ids of their own
TEST = [("t1", "Tom has 3 red apples and buys 4 green apples at the market. How many apples does Tom have now?",
         "Tom has 3 + 4 = 7 apples, so the answer is \\boxed{7}."),
        ("t2", "A train travels 60 km every hour for 2 hours. How far does the train travel?",
         "It travels 60 * 2 = 120 km, so the answer is \\boxed{120}.")]
# the knowledge base: worked examples, the first test item verbatim (question + solution) under another
# id, and an unrelated record that carries the first test item's id
KB = [("kb-pears", "Ann has 5 pears and buys 2 more pears. How many pears does Ann have?", "5 + 2 = 7\n#### 7"),
      ("kb-bus", "A bus travels 40 km every hour for 3 hours. How far does it go?", "40 * 3 = 120\n#### 120"),
      ("kb-copy", TEST[0][1], TEST[0][2]),
      ("t1", "Tom counts the red apples and the green apples he bought at the market.", "#### 0"),
      ("kb-pens", "A pen costs 2 dollars. How much do 4 pens cost?", "2 * 4 = 8\n#### 8")]
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture
def kb(tmp_path) -> str:
    src = tmp_path / "kb.jsonl"
    src.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in KB))
    assert rag_main(["index", str(src), "--field", "{question}\n{answer}", "--output", str(tmp_path / "index")]) == 0
    return str(tmp_path / "index")


@pytest.fixture
def test_file(tmp_path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"unique_id": i, "problem": q, "solution": s, "answer": s[-4:-2].strip("{")})
                            + "\n" for i, q, s in TEST))
    return path


def predictions(out: Path) -> dict[str, dict]:
    """Rows by item id (rows are written in batches grouped by prompt length, not in item order)."""
    return {row["id"]: row for row in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


def eval_args(test_file: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "tiny-qwen3", "--task", "math500", "--data", str(test_file), "--max-new-tokens", "2",
            "--output", str(out), *extra]


class Recording:
    """An engine that records the prompt chat renders and replies with nothing."""

    def __init__(self):
        self.prompts = []

    def stream(self, prompt, sampling):
        from tunelab.serve.engine import Event

        self.prompts.append(prompt)
        yield Event(delta="", done=True, text="")


def test_eval_prompt_is_the_chat_prompt_and_the_item_is_never_retrieved(kb, test_file, tmp_path):
    from tunelab.models.loaded import Loaded
    from tunelab.serve.chat import ChatSession
    from tunelab.serve.engine import Sampling

    out = tmp_path / "ev"
    assert main(eval_args(test_file, out, "--rag", kb, "--rag-k", "2")) == 0
    rows = predictions(out)
    loaded = Loaded("tiny-qwen3", load_weights=False)
    rag = RagContext(kb, k=2)
    engine = Recording()
    assert sorted(rows) == ["t1", "t2"]
    # t2 (nothing to exclude): chat's user message is the item's last user message, the question and the
    # math instruction; chat renders for it exactly the prompt eval asked
    ChatSession(loaded, engine, Sampling(max_new_tokens=2), rag=rag).reply(TEST[1][1] + INSTRUCTION)
    assert engine.prompts[-1] == loaded.tokenizer(rows["t2"]["prompt"], add_special_tokens=False)["input_ids"]
    # t1: chat (no leakage check: it has no test item) retrieves the item's copy and its id twin first;
    # eval asked what the same context gives once they are excluded
    t1 = [{"role": "user", "content": TEST[0][1] + INSTRUCTION}]
    assert [h.doc_id for h in rag.hits(t1[0]["content"])][:2] == ["kb-copy", "t1"]
    assert rows["t1"]["prompt"].count(TEST[0][1]) == 1  # the question once: its verbatim copy was not retrieved
    clean, _ = rag.apply(t1, Exclude(ids={"t1"}, texts=[TEST[0][1]]))
    assert rows["t1"]["prompt"] == loaded.renderer.prompt_text(clean)
    first = rows["t1"]["meta"]
    assert first["retrieved"].split("; ") == ["kb.jsonl:1", "kb.jsonl:5"]  # kb-pears, kb-pens
    assert "kb-copy (near-duplicate 1.00)" in first["leaks_excluded"] and "t1 (id)" in first["leaks_excluded"]
    assert rows["t2"]["meta"]["leaks_excluded"] == ""
    assert "[1] kb.jsonl:1\nAnn has 5 pears" in rows["t1"]["prompt"]  # a system message, numbered, cited
    res = json.loads((out / "results.json").read_text())
    r = res["retrieval"]
    assert {k: r[k] for k in ("index", "k", "mode", "placement", "encoder", "chunks")} == {
        "index": kb, "k": 2, "mode": "bm25", "placement": "system", "encoder": None, "chunks": 5}
    assert r["excluded"] == 2 and r["excluded_by_reason"] == {"near-duplicate": 1, "id": 1}
    assert r["items_with_excluded"] == 1 and r["passages"] == 4
    rag.close()


def test_with_and_without_retrieval_never_share_predictions(kb, test_file, tmp_path, capsys):
    plain, with_rag = EvalSettings(), EvalSettings(rag=kb, rag_k=2)
    assert not any(k.startswith("rag") for k in fingerprint_settings(plain))  # older fingerprints still match
    assert fingerprint_settings(with_rag)["rag"] == kb and fingerprint_settings(with_rag)["rag_k"] == 2
    out = tmp_path / "ev"
    assert main(eval_args(test_file, out)) == 0
    before = (out / "predictions.jsonl").read_text()
    assert main(eval_args(test_file, out, "--rag", kb)) == 2
    err = capsys.readouterr().err
    assert "holds another evaluation" in err and "settings.rag: None -> " in err
    assert (out / "predictions.jsonl").read_text() == before
    assert main(eval_args(test_file, out, "--rag", kb, "--overwrite")) == 0
    assert "Use the numbered passages" not in before and "Ann has 5 pears" in predictions(out)["t1"]["prompt"]
    assert main(eval_args(test_file, out, "--rag", kb, "--rag-k", "1")) == 2  # another k: refused too
    assert "rag_k: 3 -> 1" in capsys.readouterr().err


def test_bad_retrieval_input_is_one_message_before_the_model_loads(kb, test_file, tmp_path, capsys,
                                                                   tiny_encoder, other_tiny_encoder):
    def refused(*extra: str, model: str = "tiny-qwen3") -> str:
        args = eval_args(test_file, tmp_path / "ev", *extra)
        args[args.index("tiny-qwen3")] = model
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    # "no-such-model" would fail to load: these are refused before any model loads
    assert "nope: not a tunelab rag index (does not exist)" in refused("--rag", str(tmp_path / "nope"),
                                                                       model="no-such-model")
    dense = tmp_path / "dense"
    assert rag_main(["index", str(test_file.parent / "kb.jsonl"), "--encoder", tiny_encoder,
                     "--output", str(dense)]) == 0
    capsys.readouterr()  # the index's own output
    err = refused("--rag", str(dense), "--rag-encoder", other_tiny_encoder, model="no-such-model")
    assert "was built with encoder" in err and "other-bert" in err and "tiny-bert" in err
    assert "has no dense vectors" in refused("--rag", kb, "--rag-mode", "dense", model="no-such-model")
    assert "--rag-k must be a whole number >= 1, got 0" in refused("--rag", kb, "--rag-k", "0", model="no-such-model")
    assert "--rag with --n-shot" in refused("--rag", kb, "--n-shot", "2", model="no-such-model")
    assert "needs a rollout task asked through the chat template" in refused("--rag", kb, "--no-chat-template",
                                                                            model="no-such-model")
    # the index's own encoder, named: accepted (hybrid retrieval through the tiny encoder)
    assert main(eval_args(test_file, tmp_path / "ok", "--rag", str(dense), "--rag-encoder", tiny_encoder,
                          "--limit", "1")) == 0
    r = json.loads((tmp_path / "ok" / "results.json").read_text())["retrieval"]
    assert r["mode"] == "hybrid" and r["encoder"].endswith("tiny-bert") and r["excluded"] >= 1
