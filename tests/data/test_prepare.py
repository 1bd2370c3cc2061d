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
    assert sorted(x.name for x in out.iterdir()) == ["stats.json", "train", "validation"]
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
