"""`prepare` end to end on real data: saved ids equal the chat template for every example, labels
are exactly the replies, splits never share an example, drops are counted, the cache works, and
outputs appear only when complete."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import load_from_disk

from tests.conftest import REPO, shared_data
from tunelab.data.clean import normalise
from tunelab.data.conversation import DataError
from tunelab.data.prepare import export, prepare
from tunelab.data.prompts import apply_prompts
from tunelab.data.render import IGNORE_INDEX
from tunelab.data.sources import load_conversations


def label_runs(tok, ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def check_every_example(prepared, tok, source, **load_kw):
    """Map each saved example back to its conversation through the tokenizer's own template."""
    convs = [normalise(apply_prompts(c)) for c in load_conversations(source, **load_kw)]
    by_ids = {}
    for c in convs:
        ids = tuple(tok.apply_chat_template(c["messages"], tokenize=True, enable_thinking=False)["input_ids"])
        by_ids[ids] = c
    seen = {}
    for split in ("train", "validation"):
        ds = load_from_disk(str(prepared.path / split))
        assert ds.column_names == ["input_ids", "labels"]
        for ex in ds:
            conv = by_ids[tuple(ex["input_ids"])]  # KeyError = ids differ from the template
            replies = [m["content"] + "<|im_end|>" for m in conv["messages"] if m["role"] == "assistant"]
            assert label_runs(tok, ex["input_ids"], ex["labels"]) == replies
            assert seen.setdefault(tuple(ex["input_ids"]), split) == split  # never in both splits
    return seen


def test_math500_on_tiny_qwen3(qwen_tok):
    shared_data("math500_test.jsonl")
    p = prepare(source="math500", tokenizer=qwen_tok, limit=80, val_size=0.25, max_length=2048)
    seen = check_every_example(p, qwen_tok, "math500", limit=80)
    assert p.stats["examples_in"] == 80
    assert p.stats["examples_out"] == {"train": 60, "validation": 20}
    assert len(seen) == 80
    first = load_from_disk(str(p.path / "train"))[0]
    assert "Please reason step by step, and put your final answer within \\boxed{}." in qwen_tok.decode(first["input_ids"])
    assert 0 < p.stats["supervised_fraction"] < 1


def _sharegpt_file(tmp_path, n=30):
    rows = []
    for i in range(n):
        turns = [{"from": "system", "value": "你是一个乐于助人的助手。"}] if i % 3 == 0 else []
        for t in range(1 + i % 3):
            turns += [{"from": "human", "value": f"问题 {i}-{t}: {i} 加 {t} 等于几？ question {i * 7 + t}"},
                      {"from": "gpt", "value": f"{i} + {t} = {i + t}。The answer is {i + t}, case {i}-{t}."}]
        rows.append({"conversations": turns})
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["qwen_tok", "smol_tok"])
def test_multiturn_sharegpt(tmp_path, which, request):
    tok = request.getfixturevalue(which)
    path = _sharegpt_file(tmp_path)
    p = prepare(source=str(path), tokenizer=tok, val_size=0.2, dedup_mode="exact")
    seen = check_every_example(p, tok, str(path))
    assert len(seen) == 30
    multi = [ids for ids in seen if tok.decode(list(ids)).count("<|im_start|>assistant") == 3]
    assert len(multi) == 10


