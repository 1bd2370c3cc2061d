"""Preference pairs (stage: dpo): each reader on records laid out as LLaMA-Factory, TRL and UltraFeedback
publish them, the pair validator's errors, `prepare(stage="dpo")` against the tokenizers' own chat
templates, `collate_pairs`/`pair_lengths`, and the built-in `arith_pairs` set graded by the grader."""
from __future__ import annotations

import json

import pytest
import torch
from datasets import load_from_disk

from tests.data.test_formats import A, S, U
from tunelab.data.batching import collate_pairs, pair_lengths
from tunelab.data.clean import normalise
from tunelab.data.conversation import DataError, validate_pair
from tunelab.data.formats import detect, get_reader
from tunelab.data.prepare import PAIR_COLUMNS, prepare
from tunelab.data.render import IGNORE_INDEX, build_renderer
from tunelab.data.sources import load_conversations


def read(record, **kw):
    """Detect, convert and validate one record, as `iter_conversations` does."""
    fmt, columns = detect(record)
    ex = get_reader(fmt)(record, columns=kw.pop("columns", columns), where="f.jsonl:7", **kw)
    validate_pair(ex, "f.jsonl:7")
    return fmt, ex


# -- readers ----------------------------------------------------------------------------------

def test_llamafactory_sharegpt_pairwise():
    # as LLaMA-Factory's data/README.md documents the sharegpt preference layout
    rec = {"conversations": [{"from": "human", "value": "What is 2+3?"}, {"from": "gpt", "value": "5."},
                             {"from": "human", "value": "And times 4?"}],
           "chosen": {"from": "gpt", "value": "(2+3)×4 = 20."},
           "rejected": {"from": "gpt", "value": "2+3×4 = 14."}, "system": "Be exact."}
    assert read(rec) == ("pairs_sharegpt", {
        "messages": [S("Be exact."), U("What is 2+3?"), A("5."), U("And times 4?")],
        "chosen": "(2+3)×4 = 20.", "rejected": "2+3×4 = 14.", "answer": None, "meta": {}})
    # the same layout with OpenAI-style tags under `messages` (dataset_info.json maps the columns)
    rec = {"messages": [U("Name a prime.")], "chosen": A("7"), "rejected": A("9")}
    fmt, ex = read(rec)
    assert fmt == "pairs_sharegpt" and ex["messages"] == [U("Name a prime.")] and (ex["chosen"], ex["rejected"]) == ("7", "9")


def test_llamafactory_alpaca_pairwise_both_layouts():
    rec = {"instruction": "Translate to French:", "input": "good morning", "chosen": "Bonjour",
           "rejected": "Bonsoir", "history": [["Hi", "Hello!"]]}
    assert read(rec) == ("pairs_alpaca", {
        "messages": [U("Hi"), A("Hello!"), U("Translate to French:\n\ngood morning")],
        "chosen": "Bonjour", "rejected": "Bonsoir", "answer": None, "meta": {}})
    old = {"instruction": "Capital of France?", "input": "", "output": ["Paris.", "Lyon."]}  # [chosen, rejected]
    assert read(old, source="demo") == ("pairs_alpaca", {
        "messages": [U("Capital of France?")], "chosen": "Paris.", "rejected": "Lyon.", "answer": None,
        "meta": {"source": "demo"}})
    with pytest.raises(DataError, match=r"f\.jsonl:7: column 'output' .*\[chosen, rejected\]"):
        read({"instruction": "q", "output": ["only one"]})


def test_trl_standard_and_conversational_explicit_prompt():
    fmt, ex = read({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})
    assert fmt == "pairs" and ex["messages"] == [U("The sky is")] and (ex["chosen"], ex["rejected"]) == (" blue.", " green.")
    rec = {"prompt": [S("You answer in one word."), U("What color is the sky?")],
           "chosen": [A("Blue.")], "rejected": [A("Green.")], "answer": 42, "meta": {"id": "x1"}}
    assert read(rec) == ("pairs", {"messages": [S("You answer in one word."), U("What color is the sky?")],
                                   "chosen": "Blue.", "rejected": "Green.", "answer": "42", "meta": {"id": "x1"}})


