"""Log-likelihood multiple choice: lm-eval's context/continuation split, log-likelihoods equal to a
direct forward pass (with and without a shared KV prefix), the MMLU / C-Eval / CMMLU readers on files
in their published layouts, the papers' prompts, acc / acc_norm, and `tunelab eval` end to end."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import shared_data
from tunelab.cli import main
from tunelab.errors import DataError
from tunelab.evaluate.benchmarks import (FORMATS, ChoiceItem, chat_messages, context, read_benchmark,
                                         read_cn_middle_school, split_options, subject_info)
from tunelab.evaluate.loglik import encode_pair, loglikelihoods
from tunelab.evaluate.scorers.choice_ll import SCORER, predictions


def direct(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """The plain computation: one forward over context + continuation, full log-softmax."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits.float(), -1)[0]
    steps = [lp[len(ctx) - 1 + i] for i in range(len(cont))]
    return sum(float(s[t]) for s, t in zip(steps, cont)), all(int(s.argmax()) == t for s, t in zip(steps, cont))


# ---------------------------------------------------------------- tokenization as lm-eval does it

def test_encode_pair_moves_trailing_space_and_splits_the_whole_text(qwen_tok, smol_tok):
    for tok in (qwen_tok, smol_tok):
        ctx, cont = encode_pair(tok, "Question?\nAnswer: ", "A")
        assert ctx == tok("Question?\nAnswer:")["input_ids"]  # the space went to the continuation
        assert ctx + cont == tok("Question?\nAnswer: A")["input_ids"]
        assert tok.decode(cont) == " A"
        # no space in the context: the continuation is cut from the whole text's tokens
        ctx, cont = encode_pair(tok, "答案：", "A")
        whole = tok("答案：A")["input_ids"]
        assert ctx == tok("答案：")["input_ids"] and cont == whole[len(ctx):]


# ---------------------------------------------------------------- the scoring engine

@pytest.fixture(scope="module")
def requests(qwen_tok):
    header = "The following are multiple choice questions (with answers) about arithmetic.\n\n" + "".join(
        f"What is {i} + {i}?\nA. {2 * i}\nB. {i}\nC. 7\nD. 9\nAnswer: A\n\n" for i in range(4))
    reqs = []
    for q in range(5):
        ctx = header + f"What is {q} * 3?\nA. {3 * q}\nB. {q}\nC. 1\nD. 2\nAnswer:"
        reqs += [encode_pair(qwen_tok, ctx, " " + c) for c in "ABCD"]  # one token each: one row per item
        reqs += [encode_pair(qwen_tok, ctx, " " + c) for c in (f"{3 * q} apples", f"{q} pears", "one", "two or three")]
    reqs.append(encode_pair(qwen_tok, "Unrelated short context", " and its continuation"))
    return reqs


@pytest.mark.parametrize("share", [True, False])
def test_loglikelihoods_equal_a_direct_forward(tiny_qwen, requests, share):
    stats = {}
    got = loglikelihoods(tiny_qwen, requests, batch_size=3, share_prefix=share, min_shared=8, stats=stats)
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        ref_ll, ref_greedy = direct(tiny_qwen, ctx, cont)
        assert abs(ll - ref_ll) < 1e-4 and greedy == ref_greedy
    # identical rows (context + continuation[:-1]) run once: an item's one-token choices share one row
    assert stats["rows"] == len({tuple((c + k)[:-1]) for c, k in requests}) < len(requests) - 15
    assert stats["shared"] == int(share)
    if share:  # the few-shot header is computed once, not once per row
        header = len(requests[0][0]) - 20
        assert stats["tokens"] < stats["rows"] * header / 3


def test_batch_size_and_order_do_not_change_scores(tiny_qwen, requests):
    a = loglikelihoods(tiny_qwen, requests, batch_size=1, min_shared=8)
    b = loglikelihoods(tiny_qwen, list(reversed(requests)), batch_size=7, min_shared=8)[::-1]
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) < 1e-4


def test_long_inputs_lose_tokens_on_the_left_like_lm_eval(tiny_qwen):
    ctx, cont = list(range(100, 140)), [7, 8, 9]
    (ll, _), = loglikelihoods(tiny_qwen, [(ctx, cont)], max_length=10)
    window = (ctx + cont)[-11:]  # lm-eval: (context + continuation)[-(max_length + 1):]
    assert abs(ll - direct(tiny_qwen, window[:-3], window[-3:])[0]) < 1e-4
    with pytest.raises(ValueError, match="both have tokens"):
        loglikelihoods(tiny_qwen, [([], [1])])


