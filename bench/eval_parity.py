"""Parity and speed of tunelab's log-likelihood scoring against lm-evaluation-harness (its `hf` model).

    .venv/bin/python bench/eval_parity.py                 # SmolLM2-135M-Instruct, 36 MMLU-layout items 5-shot + 8 GSM8K
    .venv/bin/python bench/eval_parity.py --tiny --out /tmp/p   # tiny-qwen3, a few items: the smoke run the test uses

Needs the bench extra (`pip install -e .[bench]`: lm-eval). Everything is local: lm-eval reads the
same model directory (`tunelab.models.load.resolve(name).path`) and tasks defined by YAML files this
script writes next to JSON-lines copies of the items; HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set.

What is compared
1. MMLU pipeline. A local folder in MMLU's published layout (`dev/<subject>_dev.csv`,
   `test/<subject>_test.csv`, no header) is made from real data: the multiple-choice rows of
   cn_middle_school (options parsed out of the question; 5 held out as the dev split). tunelab runs
   `evaluate(model, "mmlu", settings=EvalSettings(data=FOLDER, n_shot=K))`; lm-eval runs a task with
   lm-eval's own `mmlu` template (description, doc_to_text, A-D, `first_n` dev shots) on the same
   items. Per item: the prompt strings must be identical and the four log-likelihoods equal within
   1e-4 (fp32); both accuracies (acc, acc_norm) are printed.
2. GSM8K. Log-likelihood of each reference solution (calculator annotations removed, ending "The
   answer is N.") after the 8-shot `gsm8k_cot` prompt, as an lm-eval `loglikelihood` task and with
   tunelab's `loglikelihoods`: long multi-token continuations, equal within 1e-4.
3. Speed. The MMLU requests (context, continuation) scored by `tunelab.evaluate.loglik.loglikelihoods`
   and by lm-eval's `HFLM.loglikelihood`, same model weights, same batch size, same process and
   threads; runs alternate, the best of `--repeats` is kept (the CPU is shared: wall time and process
   CPU time are both reported). items/s = scored items / seconds. tunelab is also run without
   prefix sharing, to show where the speed comes from.

Results: `--out/eval_parity[_tiny].json` and a Markdown table on stdout.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SUBJECT = "middle_school_mathematics"
PRESETS = {"full": {"model": "smollm2-135m-instruct", "items": 36, "n_shot": 5, "gsm8k": 8, "batch_size": 8,
                    "repeats": 2},
           "tiny": {"model": "tiny-qwen3", "items": 6, "n_shot": 2, "gsm8k": 2, "batch_size": 4, "repeats": 1}}
TOLERANCE = 1e-4


def make_mmlu_folder(root: Path, n_items: int) -> Path:
    """cn_middle_school's multiple-choice rows in MMLU's layout: 5 dev rows (held out with seed 1234), the rest test."""
    from tunelab.evaluate.benchmarks import LETTERS, holdout, read_cn_middle_school

    dev, test = holdout(read_cn_middle_school("cn_middle_school"), 5, 1234)
    for split, items in (("dev", dev), ("test", test[:n_items])):
        (root / split).mkdir(parents=True, exist_ok=True)
        with (root / split / f"{SUBJECT}_{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)  # MMLU: no header; question, A, B, C, D, answer
            for it in items:
                w.writerow([it.question, *it.options, LETTERS[it.gold]])
    return root


def lm_eval_tasks(work: Path, folder: Path, gsm8k_pairs: list[tuple[str, str]]) -> Path:
    """Task YAMLs over JSON-lines copies of the folder's items (lm-eval's mmlu template) and of GSM8K."""
    from tunelab.evaluate.benchmarks import LETTERS, read_benchmark

    tasks = work / "lm_eval_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        rows = read_benchmark("mmlu", str(folder), split)[SUBJECT]
        with (tasks / f"mmlu_{split}.jsonl").open("w", encoding="utf-8") as f:
            for it in rows:
                f.write(json.dumps({"question": it.question, "A": it.options[0], "B": it.options[1],
                                    "C": it.options[2], "D": it.options[3], "answer": LETTERS[it.gold]},
                                   ensure_ascii=False) + "\n")
    mmlu = {"task": "parity_mmlu", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(tasks / "mmlu_test.jsonl"), "dev": str(tasks / "mmlu_dev.jsonl")}},
            "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {SUBJECT.replace('_', ' ')}.\n\n",
            # lm-eval's mmlu/default/_default_template_yaml, with A-D as columns instead of a list
            "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    with (tasks / "gsm8k_ll.jsonl").open("w", encoding="utf-8") as f:
        for ctx, cont in gsm8k_pairs:
            f.write(json.dumps({"context": ctx, "continuation": cont}, ensure_ascii=False) + "\n")
    gsm = {"task": "parity_gsm8k_ll", "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(tasks / "gsm8k_ll.jsonl")}}, "test_split": "test",
           "output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{continuation}}",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    import yaml

    (tasks / "parity_mmlu.yaml").write_text(yaml.safe_dump(mmlu, allow_unicode=True, sort_keys=False))
    (tasks / "parity_gsm8k_ll.yaml").write_text(yaml.safe_dump(gsm, allow_unicode=True, sort_keys=False))
    return tasks


def gsm8k_pairs(n: int) -> list[tuple[str, str]]:
    """(8-shot gsm8k_cot prompt, " " + reference reasoning ending "The answer is N.") for the first n test questions."""
    from tunelab.data.sources import iter_records
    from tunelab.evaluate.fewshot import exemplars, plain_prompt

    shots = exemplars("gsm8k_cot", 8)
    out = []
    for _, r in iter_records("gsm8k_test"):
        if len(out) == n:
            break
        reasoning, answer = r["answer"].rsplit("####", 1)
        steps = " ".join(re.sub(r"<<[^<>]*>>", "", reasoning).split())
        out.append((plain_prompt("gsm8k_cot", shots, r["question"])[0], f" {steps} The answer is {answer.strip()}."))
    return out


def run_lm_eval(lm: Any, tasks_dir: Path, task: str, n_shot: int | None) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=n_shot, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks_dir)), random_seed=0,
                                  numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=1234,
                                  bootstrap_iters=0)
    return {"metrics": res["results"][task], "samples": sorted(res["samples"][task], key=lambda s: s["doc_id"])}


def timed(fn: Any) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    p = harness.arg_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny-qwen3 and a few items: seconds, for the test")
    p.add_argument("--speed-only", action="store_true", help="skip the lm-eval pipeline runs (parity); time only")
    p.add_argument("--threads", type=int, help="torch threads for both runners (default: torch's)")
    for key in ("model", "items", "n_shot", "gsm8k", "batch_size", "repeats"):
        p.add_argument(f"--{key.replace('_', '-')}", type=str if key == "model" else int, default=None)
    args = harness.fill_defaults(p.parse_args(), PRESETS["tiny" if args_tiny() else "full"])

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tunelab.evaluate.loglik import encode_pair, loglikelihoods
    from tunelab.evaluate.run import EvalSettings, evaluate, load
    from tunelab.models.load import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve(args.model).path
    work = Path(tempfile.mkdtemp(prefix="eval_parity_"))
    folder = make_mmlu_folder(work / "mmlu", args.items)
    pairs = gsm8k_pairs(args.gsm8k)
    tasks_dir = lm_eval_tasks(work, folder, pairs)
    loaded = load(args.model, EvalSettings())
    lm = HFLM(pretrained=str(path), backend="causal", batch_size=args.batch_size, dtype="float32", device="cpu")

    # 1. MMLU pipeline: prompts and per-item log-likelihoods
    ours = evaluate(loaded, "mmlu", out=work / "tunelab_mmlu",
                    settings=EvalSettings(data=str(folder), n_shot=args.n_shot, batch_size=args.batch_size))
    our_rows = [json.loads(l) for l in (work / "tunelab_mmlu" / "predictions.jsonl").read_text().splitlines()]
    theirs = {"metrics": {}, "samples": []} if args.speed_only else run_lm_eval(lm, tasks_dir, "parity_mmlu", args.n_shot)
    items, worst, same_prompts = [], 0.0, 0
    for row, s in zip(our_rows, theirs["samples"]):
        their_ll = [float(r[0][0]) for r in s["resps"]]
        their_ctx = [a[0] for a in s["arguments"]] if isinstance(s["arguments"][0], (list, tuple)) else []
        same = bool(their_ctx) and all(c == row["prompt"] for c in their_ctx) and \
            [a[1] for a in s["arguments"]] == row["continuations"]
        same_prompts += same
        diff = max(abs(a - b) for a, b in zip(row["loglikelihoods"], their_ll))
        worst = max(worst, diff)
        items.append({"id": row["id"], "tunelab": row["loglikelihoods"], "lm_eval": [round(x, 6) for x in their_ll],
                      "max_abs_diff": diff, "same_prompt": same, "gold": row["gold"]})
    mmlu = {"n": len(items), "same_prompts": same_prompts, "max_abs_diff": worst, "tolerance": TOLERANCE,
            "equal": worst <= TOLERANCE and same_prompts == len(items),
            "tunelab": {"acc": ours["acc"], "acc_norm": ours["acc_norm"]},
            "lm_eval": {"acc": theirs["metrics"].get("acc,none"), "acc_norm": theirs["metrics"].get("acc_norm,none")},
            "items": items}

    # 2. GSM8K: long continuations after the 8-shot CoT prompt
    ours_g = loglikelihoods(loaded.model, [encode_pair(loaded.tokenizer, c, k) for c, k in pairs],
                            batch_size=args.batch_size)
    theirs_g = {"samples": []} if args.speed_only else run_lm_eval(lm, tasks_dir, "parity_gsm8k_ll", 0)
    g_items = []
    for (ctx, cont), (ll, _), s in zip(pairs, ours_g, theirs_g["samples"]):
        their_ll = float(s["resps"][0][0][0])
        g_items.append({"tunelab": round(ll, 6), "lm_eval": round(their_ll, 6), "abs_diff": abs(ll - their_ll),
                        "same_request": list(s["arguments"][0]) == [ctx, cont] if s["arguments"] else False,
                        "continuation_chars": len(cont)})
    g_worst = max((x["abs_diff"] for x in g_items), default=0.0)
    gsm = {"n": len(g_items), "max_abs_diff": g_worst, "equal": g_worst <= TOLERANCE and all(x["same_request"] for x in g_items),
           "items": g_items}

    # 3. Speed on the MMLU requests (same strings both sides)
    reqs = [(r["prompt"], c) for r in our_rows for c in r["continuations"]]
    n_items = len(our_rows)
    runs: dict[str, list[tuple[float, float]]] = {"tunelab": [], "tunelab_no_sharing": [], "lm_eval": []}
    for _ in range(args.repeats):
        for name in runs:
            if name == "lm_eval":
                inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]
                _, wall, cpu = timed(lambda: lm.loglikelihood(inst, disable_tqdm=True))
            else:
                share = name == "tunelab"
                _, wall, cpu = timed(lambda: loglikelihoods(
                    loaded.model, [encode_pair(loaded.tokenizer, c, k) for c, k in reqs],
                    batch_size=args.batch_size, share_prefix=share))
            runs[name].append((wall, cpu))
    rows = []
    for name, xs in runs.items():
        wall, cpu = min(w for w, _ in xs), min(c for _, c in xs)
        rows.append({"runner": name, "items": n_items, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "items/s (wall)": round(n_items / wall, 3), "items/s (cpu)": round(n_items / cpu, 3)})
    base = next(r for r in rows if r["runner"] == "lm_eval")
    for r in rows:
        r["speedup (wall)"] = harness.ratio(r["items/s (wall)"], base["items/s (wall)"])
        r["speedup (cpu)"] = harness.ratio(r["items/s (cpu)"], base["items/s (cpu)"])

    cols = ["runner", "items", "wall_s", "cpu_s", "items/s (wall)", "items/s (cpu)", "speedup (wall)", "speedup (cpu)"]
    print(f"\n## MMLU layout ({mmlu['n']} items, {args.n_shot}-shot, {args.model}): per-item log-likelihoods")
    print(harness.table([{"id": x["id"], "gold": "ABCD"[x["gold"]], "tunelab A..D": " ".join(f"{v:.4f}" for v in x["tunelab"]),
                          "lm-eval A..D": " ".join(f"{v:.4f}" for v in x["lm_eval"]), "max |diff|": f"{x['max_abs_diff']:.1e}",
                          "same prompt": x["same_prompt"]} for x in items],
                        ["id", "gold", "tunelab A..D", "lm-eval A..D", "max |diff|", "same prompt"]))
    print(f"\nacc: tunelab {mmlu['tunelab']['acc']} / lm-eval {mmlu['lm_eval']['acc']}; acc_norm: tunelab "
          f"{mmlu['tunelab']['acc_norm']} / lm-eval {mmlu['lm_eval']['acc_norm']}; max |diff| {worst:.2e}; "
          f"identical prompts {same_prompts}/{len(items)}")
    print(f"\n## GSM8K 8-shot CoT prompt + reference solution ({gsm['n']} items)")
    print(harness.table([{**x, "abs_diff": f"{x['abs_diff']:.1e}"} for x in g_items],
                        ["tunelab", "lm_eval", "abs_diff", "same_request", "continuation_chars"]))
    print(f"\n## Speed (batch {args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeats})")
    print(harness.table(rows, cols))
    name = "eval_parity_tiny" if args.tiny else "eval_parity_speed" if args.speed_only else "eval_parity"
    out = harness.save(name, {"settings": {**{k: getattr(args, k) for k in PRESETS["full"]},
                                           "torch_threads": torch.get_num_threads()},
                              "mmlu": mmlu, "gsm8k": gsm, "speed": rows}, args.out)
    print(f"\nresults: {out}")
    return 0 if args.speed_only or (mmlu["equal"] and gsm["equal"]) else 1


def args_tiny() -> bool:
    return "--tiny" in sys.argv


if __name__ == "__main__":
    sys.exit(main())