def test_trl_implicit_prompt_takes_the_shared_prefix():
    rec = {"chosen": [U("Hi"), A("Hello!"), U("What color is the sky?"), A("It is blue.")],
           "rejected": [U("Hi"), A("Hello!"), U("What color is the sky?"), A("It is green.")]}
    fmt, ex = read(rec)
    assert fmt == "pairs"
    assert ex["messages"] == [U("Hi"), A("Hello!"), U("What color is the sky?")]
    assert (ex["chosen"], ex["rejected"]) == ("It is blue.", "It is green.")
    diverging = {"chosen": [U("Q1"), A("a")], "rejected": [U("Q2"), A("b")]}
    with pytest.raises(DataError, match=r"f\.jsonl:7: .*first differ at message 0"):
        read(diverging)
    with pytest.raises(DataError, match=r"f\.jsonl:7: no prompt: give column 'prompt'"):
        read({"chosen": "The sky is blue.", "rejected": "The sky is green."})  # TRL's text-only implicit layout


def test_ultrafeedback_binarized_record():
    # HuggingFaceH4/ultrafeedback_binarized: prompt text, chosen/rejected whole conversations, a `messages` copy
    q = "Which is larger, 9.11 or 9.9?"
    rec = {"prompt": q, "prompt_id": "ab12", "chosen": [U(q), A("9.9 is larger.")],
           "rejected": [U(q), A("9.11 is larger.")], "messages": [U(q), A("9.9 is larger.")],
           "score_chosen": 8.0, "score_rejected": 3.0}
    assert read(rec) == ("pairs", {"messages": [U(q)], "chosen": "9.9 is larger.", "rejected": "9.11 is larger.",
                                   "answer": None, "meta": {}})