# ---------------------------------------------------------------- acc and acc_norm

def test_predictions_follow_lm_eval_definitions():
    lls = [-6.0, -4.0, -9.0, -4.0]
    choices = ["a long answer", "no", "yes it is", "x"]
    p = predictions(lls, choices)
    assert p["pred"] == 1  # the first of equal maxima, as numpy's argmax
    # acc_norm divides by the choice's length in characters: -6/13 = -0.46 beats -4/2 and -4/1
    assert p["pred_norm"] == 0
    assert predictions([-2.0, -2.0], ["中文", "ab"])["pred_bytes"] == 0  # 6 bytes vs 2 bytes


def test_aggregate_breaks_down_by_subject_and_category():
    rows = [{"pred": 0, "pred_norm": 0, "pred_bytes": 0, "gold": 0, "subject": "a", "category": "stem"},
            {"pred": 1, "pred_norm": 0, "pred_bytes": 1, "gold": 0, "subject": "a", "category": "stem"},
            {"pred": 2, "pred_norm": 2, "pred_bytes": 2, "gold": 2, "subject": "b", "category": "other"},
            {"pred": 3, "pred_norm": 1, "pred_bytes": 3, "gold": 1, "subject": "b", "category": "other"}]
    res = SCORER.aggregate(rows)
    assert (res["n"], res["acc"], res["acc_norm"], res["acc_bytes"]) == (4, 0.5, 1.0, 0.5)
    assert res["ci95"] == [0.15, 0.85]  # Wilson, 2 of 4
    assert res["by_subject"]["a"]["acc"] == 0.5 and res["by_subject"]["b"]["acc_norm"] == 1.0
    assert set(res["by_category"]) == {"stem", "other"}
    cols, table = SCORER.table({"m": {**res, "n_shot": 5}})
    assert table[0][:3] == ["m", 4, 5]


# ---------------------------------------------------------------- readers, exact published layouts

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_mmlu_layout_no_header(tmp_path):
    # as in hendrycks/test data/dev/global_facts_dev.csv: no header, quoted fields with commas
    write(tmp_path / "data" / "dev" / "global_facts_dev.csv",
          '"As of 2015, since 1990 forests have ____ in Europe.","increased, increased","increased, decreased",'
          '"decreased, increased","decreased, decreased",B\n')
    write(tmp_path / "data" / "test" / "global_facts_test.csv", "Which is largest?,1,2,3,4,D\nSmallest?,1,2,3,4,A\n")
    write(tmp_path / "data" / "test" / "anatomy_test.csv", "Bones in the adult body?,206,300,150,12,A\n")
    test = read_benchmark("mmlu", str(tmp_path), "test")
    assert list(test) == ["anatomy", "global_facts"]  # subjects in name order, found under data/
    item = test["global_facts"][0]
    assert (item.question, item.options, item.gold, item.id) == ("Which is largest?", ("1", "2", "3", "4"), 3,
                                                                "global_facts/test/0")
    dev = read_benchmark("mmlu", str(tmp_path), "dev")["global_facts"][0]
    assert dev.options[0] == "increased, increased" and dev.gold == 1
    assert subject_info("mmlu", "global_facts") == ("global facts", "other")
    assert subject_info("mmlu", "anatomy")[1] == "stem"
    write(tmp_path / "data" / "val" / "anatomy_val.csv", "Q?,a,b,c,d,E\n")
    with pytest.raises(DataError, match=r"anatomy_val.csv:1: answer 'E'"):
        read_benchmark("mmlu", str(tmp_path), "val")
    with pytest.raises(DataError, match="splits dev, val, test"):
        read_benchmark("mmlu", str(tmp_path), "train")


