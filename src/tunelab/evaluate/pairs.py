"""Preference pairs made from a model's own wrong answers on arith problems (the `arith_pairs` data set).

    tunelab data pairs --model smollm2-135m-instruct --task arith_en --n 330 --output pairs.jsonl

For each arith problem (generated with the TRAINING seed 0, not the evaluation task's 1234; the
rare problem that both seeds generate is left out, so the pairs never contain an evaluation question) the model is asked exactly as `tunelab eval` asks it
(`evaluate.run.task_items`: the task's prompt and instruction; `rollout.prompt_ids`; the batched
`Generator`, greedy), its reply graded with `data.grading.grade`, and a pair kept when the reply
is WRONG: chosen = the problem's reference solution, rejected = the model's own reply. So the pairs
say "prefer the worked solution over what you said", on the model's own mistakes (on-policy rejected
replies, as in the self-play/iterative DPO recipes).

Skipped, each skip counted in the sidecar: an empty reply, and a reference solution that does not
itself grade right (none should; checked rather than assumed). A reply cut off by `max_new_tokens` is
kept (rambling without reaching an answer is one of the mistakes to unlearn) and marked
`meta.finished: false`: rendering appends the end-of-turn the model did not produce, so the rejected
side's last token is not the model's own; filter on `finished` for the strictly on-policy pairs.

Writes JSON lines in the `pairs` layout (TRL's conversational prompt/chosen/rejected, plus `answer`
and `meta`), and `<FILE>.meta.json`: model, task, seed, n, generation settings, template, tunelab's
commit, library versions, date and the counts (asked, right, wrong, kept, skipped by reason).
The built-in `arith_pairs` set (`data/builtin/arith_pairs_en.jsonl`) was made this way. It lives in
`evaluate` (not `data`) because it is made of graded rollouts: data never imports evaluation.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import DataError


def replies(loaded: Any, items: list[Any], settings: Any, cache: Path | None = None,
            header: dict[str, Any] | None = None) -> dict[str, tuple[str, int]]:
    """{item id: (greedy reply, tokens generated)}. Asked one batch of items at a time in item order; with
    `cache`, each batch is appended there as it finishes (after a header line naming the model and the
    settings) and items already there are not asked again, so a stopped run continues where it stopped
    and the items done are always a prefix (on a busy CPU a few hundred replies take most of an hour)."""
    from .rollout import make_generator, prompt_ids, read_rows

    header = json.loads(json.dumps({"header": header or {}}, default=str))
    done: dict[str, tuple[str, int]] = {}
    if cache is not None and cache.exists():
        rows = read_rows(cache)
        if rows and rows[0] != header:
            raise DataError(f"{cache} holds replies made with other settings ({rows[0]}, now {header}); "
                            "delete it or pass another cache file")
        done = {r["id"]: (r["reply"], r["tokens"]) for r in rows[1:]}
    elif cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(header) + "\n", encoding="utf-8")
    gen = make_generator(loaded)
    todo = [it for it in items if it.id not in done]
    for k in range(0, len(todo), settings.batch_size):
        batch = todo[k:k + settings.batch_size]
        out = gen.generate([prompt_ids(loaded, it) for it in batch], settings, progress=False)
        new = {it.id: out[(i, 0)] for i, it in enumerate(batch)}
        if cache is not None:
            with cache.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps({"id": i, "reply": r, "tokens": t}, ensure_ascii=False) + "\n"
                             for i, (r, t) in new.items())
        done.update(new)
        print(f"[tunelab] {len(done)}/{len(items)} asked", flush=True)
    return done


def build_pairs(model: str, *, task: str = "arith_en", n: int = 330, seed: int = 0, max_new_tokens: int = 200,
                batch_size: int = 24, cache: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pair records, provenance) for `model` on the first `n` problems of `task` drawn with `seed`;
    `cache` keeps the replies as they come (see `replies`)."""
    from ..env import environment
    from ..data.grading import grade
    from .run import EvalSettings, load, task_items
    from .tasks import get_task

    base = get_task(task)
    if not base.source.startswith("arith"):
        raise DataError(f"task {task!r} is not an arith task; arith pairs need generated problems with solutions")
    spec = dataclasses.replace(base, n=n, seed=seed)  # the training seed, never the evaluation task's
    settings = EvalSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)  # greedy
    loaded = load(model, settings)
    items = task_items(spec, loaded, settings)
    # the generator's small templates repeat now and then across seeds (3 of the first 2,000 seed-0
    # English problems are among the 200 evaluation ones): those are not asked
    evaluated = {it.messages[-1]["content"] for it in task_items(base, loaded, settings)}
    n_items = len(items)
    items = [it for it in items if it.messages[-1]["content"] not in evaluated]
    gen_settings = settings.generation(spec)
    outputs = replies(loaded, items, gen_settings, cache,
                      {"model": model, "model_identity": loaded.identity, "task": task, "seed": seed,
                       "generation": gen_settings.as_dict()})
    counts = dict.fromkeys(("problems", "in_evaluation", "asked", "right", "wrong", "skipped_empty",
                            "skipped_reference_wrong", "kept", "kept_unfinished"), 0)
    counts.update(problems=n_items, in_evaluation=n_items - len(items), asked=len(items))
    rows = []
    for it in items:
        reply, n_tokens = outputs[it.id]
        verdict = grade(reply, it.gold)
        if verdict.correct:
            counts["right"] += 1
            continue
        counts["wrong"] += 1
        finished = n_tokens < max_new_tokens  # else cut off: no end-of-turn of its own
        if not reply.strip():
            counts["skipped_empty"] += 1
        elif not grade(it.reference or "", it.gold).correct:
            counts["skipped_reference_wrong"] += 1
        else:
            rows.append({"prompt": it.messages, "chosen": [{"role": "assistant", "content": it.reference}],
                         "rejected": [{"role": "assistant", "content": reply}], "answer": it.gold,
                         "meta": {"id": it.id, "extracted": verdict.extracted, "reply_tokens": n_tokens,
                                  "finished": finished}})
            counts["kept_unfinished"] += not finished
    counts["kept"] = len(rows)
    meta = {"made_by": "tunelab.evaluate.pairs.build_pairs", "model": model, "model_identity": loaded.identity,
            "task": task, "seed": seed, "n": n, "generation": gen_settings.as_dict(),
            **{k: v for k, v in loaded.describe().items() if k != "model"},
            "rule": "kept when the model's greedy reply grades wrong (meta.finished: false when max_new_tokens cut "
                    "it off): chosen = reference solution, rejected = the model's reply",
            "counts": counts, "environment": environment()}
    return rows, meta


def write_pairs(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> Path:
    """Write the pairs as JSON lines and the provenance next to them (`<out>.meta.json`); returns the latter."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    side = out.with_name(out.name + ".meta.json")
    side.write_text(json.dumps({**meta, "file": out.name}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return side


def main(args: Any) -> int:
    """`tunelab data pairs`: build, write, print the counts."""
    cache = Path(args.cache or f"{args.output}.replies.jsonl")
    rows, meta = build_pairs(args.model, task=args.task, n=args.n, seed=args.seed,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, cache=cache)
    side = write_pairs(rows, meta, Path(args.output))
    print(json.dumps(meta["counts"]))
    print(f"wrote {len(rows)} pairs to {args.output} (provenance: {side})")
    return 0