def test_pairs_column_mapping():
    rec = {"question": "2+2?", "good": "4", "bad": "5"}
    ex = get_reader("pairs")(rec, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert (ex["messages"], ex["chosen"], ex["rejected"]) == ([U("2+2?")], "4", "5")
    with pytest.raises(DataError, match=r"unknown field\(s\) \['good'\]"):
        get_reader("pairs")(rec, columns={"good": "x"})


# -- the validator, through files: each error names file:line and the key -------------------------

BAD = [
    ({"prompt": "q", "chosen": "a"}, r"column 'rejected' missing"),
    ({"prompt": "q", "rejected": "a"}, r"column 'chosen' missing"),
    ({"prompt": "q", "chosen": " \n ", "rejected": "b"}, r"the 'chosen' reply is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, r"the 'rejected' reply is empty"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, r"'chosen' and 'rejected' are the same reply"),
    ({"prompt": [U("q"), A("a")], "chosen": "x", "rejected": "y"}, r"prompt must end with a user turn"),
    ({"prompt": [U("q"), U("q again")], "chosen": "x", "rejected": "y"}, r"prompt: roles out of order: message 1"),
    ({"prompt": [U("q"), S("late")], "chosen": "x", "rejected": "y"}, r"system message may only come first"),
]


@pytest.mark.parametrize("record,message", BAD)
def test_bad_pairs_name_the_record(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    good = {"prompt": "fine", "chosen": "yes", "rejected": "no"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: .*{message}"):
        load_conversations(str(path))


def test_validate_pair_direct():
    with pytest.raises(DataError, match=r"here: a preference pair needs a 'rejected' reply"):
        validate_pair({"messages": [U("q")], "chosen": "a"}, "here")
    with pytest.raises(DataError, match=r"'chosen' must be the reply's text, got list"):
        validate_pair({"messages": [U("q")], "chosen": [A("a")], "rejected": "b"}, "here")


# -- prepare(stage="dpo") ---------------------------------------------------------------------------

def _pair_file(tmp_path, n=24):
    rows = []
    for i in range(n):
        prompt = [{"role": "system", "content": "You are careful."}] if i % 3 == 0 else []
        if i % 2:
            prompt += [U(f"Start case {i}."), A(f"Ready for case {i}.")]
        prompt.append(U(f"Case {i}: what is {i} times {i + 3}? Reason briefly."))
        rows.append({"prompt": prompt, "chosen": [A(f"{i} × {i + 3} = {i * (i + 3)}. The answer is {i * (i + 3)}.")],
                     "rejected": [A(f"{i} + {i + 3} = {2 * i + 3}, so it is {2 * i + 3}.")]})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _supervised_text(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("which", ["qwen_tok", "smol_tok"])
def test_prepare_dpo_matches_the_chat_template(tmp_path, which, request):
    tok = request.getfixturevalue(which)
    path = _pair_file(tmp_path)
    # data.supervise=all_turns must not matter: a side supervises only its own reply
    p = prepare(source=str(path), tokenizer=tok, stage="dpo", val_size=0.25, dedup_mode="exact",
                supervise="all_turns")
    assert p.stats["stage"] == "dpo" and p.stats["supervise"] == "last_turn"
    assert p.stats["examples_out"] == {"train": 18, "validation": 6}
    renderer = build_renderer(tok)
    pairs = {}
    for ex in load_conversations(str(path)):
        ex = normalise(ex)
        ids = tuple(tok.apply_chat_template(ex["messages"] + [A(ex["chosen"])], tokenize=True,
                                            enable_thinking=False)["input_ids"])
        pairs[ids] = ex
    tokens = supervised = 0
    longest = []
    for split in ("train", "validation"):
        ds = load_from_disk(str(p.path / split))
        assert tuple(ds.column_names) == PAIR_COLUMNS
        for row in ds:
            ex = pairs.pop(tuple(row["chosen_input_ids"]))  # KeyError: chosen ids differ from the template
            rejected = tok.apply_chat_template(ex["messages"] + [A(ex["rejected"])], tokenize=True,
                                               enable_thinking=False)["input_ids"]
            assert row["rejected_input_ids"] == list(rejected)
            prompt = renderer.render_prompt(ex["messages"])
            assert prompt == list(tok.apply_chat_template(ex["messages"], tokenize=True, add_generation_prompt=True,
                                                          enable_thinking=False)["input_ids"])
            for side in ("chosen", "rejected"):
                ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
                start = next(k for k, lab in enumerate(labels) if lab != IGNORE_INDEX)
                assert ids[:start] == prompt  # the prompt is identical on both sides and unsupervised
                assert _supervised_text(tok, ids, labels) == ex[side] + "<|im_end|>"  # only this reply
                tokens += len(ids)
                supervised += sum(lab != IGNORE_INDEX for lab in labels[1:])
            if which == "qwen_tok":  # the empty thinking block is the prompt's, as at inference
                assert tok.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
            longest.append(max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"])))
    assert not pairs  # every pair was saved once
    assert p.stats["tokens"] == tokens and p.stats["supervised_tokens"] == supervised
    assert p.stats["supervised_fraction"] == round(supervised / tokens, 4)
    assert p.stats["token_length"]["max"] == max(longest) and p.stats["token_length"]["min"] == min(longest)
    assert pair_lengths(p.load("train")) == [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"]))
                                             for r in p.load("train")]
    # data.supervise is not in the key for pairs: the same preparation, from the cache
    again = prepare(source=str(path), tokenizer=tok, stage="dpo", val_size=0.25, dedup_mode="exact")
    assert again.cached and again.path == p.path


def test_prepare_dpo_drops_truncates_and_keys(tmp_path, qwen_tok):
    rows = [{"prompt": f"Question {i}: name a colour and a number, {i}.", "chosen": f"Red, {i}.",
             "rejected": f"Blue, {i + 1}."} for i in range(12)]
    rows += [rows[0], rows[1]]  # exact duplicates (prompt and both replies)
    rows += [{**rows[2], "rejected": "Green, 99."}]  # same prompt and chosen, another rejected: kept
    rows += [{"prompt": "Say yes.", "chosen": "Yes", "rejected": "\tYes"}]  # equal once normalised
    rows += [{"prompt": "Say no.", "chosen": "No", "rejected": "\u200b"}]  # only a zero-width space: empty
    rows += [{"prompt": "Write.", "chosen": "short", "rejected": "long " * 300}]  # one side too long
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(tokenizer=qwen_tok, stage="dpo", max_length=96, val_size=3, dedup_mode="exact")
    p = prepare(source=str(path), **kw)
    assert p.stats["examples_in"] == 18
    assert p.stats["dropped"] == {"duplicate_exact": 2, "identical_replies": 1, "empty": 1, "too_long": 1}
    assert p.stats["examples_out"] == {"train": 10, "validation": 3}
    cut = prepare(source=str(path), overlong="truncate", **kw)
    assert "too_long" not in cut.stats["dropped"] and cut.stats["token_length"]["max"] == 96
    long_row = next(r for split in ("train", "validation") for r in cut.load(split) if len(r["rejected_input_ids"]) == 96)
    assert len(long_row["rejected_labels"]) == 96 and len(long_row["chosen_input_ids"]) < 96  # short side uncut
    # the key covers both replies, and the stage: changing only a rejected reply re-prepares
    rows[5]["rejected"] = "Purple, 7."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed = prepare(source=str(path), **kw)
    assert not changed.cached and changed.path != p.path


def test_stage_and_data_must_agree(tmp_path, qwen_tok):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    with pytest.raises(DataError, match=rf"{sft}:1: stage 'dpo' trains on preference pairs .*a conversation without"):
        prepare(source=str(sft), tokenizer=qwen_tok, stage="dpo")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}) + "\n")
    with pytest.raises(DataError, match=rf"{pairs}:1: this record is a preference pair.*use stage=dpo"):
        prepare(source=str(pairs), tokenizer=qwen_tok, stage="sft")


def test_sft_and_dpo_never_share_a_cache_entry(tmp_path, qwen_tok, monkeypatch):
    """Same records, same settings, two stages: the stage is in the key (the stage check is bypassed
    here only to feed both stages the same data)."""
    import tunelab.data.prepare as P

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}) + "\n" for i in range(6)))
    sft = prepare(source=str(path), tokenizer=qwen_tok, val_size=0)
    real = P.read_examples

    def as_pairs(*a, **kw):
        examples, n_in, drops, fixes = real(*a, **{**kw, "stage": "sft"})
        return [{**e, "messages": e["messages"][:-1], "chosen": e["messages"][-1]["content"], "rejected": "No."}
                for e in examples], n_in, drops, fixes

    monkeypatch.setattr(P, "read_examples", as_pairs)
    dpo = prepare(source=str(path), tokenizer=qwen_tok, stage="dpo", val_size=0)
    assert dpo.stats["data_fingerprint"] != sft.stats["data_fingerprint"] and dpo.path != sft.path
    assert tuple(dpo.load("validation").column_names) == PAIR_COLUMNS  # an empty split has the pair columns