def test_ceval_layout_with_header_and_explanation(tmp_path):
    write(tmp_path / "dev" / "accountant_dev.csv",
          "id,question,A,B,C,D,answer,explanation\n0,下列说法正确的是____,甲,乙,丙,丁,C,\"1. 因为...\"\n")
    write(tmp_path / "val" / "accountant_val.csv",
          "id,question,A,B,C,D,answer,explanation\n0,会计的基本职能是____,核算,监督,预测,决策,A,\n")
    write(tmp_path / "test" / "accountant_test.csv",
          "id,question,A,B,C,D,answer,explanation\n0,题目____,甲,乙,丙,丁,,\n")
    val = read_benchmark("ceval", str(tmp_path), "val")["accountant"][0]
    assert (val.question, val.options, val.gold, val.id) == ("会计的基本职能是____", ("核算", "监督", "预测", "决策"), 0,
                                                            "accountant/val/0")
    dev = read_benchmark("ceval", str(tmp_path), "dev")["accountant"][0]
    assert dev.gold == 2 and dev.meta["explanation"] == "1. 因为..."
    assert subject_info("ceval", "accountant") == ("注册会计师", "Other")
    with pytest.raises(DataError, match="answers are not public, score the val split"):
        read_benchmark("ceval", str(tmp_path), "test")


def test_cmmlu_layout_index_column(tmp_path):
    # as in haonan-li/CMMLU data/dev/agronomy.csv: ",Question,A,B,C,D,Answer" and a row-number column
    write(tmp_path / "dev" / "agronomy.csv", ",Question,A,B,C,D,Answer\n0,肉牛屠宰后，胴体的哪个部位肉质较好,胸,腹,大腿,小腿,C\n")
    write(tmp_path / "test" / "agronomy.csv", ",Question,A,B,C,D,Answer\n0,下列鸭品种中，产蛋量最高的品种是,高邮鸭,北京鸭,樱桃谷鸭,绍鸭,D\n")
    item = read_benchmark("cmmlu", str(tmp_path), "test")["agronomy"][0]
    assert (item.question, item.gold, item.id) == ("下列鸭品种中，产蛋量最高的品种是", 3, "agronomy/test/0")
    assert subject_info("cmmlu", "agronomy") == ("农学", "Other")
    write(tmp_path / "test" / "bad.csv", "Question,A,B\nq,a,b\n")
    with pytest.raises(DataError, match=r"bad.csv: header .* lacks \['C', 'D'\]"):
        read_benchmark("cmmlu", str(tmp_path), "test")
    with pytest.raises(DataError, match="is not a folder"):
        read_benchmark("cmmlu", str(tmp_path / "missing"), "test")


# ---------------------------------------------------------------- the papers' prompts

ITEM = ChoiceItem("x", " What is 2+2? ", ("3", "4", "5", "6"), 1, "elementary_mathematics")
SHOT = ChoiceItem("s", "What is 1+1?", ("2", "3", "4", "5"), 0, "elementary_mathematics")


