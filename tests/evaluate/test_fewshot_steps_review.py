"""Few-shot rollouts (gsm8k_cot / minerva_math structure, seeded samples, chat turns), step similarity
computed by hand, the review CSV read back, seeds with mean and spread, and experiments that set
n-shot per task and per model with a report that says which."""
from __future__ import annotations

import csv
import json
import math

import pytest

from tests.conftest import shared_data
from tunelab.cli import main
from tunelab.errors import ConfigError, DataError
from tunelab.evaluate.fewshot import GSM8K_COT, MINERVA_MATH, chat_prompt, exemplars, plain_prompt
from tunelab.models.generate import cut_at_stop
from tunelab.evaluate.review import read_review
from tunelab.evaluate.run import EvalSettings
from tunelab.evaluate.scores import spread, within_spread
from tunelab.evaluate.steps import aggregate_steps, rouge_l, split_steps, step_similarity, tokens


# ---------------------------------------------------------------- few-shot prompts

def test_gsm8k_cot_and_minerva_structure():
    assert len(GSM8K_COT) == 8 and len(MINERVA_MATH) == 4
    assert GSM8K_COT[0][1].endswith("The answer is 6.")
    text, stops = plain_prompt("gsm8k_cot", exemplars("gsm8k_cot", 2), "How many apples?")
    q0, a0 = GSM8K_COT[0]
    assert text.startswith(f"Q: {q0}\nA: {a0}\n\nQ: ") and text.endswith("\n\nQ: How many apples?\nA:")
    assert stops == ["Q:"]
    text, stops = plain_prompt("minerva_math", exemplars("minerva_math", 1), "Find $x$.")
    assert text == f"Problem:\n{MINERVA_MATH[0][0]}\n\nSolution: {MINERVA_MATH[0][1]}\n\nProblem:\nFind $x$.\n\nSolution:"
    assert stops == ["Problem:"] and "Final Answer: The final answer is" in MINERVA_MATH[0][1]
    with pytest.raises(DataError, match="has 4 exemplars"):
        exemplars("minerva_math", 5)
    assert plain_prompt("", [("1+1=?", "2")], "2+2=?") == ("Question: 1+1=?\nAnswer: 2\n\nQuestion: 2+2=?\nAnswer:",
                                                           ["Question:"])
    assert plain_prompt("", [("一加一？", "2")], "二加二？")[0] == "问题：一加一？\n答案：2\n\n问题：二加二？\n答案："
    msgs = chat_prompt("gsm8k_cot", [("q1", "a1")], [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                       multiturn=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    folded = chat_prompt("gsm8k_cot", [("q1", "a1")], [{"role": "user", "content": "q"}], multiturn=False)
    assert folded == [{"role": "user", "content": "Q: q1\nA: a1\n\nq"}]
    assert cut_at_stop("It is 5. The answer is 5.\n\nQ: next", ["Q:"]) == "It is 5. The answer is 5."


def test_gsm8k_eight_shot_plain_rollouts_end_to_end(tmp_path):
    shared_data("gsm8k_test.jsonl")
    out = tmp_path / "g"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "gsm8k", "--n-shot", "8", "--no-chat-template",
                 "--limit", "2", "--max-new-tokens", "6", "--output", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["n_shot"], res["prompt_mode"]) == (8, "plain text")
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("Q: There are 15 trees") and row["prompt"].count("\nA: ") == 8
    assert row["prompt"].endswith("\nA:") and "Please reason step by step" not in row["prompt"]
    assert set(row["steps"]) >= {"recall", "precision", "order"} and res["steps"]["n"] == 2


def test_n_shot_needs_a_source_that_is_not_the_test_set(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-qwen3", "--task", "cmath", "--n-shot", "2", "--output", str(tmp_path / "c")]) == 2
    assert "--fewshot-data" in capsys.readouterr().err
    out = tmp_path / "a"  # a seeded sample of another source, as chat turns
    assert main(["eval", "--model", "tiny-qwen3", "--task", "arith_en", "--n-shot", "2", "--fewshot-data", "arith_en",
                 "--fewshot-as-multiturn", "--limit", "2", "--max-new-tokens", "3", "--output", str(out)]) == 0
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert row["prompt"].count("<|im_start|>assistant\n") == 3  # two shots + the generation prompt
    assert json.loads((out / "results.json").read_text())["n_shot"] == 2


# ---------------------------------------------------------------- step similarity

def test_steps_split_and_tokens():
    assert split_steps("a\n\nb\nc\n\n\nd") == ["a", "b\nc", "d"]
    assert split_steps("x = 1\ny = 2") == ["x = 1", "y = 2"]
    assert split_steps("She has 1.5 kg. Then 3 more! 所以是4。好") == ["She has 1.5 kg.", "Then 3 more!", "所以是4。", "好"]
    assert split_steps("48/2 = <<48/2=24>>24 clips\n#### 72") == ["48/2 = 24 clips"]
    assert tokens("Natalia sold 48/2=24 clips，共72个") == ["natalia", "sold", "48", "/", "2", "=", "24", "clips", "，",
                                                         "共", "72", "个"]


def test_step_similarity_by_hand():
    ref = "a b c d\n\ne f g h\n\ni j k l"
    # model: steps 2 and 1 of the reference, in the wrong order, plus an unrelated step
    pred = "e f g h\n\na b c x\n\nzzz"
    s = step_similarity(pred, ref)
    # sims: r1~m2: LCS 3 of 4/4 -> 0.75; r2~m1: 1.0; r3: nothing -> 0
    assert math.isclose(rouge_l(tokens("a b c d"), tokens("a b c x")), 0.75)
    assert (s["recall"], s["precision"], s["n_ref"], s["n_pred"]) == (round(2 / 3, 4), round(2 / 3, 4), 3, 3)
    assert s["order"] == 0.0  # the only pair (r1, r2) is matched to (m2, m1): reversed
    assert s["f1"] == round(2 / 3, 4) and s["mean_best"] == round((0.75 + 1.0 + 0) / 3, 4)
    assert step_similarity(ref, ref)["order"] == 1.0 and step_similarity(ref, ref)["recall"] == 1.0
    assert step_similarity("", ref)["recall"] == 0.0
    agg = aggregate_steps([s, step_similarity(ref, ref)])
    assert agg["n"] == 2 and agg["order"] == 0.5


# ---------------------------------------------------------------- review CSV both ways

def test_review_written_filled_in_and_read_back(tmp_path, capsys):
    out = tmp_path / "ev"
    review = tmp_path / "review.csv"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "3", "--max-new-tokens", "3",
                 "--output", str(out), "--export-review", str(review)]) == 0
    with review.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    scores = [["5", "4", "3"], ["3", "", "2"], ["4", "2", "1.5"]]
    for row, sc in zip(rows[1:], scores):
        row[4:7] = sc
    with review.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    assert main(["grade", "--review", str(review), "--eval", str(out), "--output", str(tmp_path / "r.json")]) == 0
    dims = json.loads((out / "results.json").read_text())["human_review"]["dimensions"]
    assert dims == {"knowledge_accuracy": {"mean": 4.0, "n": 3}, "logical_coherence": {"mean": 3.0, "n": 2},
                    "clarity": {"mean": round(6.5 / 3, 4), "n": 3}}
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == 3
    rows[2][5] = "9"
    with review.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataError, match=r"review.csv:3: logical_coherence = '9'"):
        read_review(review)