# -- batches -----------------------------------------------------------------------------------------

def test_collate_pairs_puts_chosen_rows_first_and_pads_right():
    examples = [{"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3],
                 "rejected_input_ids": [1, 2, 3, 4, 5], "rejected_labels": [-100, 2, 3, 4, 5]},
                {"chosen_input_ids": [7, 8], "chosen_labels": [-100, 8],
                 "rejected_input_ids": [7, 9, 9], "rejected_labels": [-100, 9, 9]}]
    b = collate_pairs(examples, pad_id=0)
    assert {k: tuple(v.shape) for k, v in b.items()} == {"input_ids": (4, 5), "labels": (4, 5), "attention_mask": (4, 5)}
    assert b["input_ids"].tolist() == [[1, 2, 3, 0, 0], [7, 8, 0, 0, 0], [1, 2, 3, 4, 5], [7, 9, 9, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, 8, -100, -100, -100],
                                    [-100, 2, 3, 4, 5], [-100, 9, 9, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["input_ids"].dtype == torch.long

    from datasets import Dataset

    assert pair_lengths(Dataset.from_list(examples)) == [5, 3]
    assert pair_lengths(Dataset.from_list(examples).select([])) == []


# -- the built-in arith_pairs set ------------------------------------------------------------------

def test_builtin_arith_pairs_are_graded_as_labelled(qwen_tok):
    from tunelab.data.sources import BUILTIN_DATA, PACKAGE_DATA, resolve
    from tunelab.data.grading import grade
    from tunelab.evaluate.tasks import TASKS

    kind, path, fmt, _ = resolve("arith_pairs")
    assert kind == "file" and fmt == "pairs" and path == str(PACKAGE_DATA / BUILTIN_DATA["arith_pairs"][0])
    meta = json.loads((PACKAGE_DATA / (BUILTIN_DATA["arith_pairs"][0] + ".meta.json")).read_text())
    assert meta["model"] == "smollm2-135m-instruct" and meta["task"] == "arith_en" and meta["seed"] == 0
    assert meta["generation"]["temperature"] == 0.0 and meta["environment"]["commit"]
    c = meta["counts"]
    assert c["problems"] == meta["n"] == c["in_evaluation"] + c["asked"] and c["asked"] == c["right"] + c["wrong"]
    pairs = load_conversations("arith_pairs")
    assert len(pairs) == c["kept"] >= 90
    assert sum(not ex["meta"]["finished"] for ex in pairs) == c["kept_unfinished"]
    for ex in pairs:
        assert grade(ex["chosen"], ex["answer"]).correct, ex["meta"]["id"]
        assert not grade(ex["rejected"], ex["answer"]).correct, ex["meta"]["id"]
        assert ex["meta"]["id"].startswith("arith-en-0-")  # the training seed
    # no evaluation question (arith_en, seed 1234) is in the pairs
    eval_questions = {it.messages[-1]["content"] for it in TASKS["arith_en"].items()}
    assert not eval_questions & {ex["messages"][-1]["content"] for ex in pairs}
    p = prepare(source="arith_pairs", tokenizer=qwen_tok, stage="dpo", max_length=512)
    assert sum(p.stats["examples_out"].values()) + sum(p.stats["dropped"].values()) == len(pairs)


def test_data_pairs_command_writes_pairs_and_provenance(tmp_path, capsys):
    """`tunelab data pairs` end to end on the tiny random model: whatever it answers, every counted
    problem is accounted for, a kept pair's rejected reply is the model's and grades wrong."""
    from tunelab.cli import main
    from tunelab.data.grading import grade

    out = tmp_path / "p.jsonl"
    assert main(["data", "pairs", "--model", "tiny-qwen3", "--n", "6", "--max-new-tokens", "6", "--batch-size", "3",
                 "--output", str(out)]) == 0
    meta = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    c = meta["counts"]
    assert (meta["task"], meta["seed"], meta["n"], meta["generation"]["max_new_tokens"]) == ("arith_en", 0, 6, 6)
    assert c["problems"] == 6 and c["asked"] == 6 - c["in_evaluation"] == c["right"] + c["wrong"]
    assert c["wrong"] == c["kept"] + sum(v for k, v in c.items() if k.startswith("skipped_"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == c["kept"]
    for r in rows:
        assert not grade(r["rejected"][0]["content"], r["answer"]).correct
        assert r["meta"]["finished"] == (r["meta"]["reply_tokens"] < 6)
    assert c["kept_unfinished"] == sum(not r["meta"]["finished"] for r in rows)
    # the replies were kept as they came: a rerun asks nothing again and writes the same pairs
    cache = [json.loads(line) for line in (tmp_path / "p.jsonl.replies.jsonl").read_text().splitlines()]
    assert cache[0]["header"]["generation"]["max_new_tokens"] == 6 and len(cache) == 7
    first = out.read_text()
    assert main(["data", "pairs", "--model", "tiny-qwen3", "--n", "6", "--max-new-tokens", "6", "--batch-size", "3",
                 "--output", str(out)]) == 0
    assert out.read_text() == first and len((tmp_path / "p.jsonl.replies.jsonl").read_text().splitlines()) == 7
    capsys.readouterr()
    assert main(["data", "pairs", "--model", "tiny-qwen3", "--n", "6", "--max-new-tokens", "7", "--output", str(out)]) == 2
    assert "p.jsonl.replies.jsonl holds replies made with other settings" in capsys.readouterr().err