def test_prompts_are_the_benchmarks_own():
    assert context(FORMATS["mmlu"], "elementary mathematics", [SHOT], ITEM) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert context(FORMATS["ceval"], "初中数学", [SHOT], ITEM) == (
        "以下是中国关于初中数学考试的单项选择题，请选出其中的正确答案。\n\n"
        "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\n答案：A\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\n答案：")
    assert context(FORMATS["cmmlu"], "农学", [], ITEM) == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n题目：What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\n答案是：")
    msgs = chat_messages(FORMATS["mmlu"], "math", [SHOT], ITEM, multiturn=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"] and msgs[2]["content"] == "A"
    single = chat_messages(FORMATS["mmlu"], "math", [SHOT], ITEM, multiturn=False)
    assert [m["role"] for m in single] == ["system", "user"] and single[1]["content"].startswith("What is 1+1?")


def test_cn_middle_school_options_parsed_from_the_question():
    assert split_options("下列四个数中，最小的数是()\nA.-2  B.0  C. 3  D.  -1/2") == ("下列四个数中，最小的数是()",
                                                                                ("-2", "0", "3", "-1/2"))
    assert split_options("计算 -5+3 的结果是 ( ) . A. 2 B. -2 C. 8 D. -8") == ("计算 -5+3 的结果是 ( ) .",
                                                                               ("2", "-2", "8", "-8"))
    assert split_options("若∠A=55°，则∠A的补角为（）") is None
    shared_data("cn_middle_school_test.jsonl")
    items = read_cn_middle_school("cn_middle_school")
    assert len(items) == 41  # the rows with options and a choice_answer; 60 fill-in rows are not multiple choice
    assert items[0].options == ("-2", "0", "3", "-1/2") and items[0].gold == 0


# ---------------------------------------------------------------- end to end

@pytest.fixture()
def mmlu_folder(tmp_path):
    rows = {"dev": [["What is 1+1?", "2", "3", "4", "5", "A"], ["What is 2+1?", "2", "3", "4", "5", "B"]],
            "test": [["What is 3+1?", "2", "3", "4", "5", "C"], ["What is 3+2?", "5", "6", "7", "8", "A"],
                     ["What is 9-4?", "1", "3", "5", "7", "C"]]}
    for split, rs in rows.items():
        (tmp_path / "mmlu" / split).mkdir(parents=True)
        with (tmp_path / "mmlu" / split / f"elementary_mathematics_{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rs)
    return tmp_path / "mmlu"


def test_eval_mmlu_end_to_end(tmp_path, mmlu_folder, tiny_qwen, qwen_tok, capsys):
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-qwen3", "--task", "mmlu", "--data", str(mmlu_folder), "--n-shot", "2",
            "--output", str(out), "--batch-size", "2"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["n"], res["n_shot"], res["prompt_mode"], res["split"]) == (3, 2, "plain text", "test")
    assert res["by_category"]["stem"]["n"] == 3 and 0 <= res["acc"] <= 1
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].startswith("The following are multiple choice questions (with answers) about "
                                        "elementary mathematics.\n\nWhat is 1+1?")
    assert rows[0]["prompt"].endswith("What is 3+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:")
    for r in rows:  # each stored log-likelihood is the direct computation of its prompt and continuation
        for cont, ll in zip(r["continuations"], r["loglikelihoods"]):
            assert abs(ll - direct(tiny_qwen, *encode_pair(qwen_tok, r["prompt"], cont))[0]) < 1e-4
        assert r["pred"] == max(range(4), key=lambda i: (r["loglikelihoods"][i], -i))
    assert "acc [95% CI]" in capsys.readouterr().out
    # other settings, same output: refused (it would mix evaluations)
    assert main(args[:-2] + ["--batch-size", "2", "--n-shot", "1"]) == 2
    assert "n_shot" in capsys.readouterr().err


def test_eval_chat_template_mode_and_errors(tmp_path, mmlu_folder, capsys):
    out = tmp_path / "chat"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "mmlu", "--data", str(mmlu_folder), "--n-shot", "1",
                 "--chat-template", "--fewshot-as-multiturn", "--output", str(out)]) == 0
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("<|im_start|>system\nThe following are") and row["continuations"] == list("ABCD")
    assert "<|im_start|>assistant\nA<|im_end|>" in row["prompt"]  # the shot as an assistant turn
    assert json.loads((out / "results.json").read_text())["prompt_mode"] == "chat multi-turn"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "mmlu", "--output", str(tmp_path / "x")]) == 2
    assert "needs --data FOLDER" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-qwen3", "--task", "mmlu", "--data", str(mmlu_folder), "--n-shot", "3",
                 "--output", str(tmp_path / "y")]) == 2
    assert "its dev split has 2 examples" in capsys.readouterr().err


def test_cn_middle_school_few_shot_pool_is_never_scored(tmp_path, capsys):
    shared_data("cn_middle_school_test.jsonl")
    out = tmp_path / "cms"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "cn_middle_school", "--n-shot", "5", "--limit", "4",
                 "--output", str(out)]) == 0
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 4 and res["n_shot"] == 5
    prompt = rows[0]["prompt"]
    assert prompt.startswith("以下是中国关于初中数学考试的单项选择题，请选出其中的正确答案。\n\n") and prompt.count("答案：") == 6
    shots = [b.split("\n")[0] for b in prompt.split("\n\n")[1:-1]]
    scored = {r["id"] for r in rows}
    pool_ids = {it.id for it in read_cn_middle_school("cn_middle_school") if it.question in shots}
    assert len(pool_ids) == 5 and not pool_ids & scored
    assert main(["eval", "--model", "tiny-qwen3", "--task", "cn_middle_school", "--n-shot", "6",
                 "--output", str(tmp_path / "z")]) == 2
    assert "few-shot pool holds 5 examples" in capsys.readouterr().err