def test_drops_are_counted_and_cache_keys_on_content(tmp_path, qwen_tok):
    words = "apple river stone cloud music garden engine pencil winter mirror forest candle rocket planet".split()
    rng = __import__("random").Random(0)
    rows = [{"instruction": " ".join(rng.choice(words) for _ in range(12)) + "?",
             "output": " ".join(rng.choice(words) for _ in range(12))} for i in range(20)]
    rows += [rows[0], rows[1]]  # exact duplicates
    rows += [{"instruction": rows[2]["instruction"] + "!", "output": rows[2]["output"]}]  # a near duplicate
    rows += [{"instruction": "   ", "output": "x"}]  # empty after normalising
    rows += [{"instruction": "Write a long text.", "output": "long " * 400}]  # too long
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    p = prepare(source=str(path), tokenizer=qwen_tok, max_length=256, val_size=4, near_dup_threshold=0.8)
    assert p.cached is False
    assert p.stats["dropped"] == {"duplicate_exact": 2, "duplicate_near": 1, "empty": 1, "too_long": 1}
    assert p.stats["examples_out"] == {"train": 16, "validation": 4}
    again = prepare(source=str(path), tokenizer=qwen_tok, max_length=256, val_size=4, near_dup_threshold=0.8)
    assert again.cached and again.path == p.path and again.stats == p.stats
    truncated = prepare(source=str(path), tokenizer=qwen_tok, max_length=256, val_size=4, near_dup_threshold=0.8,
                        overlong="truncate")
    assert not truncated.cached and "too_long" not in truncated.stats["dropped"]
    assert truncated.stats["token_length"]["max"] == 256
    rows[5]["output"] = "changed"
    path.write_text(json.dumps(rows), encoding="utf-8")
    changed = prepare(source=str(path), tokenizer=qwen_tok, max_length=256, val_size=4, near_dup_threshold=0.8)
    assert not changed.cached and changed.path != p.path


def test_empty_after_filtering_names_the_filter(tmp_path, qwen_tok):
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": "word " * 300, "output": "ok"}) for _ in range(3)))
    with pytest.raises(DataError, match=r"no training example left.*'duplicate_exact': 2, 'too_long': 1.*max_length=64"):
        prepare(source=str(path), tokenizer=qwen_tok, max_length=64)


def test_export_refuses_to_overwrite(tmp_path, qwen_tok):
    path = _sharegpt_file(tmp_path, 6)
    p = prepare(source=str(path), tokenizer=qwen_tok)
    out = tmp_path / "out"
    export(p, out)
    assert sorted(x.name for x in out.iterdir()) == [".tunelab", "stats.json", "train", "validation"]  # + marker
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(p, out)
    export(p, out, overwrite=True)
    assert not [x for x in tmp_path.iterdir() if ".tmp-" in x.name or ".old-" in x.name]


