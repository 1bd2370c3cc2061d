"""Rollouts on a task: generate for every item, grade with the task's scorer, write files as it goes.

    results = rollouts(loaded, task, items, out, GenerationSettings(max_new_tokens=256), backend="hf")

It writes `<out>/predictions.jsonl` (one row per item and sample, appended as soon as its batch is
done, so an interrupted evaluation continues where it stopped) and `<out>/results.json` (task,
model, n, the scorer's metrics, generation settings, template, timing). Use it through
`evaluate.run.evaluate`, the one entry point that `tunelab eval`, experiments and sweeps share.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..models.generate import GenerationSettings
from .review import write_review
from .scorers import get_scorer
from .tasks import Item, Task


def slug(ref: str) -> str:
    """A model reference as a directory name: `runs/a/b` -> `runs__a__b`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ref.strip("/").replace("/", "__"))[-80:] or "model"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of `path` ([] when absent); a malformed line is an error naming it."""
    rows = []
    if not path.exists():
        return rows
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: malformed JSON line ({e.msg}); fix or delete the line to continue") from None
    return rows


def make_generator(loaded: Any, backend: str = "hf", stop_strings: list[str] = ()) -> Any:
    """The rollout engine: transformers' batched `generate`, or vLLM's."""
    if backend == "vllm":
        if stop_strings:
            from ..errors import DataError

            raise DataError("--backend vllm runs chat-template prompts; plain-text few-shot prompts run with hf")
        from .vllm_backend import VllmGenerator

        return VllmGenerator(loaded.path, loaded.meta, loaded.tokenizer, loaded.stop_ids, dtype=loaded.dtype)
    from ..models.generate import Generator

    return Generator(loaded.model, loaded.tokenizer, loaded.stop_ids, stop_strings=list(stop_strings))


def prompt_ids(loaded: Any, item: Item) -> list[int]:
    """A plain-text prompt (few-shot for a base model) as the tokenizer encodes text; else the chat template."""
    if item.text is not None:
        return list(loaded.tokenizer(item.text)["input_ids"])
    return loaded.renderer.render_prompt(item.messages)


def rollouts(loaded: Any, task: Task, items: list[Item], out: Path, settings: GenerationSettings, *,
             backend: str = "hf", export_review: Path | None = None, seeds: int = 1, n_shot: int = 0,
             stop_strings: list[str] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate, grade and write; `extra` goes into results.json as it is (e.g. how retrieval was set up)."""
    scorer = get_scorer(task.scorer)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    rows = read_rows(pred_path)
    by_id = {it.id: k for k, it in enumerate(items)}
    done = {(by_id[r["id"]], r["sample"]) for r in rows if r["id"] in by_id}
    if done:
        print(f"[tunelab] {loaded.ref}: {len(done)} predictions already in {pred_path}; continuing", flush=True)
    prompts = [prompt_ids(loaded, it) for it in items]
    texts = [it.text if it.text is not None else loaded.renderer.prompt_text(it.messages) for it in items]
    gen = make_generator(loaded, backend, stop_strings)
    from .steps import step_similarity
    t0 = time.perf_counter()
    new_tokens = 0

    def write(batch: list[int], sample: int, results: list[tuple[str, int]]) -> None:
        nonlocal new_tokens
        with pred_path.open("a", encoding="utf-8") as f:
            for i, (text, n_tok) in zip(batch, results):
                it = items[i]
                row = {"id": it.id, "sample": sample, "prompt": texts[i], "prediction": text, "gold": it.gold,
                       **scorer.score(text, it.gold), "tokens": n_tok, "meta": it.meta}
                if it.reference and scorer.gold == "answer":  # math with a reference solution
                    row["steps"] = step_similarity(text, it.reference)
                row.setdefault("extracted", None)
                row.setdefault("correct", None)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
                new_tokens += n_tok

    gen.generate(prompts, settings, on_batch=write, skip=done)
    seconds = time.perf_counter() - t0
    rows = [r for r in rows if r["id"] in by_id]
    metrics = scorer.aggregate(rows, settings.n, task.breakdown)
    from .steps import aggregate_steps
    from .scores import spread

    if any("steps" in r for r in rows):
        metrics["steps"] = aggregate_steps([r["steps"] for r in rows if r["sample"] == 0 and "steps" in r])
    if seeds > 1:
        # each seed is a whole pass over the items (sample j is seeded seed + j): its headline score
        per_seed = [scorer.headline(scorer.aggregate([{**r, "sample": 0} for r in rows if r["sample"] == j], 1, ()))
                    for j in range(seeds)]
        metrics["seeds"] = {"seeds": [settings.seed + j for j in range(seeds)], **spread(per_seed)}
    results = {"task": task.name, "description": task.description, "scorer": scorer.name, **loaded.describe(),
               "n_shot": n_shot, "prompt_mode": "plain text" if any(it.text is not None for it in items) else "chat",
               "backend": backend, **metrics, "generation": settings.as_dict(),
               "timing": {"seconds": round(seconds, 2), "generated_tokens": new_tokens,
                          "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 and new_tokens else None},
               **(extra or {})}
    if loaded.warning:
        results["warning"] = loaded.warning
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if export_review is not None:
        write_review(export_review, rows)
    return results
