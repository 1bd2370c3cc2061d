"""Multiple-choice evaluation by log-likelihood: prompts, few-shot examples, scoring, files.

    res = choice_eval(loaded, TASKS["mmlu"], EvalSettings(data="mmlu/data", n_shot=5), out=Path("runs/eval/mmlu"))

Per subject: the few-shot examples are the first K of the dev split (lm-eval's `first_n` sampler;
MMLU, C-Eval and CMMLU all ship 5 per subject), or, for data with no dev split (cn_middle_school),
K of a fixed pool held out with a seed and never scored. The prompt is plain text (base models)
unless `chat_template` is on; then it is the model's chat template with the header as the system
message and the shots either folded into the user message or as turns (`fewshot_as_multiturn`),
the choice letter scored as the start of the assistant's reply.

Writes `predictions.jsonl` (per item: id, subject, category, the choices' log-likelihoods, the
three predictions, gold, correct) and `results.json` (acc and acc_norm with Wilson intervals,
overall and per subject and category; shots, prompt mode, timing).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .benchmarks import FORMATS, ChoiceItem, chat_messages, context, holdout, read_benchmark, \
    read_cn_middle_school, subject_info

HOLDOUT_POOL = 5  # cn_middle_school: examples held out as the few-shot pool, whatever K is (same scored set)


@dataclass
class Prompted:
    item: ChoiceItem
    subject_name: str
    category: str
    context: str  # the prompt text the choices continue
    choices: list[str]  # the choice strings (letters), without the delimiter
    continuations: list[str]  # what is scored: delimiter + choice


def _items_and_shots(task: Any, source: str, split: str, n_shot: int, limit: int | None,
                     seed: int) -> tuple[str, dict[str, tuple[list[ChoiceItem], list[ChoiceItem]]]]:
    """(format name, {subject: (items to score, shots)})."""
    if task.benchmark == "cn_middle_school":
        pool, rest = holdout(read_cn_middle_school(source), HOLDOUT_POOL, seed)
        if n_shot > len(pool):
            raise DataError(f"task {task.name}: --n-shot {n_shot} but its few-shot pool holds {len(pool)} examples "
                            f"(held out with seed {seed}, never scored)")
        return "ceval", {"middle_school_mathematics": (rest[:limit] if limit else rest, pool[:n_shot])}
    tests = read_benchmark(task.benchmark, source, split)
    devs = read_benchmark(task.benchmark, source, "dev") if n_shot else {}
    out = {}
    for subject, items in tests.items():
        shots = devs.get(subject, [])[:n_shot]
        if len(shots) < n_shot:
            raise DataError(f"{task.benchmark} subject {subject}: --n-shot {n_shot} but its dev split has {len(shots)} "
                            "examples")
        out[subject] = (items[:limit] if limit else items, shots)
    return task.benchmark, out


def build_prompts(task: Any, loaded: Any, settings: Any) -> list[Prompted]:
    fmt_name, per_subject = _items_and_shots(task, settings.data or task.source, settings.split or task.split,
                                             settings.shots_for(task.name), settings.limit, settings.fewshot_seed)
    fmt = FORMATS[fmt_name]
    bench = "ceval" if task.benchmark == "cn_middle_school" else task.benchmark
    out = []
    for subject, (items, shots) in per_subject.items():
        name, category = subject_info(bench, subject)
        for it in items:
            choices = fmt.choices(it)
            if settings.chat_template:
                msgs = chat_messages(fmt, name, shots, it, settings.fewshot_as_multiturn)
                text, conts = loaded.renderer.prompt_text(msgs), choices  # lm-eval: no delimiter after the template
            else:
                text, conts = context(fmt, name, shots, it), [fmt.target_delimiter + c for c in choices]
            out.append(Prompted(it, name, category, text, choices, conts))
    if not out:
        raise DataError(f"task {task.name}: no items to score")
    return out


def prompts_digest(prompts: list[Prompted]) -> dict[str, Any]:
    body = json.dumps([[p.item.id, p.context, p.continuations, p.item.gold] for p in prompts], ensure_ascii=False)
    return {"n": len(prompts), "sha256": hashlib.sha256(body.encode()).hexdigest()[:16]}


def choice_eval(loaded: Any, task: Any, settings: Any, out: Path, prompts: list[Prompted] | None = None) -> dict[str, Any]:
    from .loglik import encode_pair, loglikelihoods
    from .scorers import get_scorer

    prompts = prompts if prompts is not None else build_prompts(task, loaded, settings)
    tok = loaded.tokenizer
    requests, owner = [], []
    for k, p in enumerate(prompts):
        for c in p.continuations:
            requests.append(encode_pair(tok, p.context, c))
            owner.append(k)
    t0 = time.perf_counter()
    stats: dict[str, int] = {}
    scores = loglikelihoods(loaded.model, requests, batch_size=settings.batch_size, stats=stats)
    seconds = time.perf_counter() - t0
    from .scorers.choice_ll import predictions

    rows = []
    lls: list[list[float]] = [[] for _ in prompts]
    greedy: list[list[bool]] = [[] for _ in prompts]
    for k, (ll, g) in zip(owner, scores):
        lls[k].append(ll)
        greedy[k].append(g)
    for p, ll, g in zip(prompts, lls, greedy):
        pred = predictions(ll, p.choices)
        rows.append({"id": p.item.id, "subject": p.item.subject, "category": p.category, "gold": p.item.gold,
                     "choices": p.choices, "loglikelihoods": [round(x, 6) for x in ll], "is_greedy": g, **pred,
                     "correct": pred["pred"] == p.item.gold, "sample": 0})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for p, r in zip(prompts, rows):
            f.write(json.dumps({**r, "prompt": p.context, "continuations": p.continuations}, ensure_ascii=False) + "\n")
    scorer = get_scorer(task.scorer)
    results = {"task": task.name, "description": task.description, "scorer": scorer.name, **loaded.describe(),
               "benchmark": task.benchmark, "split": settings.split or task.split,
               "n_shot": settings.shots_for(task.name),
               "prompt_mode": ("chat multi-turn" if settings.fewshot_as_multiturn else "chat") if settings.chat_template
               else "plain text", **scorer.aggregate(rows),
               "timing": {"seconds": round(seconds, 2), "items_per_s": round(len(prompts) / seconds, 2) if seconds else None,
                          "requests": len(requests), **stats}}
    if not settings.chat_template:
        results["template"] = None  # plain text: no chat template was used
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results