def test_cli_prepare_and_help_without_torch(tmp_path):
    code = ("import sys\nfrom tunelab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "models" in out and "TORCH False" in out
    path = _sharegpt_file(tmp_path, 8)
    res = subprocess.run([sys.executable, "-m", "tunelab", "prepare", "configs/quickstart.yaml", f"data.name={path}",
                          "model.name=tiny-qwen3", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=str(REPO))
    assert res.returncode == 0, res.stderr
    assert "⟦" in res.stdout and (tmp_path / "o" / "config.yaml").is_file()
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["examples_in"] == 8
    res = subprocess.run([sys.executable, "-m", "tunelab", "prepare", str(REPO / "configs/quickstart.yaml"),
                          "data.nme=x"],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 2 and "unknown config key 'data.nme' (did you mean 'data.name'?)" in res.stderr


# -- data.normalize ------------------------------------------------------------------------------------------
RAW_CHAT = [  # contents as real files have them: CRLF, trailing spaces, zero-width, decomposed accents, PEP 8
    {"conversations": [{"from": "human", "value": "  Write a module:\r\n\r\n\r\n  caf\u0065\u0301 \u200b"},
                       {"from": "gpt", "value": "```python\nimport os\n\n\ndef f():  \n    return 1\n```\n"}]},
    {"conversations": [{"from": "system", "value": " Be brief. "}, {"from": "human", "value": "2+2?\n\n\n\n"},
                       {"from": "gpt", "value": "4  "}, {"from": "human", "value": "3+3?"},
                       {"from": "gpt", "value": "6\r\n"}]},
]


def _raw_file(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RAW_CHAT), encoding="utf-8")
    return path


def _messages(rec):
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in rec["conversations"]]


def _ids(tok, msgs):
    return list(tok.apply_chat_template(msgs, tokenize=True, enable_thinking=False)["input_ids"])


def _prep(path, tok, **kw):
    return prepare(source=str(path), tokenizer=tok, val_size=0, dedup_mode="none", **kw)


def test_normalize_none_gives_the_template_of_the_raw_conversation(tmp_path, qwen_tok):
    p = _prep(_raw_file(tmp_path), qwen_tok, normalize="none")
    assert sorted(p.load("train")["input_ids"]) == sorted(_ids(qwen_tok, _messages(r)) for r in RAW_CHAT)


def test_normalize_basic_keeps_whitespace_and_full_collapses_it(tmp_path, qwen_tok):
    path = _raw_file(tmp_path)
    basic = _prep(path, qwen_tok)  # the default
    texts = sorted(qwen_tok.decode(x) for x in basic.load("train")["input_ids"])
    assert "import os\n\n\ndef f():  \n    return 1\n```\n<|im_end|>" in texts[1]  # PEP 8 blank lines kept
    assert "user\n  Write a module:\n\n\n  caf\u00e9 <|im_end|>" in texts[1]  # CRLF -> LF, NFC, no \u200b
    assert "user\n2+2?\n\n\n\n<|im_end|>" in texts[0] and "6\n<|im_end|>" in texts[0]
    assert basic.stats["normalize"] == "basic"
    full = _prep(path, qwen_tok, normalize="full")
    texts = sorted(qwen_tok.decode(x) for x in full.load("train")["input_ids"])
    assert "import os\n\ndef f():\n    return 1\n```<|im_end|>" in texts[1]
    assert "user\nWrite a module:\n\n  caf\u00e9<|im_end|>" in texts[1]  # only line ends stripped
    # a different normalisation is a different data set: never the other one's cache
    keys = {basic.stats["data_fingerprint"], full.stats["data_fingerprint"],
            _prep(path, qwen_tok, normalize="none").stats["data_fingerprint"]}
    assert len(keys) == 3 and not full.cached


def test_normalize_none_with_a_reply_the_template_rewrites_names_the_record(tmp_path, qwen_tok):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "ok"}) + "\n"
                    + json.dumps({"instruction": "q2", "output": "\n\nanswer after a blank line"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: template 'tokenizer' changes the content of message 1 "
                                        r"\(assistant"):
        _prep(path, qwen_tok, normalize="none")
    p = _prep(path, qwen_tok)  # basic: the blank line before the reply is removed, the record renders
    assert p.stats["examples_out"]["train"] == 2


def test_fingerprint_is_the_cache_key_and_follows_content(tmp_path, qwen_tok):
    path = _raw_file(tmp_path)
    a = _prep(path, qwen_tok)
    assert a.stats["data_fingerprint"] == a.stats["cache_key"] == a.path.name and len(a.path.name) == 24
    assert _prep(path, qwen_tok).stats["data_fingerprint"] == a.stats["data_fingerprint"]
    assert _prep(path, qwen_tok, max_length=512).stats["data_fingerprint"] != a.stats["data_fingerprint"]
    assert _prep(path, qwen_tok, max_chars=100).stats["data_fingerprint"] != a.stats["data_fingerprint"]


# -- bad data: one message before any model loads ------------------------------------------------------------
def test_val_size_larger_than_the_data_says_how_many_examples(tmp_path, qwen_tok):
    path = _sharegpt_file(tmp_path, 6)
    with pytest.raises(DataError, match=rf"^{path}: data.val_size=6 leaves no training example: the data has 6 "
                                        r"examples \(6 records read, dropped: none\) and 6 would go to validation; "
                                        r"use a count below 6"):
        prepare(source=str(path), tokenizer=qwen_tok, val_size=6, dedup_mode="exact")
    with pytest.raises(DataError, match=r"data.val_size=50 leaves no training example: the data has 6 examples"):
        prepare(source=str(path), tokenizer=qwen_tok, val_size=50, dedup_mode="exact")
    p = prepare(source=str(path), tokenizer=qwen_tok, val_size=5, dedup_mode="exact")
    assert p.stats["examples_out"] == {"train": 1, "validation": 5}


def test_roles_out_of_order_and_leading_assistant_turn(tmp_path, qwen_tok):
    rows = [{"conversations": [{"from": "gpt", "value": "Hello! I am a bot."}, {"from": "human", "value": "1+1?"},
                               {"from": "gpt", "value": "2"}]},
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = prepare(source=str(path), tokenizer=qwen_tok, val_size=0)
    assert p.stats["turns_removed"] == {"leading_assistant": 1} and p.stats["examples_out"]["train"] == 2
    texts = [qwen_tok.decode(x) for x in p.load("train")["input_ids"]]
    assert not any("I am a bot" in t for t in texts)  # never trained as a reply to nothing
    rows.append({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                   {"from": "gpt", "value": "c"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"^{path}:3: roles out of order: message 1 is a second user turn in a row"):
        prepare(source=str(path), tokenizer=qwen_tok, val_size=0)


def test_records_over_max_chars_are_dropped_before_dedup_and_tokenizing(tmp_path, qwen_tok):
    rows = [{"instruction": f"question {i} about {WORDS_[i]}", "output": f"answer {i}"} for i in range(6)]
    rows += [{"instruction": "long", "output": "x" * 5000}] * 2  # also exact duplicates: counted as too long
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = prepare(source=str(path), tokenizer=qwen_tok, val_size=0, max_chars=1000)
    assert p.stats["dropped"] == {"too_long_chars": 2} and p.stats["examples_in"] == 8
    with pytest.raises(DataError, match=r"no example left to train on: 8 records read, dropped: too_long_chars 8 "
                                        r"\(data.max_chars=10: raise it to keep longer records\)"):
        prepare(source=str(path), tokenizer=qwen_tok, val_size=0, max_chars=10)


WORDS_ = "apple river stone cloud music garden".split()


def test_a_30_mb_record_costs_its_reading_only(tmp_path, qwen_tok):
    """Issue 13: one 30 MB record took 195 s and 16.9 GB before it was dropped. The bound here is generous
    (measured: about 0.4 s and 60 MB of Python allocations on a 2-core CPU)."""
    import time
    import tracemalloc

    rows = [{"instruction": f"问题 {i}：{i} 加 {i} 等于几？", "output": f"{i} + {i} = {2 * i}"} for i in range(20)]
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.write(json.dumps({"instruction": "写一篇长文", "output": "数学题目的解答过程，" * 1_000_000},
                           ensure_ascii=False) + "\n")
    assert path.stat().st_size > 30_000_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        p = prepare(source=str(path), tokenizer=qwen_tok, use_cache=False)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.stats["dropped"] == {"too_long_chars": 1} and sum(p.stats["examples_out"].values()) == 20
    assert seconds < 20 and peak < 1_000_000_000


# -- held-out conversations follow the same path -------------------------------------------------------------
def test_heldout_conversations_follow_normalize_and_max_chars(tmp_path):
    from tunelab import config as C
    from tunelab.data.prepare import heldout_conversations

    path = _raw_file(tmp_path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
                + "\n")
    base = [f"data.name={path}", "data.val_size=2", "data.dedup=none"]
    held = heldout_conversations(C.load(None, base))
    assert [[m["content"] for m in c["messages"]] for c in held] == [
        ["  Write a module:\n\n\n  caf\u00e9 ", "```python\nimport os\n\n\ndef f():  \n    return 1\n```\n"],
        ["hi", "hello"]]
    assert "where" not in held[0]
    full = heldout_conversations(C.load(None, [*base, "data.normalize=full"]))
    assert full[0]["messages"][0]["content"] == "Write a module:\n\n  caf\u00e9"
    with pytest.raises(DataError, match=r"data.val_size=2 leaves no training example: the data has 2 examples "
                                        r"\(3 records read, dropped: too_long_chars 1"):
        heldout_conversations(C.load(None, [*base, "data.max_chars=60"]))


def test_belle_school_math_heldout_has_gold_answers_and_the_answer_line_instruction(tmp_path):
    from tests.data.test_formats import BELLE_MATH
    from tunelab import config as C
    from tunelab.data.prepare import heldout_conversations
    from tunelab.data.prompts import ANSWER_LINE_INSTRUCTION

    path = tmp_path / "school_math.json"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in BELLE_MATH[:3]), encoding="utf-8")
    cfg = C.load(None, [f"data.name={path}", "data.format=belle_math", "data.val_size=2", "data.dedup=none"])
    held = heldout_conversations(cfg)
    assert len(held) == 2 and all(c["answer"] in {"8", "10", "小红"} for c in held)
    assert all(c["messages"][0]["content"].endswith("\n" + ANSWER_LINE_INSTRUCTION) for c in held)
    # basic: the reply starts at its first character (BELLE's outputs begin with a newline)
    assert {c["messages"][1]["content"] for c in held} <= {r["output"][1:] for r in BELLE_MATH[:3]}