# ---------------------------------------------------------------- seeds

def test_spread_and_within_spread():
    s = spread([0.5, 0.6, 0.7])
    assert (s["mean"], s["std"]) == (0.6, 0.1)
    assert within_spread({"seeds": s}, {}, 0.05) and not within_spread({"seeds": s}, {}, 0.2)
    assert not within_spread({}, {}, 0.0)  # no seeds, nothing to compare with
    with pytest.raises(ConfigError, match="seeds"):
        EvalSettings(seeds=3)  # greedy: every seed would give the same output


def test_seeds_run_whole_passes(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "2", "--max-new-tokens", "3",
                 "--temperature", "1.0", "--seeds", "3", "--seed", "5", "--output", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"]["seeds"] == [5, 6, 7] and len(res["seeds"]["values"]) == 3
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted({r["sample"] for r in rows}) == [0, 1, 2] and len(rows) == 6
    assert "over seeds [5, 6, 7]" in capsys.readouterr().out


# ---------------------------------------------------------------- experiments and the report

def test_experiment_n_shot_per_task_and_model(tmp_path):
    from tunelab.experiment import spec

    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("""
base: {model: {name: tiny-qwen3}, data: {name: arith_en}}
variants: {lora: {}}
evaluation:
  tasks: [cn_middle_school, gsm8k]
  n_shot: 0
  models: {base: {n_shot: {cn_middle_school: 5, gsm8k: 8}, chat_template: false}}
""")
    exp = spec.load(exp_file)
    base, lora = exp.evaluation.settings_for("base"), exp.evaluation.settings_for("lora")
    assert (base.shots_for("gsm8k"), base.shots_for("cn_middle_school"), base.chat_template) == (8, 5, False)
    assert (lora.shots_for("gsm8k"), lora.chat_template) == (0, None)
    exp_file.write_text(exp_file.read_text().replace("models: {base:", "models: {nobody:"))
    with pytest.raises(ConfigError, match=r"no model labelled \['nobody'\]"):
        spec.load(exp_file)


def test_report_says_how_each_model_was_asked(tmp_path):
    from tunelab.experiment.report import build

    def result(label: str, acc: float, **extra) -> None:
        d = tmp_path / "eval" / label / "gsm8k"
        d.mkdir(parents=True)
        res = {"task": "gsm8k", "scorer": "gsm8k", "n": 10, "accuracy": acc, "ci95": [0.1, 0.9], "parseable_rate": 1.0,
               "generation": {}, **extra}
        (d / "results.json").write_text(json.dumps(res))

    result("base", 0.30, n_shot=8, prompt_mode="plain text", seeds={"seeds": [0, 1, 2], "values": [0.2, 0.3, 0.4],
                                                                       "mean": 0.3, "std": 0.1})
    result("lora", 0.35, n_shot=0, prompt_mode="chat", steps={"n": 10, "recall": 0.5, "precision": 0.4, "f1": 0.44,
                                                               "order": 0.9, "mean_best": 0.6},
           human_review={"rows": 10, "dimensions": {"knowledge_accuracy": {"mean": 4.0, "n": 10},
                                                    "logical_coherence": {"mean": 3.5, "n": 10},
                                                    "clarity": {"mean": None, "n": 0}}})
    md = build([tmp_path]).read_text()
    assert "| base | 8-shot, plain text |" in md and "| lora | 0-shot, chat |" in md
    assert "lora vs base on gsm8k: +5.0 points, within the seed spread" in md
    assert "| lora | gsm8k | 10 | 0.50 | 0.40 | 0.44 | 0.90 |" in md
    assert "| lora | gsm8k | 4.00 (n=10) | 3.50 (n=10) | - |" in md
    assert "| base | gsm8k | 3 | 30.0 | 10.0 | 20.0, 30.0, 40.0 |" in md
