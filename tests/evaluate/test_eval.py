"""`tunelab eval` end to end on tiny models: batched rollouts equal one-by-one, files and fields,
resume of an interrupted eval, perplexity equals a direct computation, efficiency, review CSV,
`tunelab grade`, and bad input."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from tunelab.cli import main
from tunelab.errors import ConfigError
from tunelab.models.generate import GenerationSettings, Generator
from tunelab.models.generation import stop_token_ids
from tunelab.models.loaded import Loaded
from tunelab.evaluate.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def loaded(tunelab_home):
    return Loaded("tiny-qwen3")


def test_prompts_use_the_training_renderer(loaded):
    items = TASKS["arith_en"].items(limit=3)
    for it in items:
        ids = loaded.renderer.render_prompt(it.messages)
        text = loaded.tokenizer.decode(ids)
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # as trained (see render.py)
        assert "Please reason step by step, and put your final answer within \\boxed{}." in text
    assert items[0].gold and items[0].id.startswith("arith-en-1234-")


def test_batched_generation_equals_one_by_one(loaded):
    items = TASKS["arith"].items(limit=6)
    prompts = [loaded.renderer.render_prompt(it.messages) for it in items]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    gen = Generator(loaded.model, loaded.tokenizer, stop_token_ids(loaded.tokenizer, loaded.renderer.eot))
    batched = gen.generate(prompts, GenerationSettings(max_new_tokens=6, batch_size=6), progress=False)
    single = gen.generate(prompts, GenerationSettings(max_new_tokens=6, batch_size=1), progress=False)
    assert batched == single and len(batched) == 6


def test_sampling_is_seeded(loaded):
    prompts = [loaded.renderer.render_prompt(it.messages) for it in TASKS["arith"].items(limit=2)]
    gen = Generator(loaded.model, loaded.tokenizer, stop_token_ids(loaded.tokenizer, loaded.renderer.eot))
    s = GenerationSettings(max_new_tokens=5, temperature=1.0, n=2, seed=7, batch_size=2)
    a = gen.generate(prompts, s, progress=False)
    b = gen.generate(prompts, s, progress=False)
    assert a == b and set(a) == {(0, 0), (1, 0), (0, 1), (1, 1)}
    assert a[(0, 0)] != a[(0, 1)]  # different seeds per sample


def test_eval_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "6", "--max-new-tokens", "4",
            "--output", str(out), "--export-review", str(tmp_path / "review.csv")]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "arith" and res["n"] == 6 and res["template"] == "tokenizer"
    assert res["accuracy"] == 0.0 and res["ci95"][0] == 0.0 and 0.3 < res["ci95"][1] < 0.5  # Wilson, 0 of 6
    assert res["generation"]["max_new_tokens"] == 4 and res["timing"]["generated_tokens"] > 0
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for key in ("id", "prompt", "prediction", "extracted", "gold", "correct"):
        assert key in rows[0]
    # interrupt: drop two predictions, run again -> only those two are generated, the rest kept
    kept = rows[:4]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    assert main(args) == 0
    again = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert again[:4] == kept and len(again) == 6
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    assert "4 predictions already in" in capsys.readouterr().out
    with open(tmp_path / "review.csv", encoding="utf-8-sig") as f:
        review = list(csv.reader(f))
    assert review[0] == ["id", "prompt", "answer", "gold", "knowledge_accuracy", "logical_coherence", "clarity", "notes"]
    assert len(review) == 7 and review[1][4:] == ["", "", "", ""]


def test_malformed_predictions_line_is_named(tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "2", "--max-new-tokens", "2",
            "--output", str(out)]
    assert main(args) == 0
    first = (out / "predictions.jsonl").read_text().splitlines()[0]
    (out / "predictions.jsonl").write_text(first + "\n{broken\n")
    assert main(args) == 2
    assert "predictions.jsonl:2: malformed JSON line" in capsys.readouterr().err


def test_two_models_compare(tmp_path):
    out = tmp_path / "cmp"
    run = tmp_path / "copy"
    from tunelab.models.builtin import ensure
    import shutil

    shutil.copytree(ensure("tiny-qwen3"), run)
    assert main(["eval", "--model", "tiny-qwen3", "--model", str(run), "--task", "arith_zh", "--limit", "2",
                 "--max-new-tokens", "3", "--output", str(out)]) == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert list(comp) == ["tiny-qwen3", str(run)]
    assert (out / "tiny-qwen3" / "results.json").is_file()
    # the same weights give the same predictions
    a = (out / "tiny-qwen3" / "predictions.jsonl").read_text().splitlines()
    b = next(p for p in out.iterdir() if p.name.endswith("copy")) / "predictions.jsonl"
    assert [json.loads(x)["prediction"] for x in a] == [json.loads(x)["prediction"] for x in b.read_text().splitlines()]


def test_perplexity_equals_direct_computation(tmp_path, loaded):
    convs = tmp_path / "c.jsonl"
    msgs = [[{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}]
            for i in range(5)]
    convs.write_text("\n".join(json.dumps({"messages": m}) for m in msgs))
    out = tmp_path / "ppl"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "perplexity", "--data", str(convs), "--output", str(out)]) == 0
    got = json.loads((out / "results.json").read_text())
    nll, n = 0.0, 0
    with torch.no_grad():
        for m in msgs:
            ids, labels = loaded.renderer.render(m)
            logits = loaded.model(torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            keep = target != -100
            nll += F.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            n += int(keep.sum())
    assert got["scored_tokens"] == n
    assert abs(got["perplexity"] - math.exp(nll / n)) <= 1e-4 * math.exp(nll / n)

    text = tmp_path / "t.jsonl"
    words = " ".join(f"word{i}" for i in range(120))
    text.write_text(json.dumps({"text": words}))
    out2 = tmp_path / "ppl2"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "perplexity", "--data", str(text), "--output", str(out2),
                 "--max-length", "64", "--stride", "64"]) == 0
    got = json.loads((out2 / "results.json").read_text())
    ids = loaded.tokenizer(words)["input_ids"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids), 64):  # stride == window: independent windows
            w = ids[s : s + 64]
            if len(w) < 2:
                continue
            logits = loaded.model(torch.tensor([w])).logits[0, :-1]
            nll += F.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
            n += len(w) - 1
    assert got["scored_tokens"] == n
    assert abs(got["perplexity"] - math.exp(nll / n)) <= 1e-4 * math.exp(nll / n)


def test_efficiency_table(tmp_path):
    out = tmp_path / "eff"
    assert main(["eval", "--model", "tiny-qwen3", "--task", "efficiency", "--prompt-tokens", "16",
                 "--max-new-tokens", "4", "--output", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [1, 4, 8]
    for r in rows:
        assert r["prompt_tokens"] == 16 and r["new_tokens"] == 4
        assert 0 < r["ttft_s"] < r["latency_s"] and r["decode_tokens_per_s"] > 0 and r["peak_mem_mb"] > 0


def test_grade_command(tmp_path):
    src = tmp_path / "outs.jsonl"
    rows = [{"prediction": "so the answer is \\boxed{\\frac{1}{2}}", "gold": "0.5"},
            {"prediction": "I think 7.", "gold": "8"},
            {"prediction": "no idea", "gold": "3"}]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "graded.jsonl"
    assert main(["grade", "--task", "math500", str(src), "--output", str(out)]) == 0
    graded = [json.loads(l) for l in out.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, False]
    assert graded[0]["extracted"] == "\\frac{1}{2}" and graded[2]["extracted"] is None
    assert graded[0]["prediction"] == rows[0]["prediction"]
    assert main(["grade", "--task", "math500", str(src), "--output", str(out)]) == 2  # no overwrite unasked
    src.write_text('{"prediction": "1", "gold": "1"}\n{"prediction": "2"}\n')
    assert main(["grade", "--task", "math500", str(src), "--output", str(tmp_path / "x.jsonl")]) == 2


def test_unknown_task_and_custom_task(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'nope'; known: math500, gsm8k"):
        get_task("nope")
    spec = tmp_path / "mine.yaml"
    spec.write_text("source: gsm8k_test\nscorer: gsm8k\ndescription: my gsm8k\n")
    t = get_task(str(spec))
    assert t.name == "mine" and t.scorer == "gsm8k" and t.items(limit=2)[0].gold == "18"
    spec.write_text("sorce: x\n")
    with pytest.raises(ConfigError, match="unknown task key"):
        get_task(str(spec))


def test_run_directory_template_mismatch_warns(tmp_path, capsys):
    from tunelab.models.builtin import ensure
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ensure("tiny-qwen3"), run / "model")
    (run / "model" / "tunelab.json").write_text(json.dumps({"template": "tokenizer", "base_model": "tiny-qwen3"}))
    loaded = Loaded(str(run), template="chatml")
    assert "trained with template 'tokenizer' but 'chatml' was requested" in capsys.readouterr().out
    assert loaded.renderer.template == "chatml"


@pytest.mark.slow
def test_smollm2_on_gsm8k_and_math500(tmp_path):
    """The real model on the real test sets through the CLI: every stored verdict is the grader's verdict
    on the stored prediction and gold, the accuracy is their mean, and the prompt is the data's question
    in the model's chat template."""
    from tunelab.data.grading import grade

    for task in ("gsm8k", "math500"):
        out = tmp_path / task
        assert main(["eval", "--model", "smollm2-135m-instruct", "--task", task, "--limit", "3",
                     "--max-new-tokens", "48", "--output", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert results["n"] == len(rows) == 3 and results["model"] == "smollm2-135m-instruct"
        for r in rows:
            assert r["prompt"].startswith("<|im_start|>") and r["prompt"].endswith("<|im_start|>assistant\n")
            assert 0 < r["tokens"] <= 48 and r["gold"].strip()
            assert r["correct"] == grade(r["prediction"], r["gold"]).correct
        assert results["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 3)
        assert (task != "math500" or "by_subject" in results) and (task != "gsm8k" or "strict_accuracy" in results)


def test_eval_output_of_another_model_is_not_continued(tmp_path, capsys):
    out = tmp_path / "ev"
    common = ["--task", "arith", "--limit", "2", "--max-new-tokens", "2", "--output", str(out)]
    assert main(["eval", "--model", "tiny-qwen3", *common]) == 0
    before = (out / "predictions.jsonl").read_text()
    assert main(["eval", "--model", "smollm2-135m-instruct", *common]) == 2
    err = capsys.readouterr().err
    assert "holds another evaluation" in err and "model: 'tiny-qwen3' -> 'smollm2-135m-instruct'" in err
    assert (out / "predictions.jsonl").read_text() == before
    assert main(["eval", "--model", "tiny-qwen3", *common[:-2], "--limit", "2", "--max-new-tokens", "3",
                 "--output", str(out)]) == 2  # other settings: refused too
    assert main(["eval", "--model", "smollm2-135m-instruct", *common, "--overwrite"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "smollm2-135m-instruct"
    assert all("smollm2" not in l or True for l in (out / "predictions.jsonl").read_text().splitlines())
    assert (out / "predictions.jsonl").read_text() != before


def test_evaluation_runs_where_device_says(tunelab_home, monkeypatch):
    """eval --device puts the model there; without it the GPU when there is one (it used to stay on the CPU)."""
    from tunelab.cli import build_parser
    from tunelab.evaluate.command import settings_from_args
    from tunelab.evaluate.run import fingerprint_settings, load
    from tunelab.models import loaded as L

    args = build_parser().parse_args(["eval", "--model", "tiny-qwen3", "--task", "arith_en", "--device", "meta"])
    settings = settings_from_args(args)
    assert settings.device == "meta" and "device" not in fingerprint_settings(settings)  # same results anywhere
    assert next(load("tiny-qwen3", settings).model.parameters()).device.type == "meta"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert L.pick_device(None) == "cuda" and L.pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert L.pick_device(None) is None
