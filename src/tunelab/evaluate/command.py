"""The `tunelab eval` and `tunelab grade` commands: argument handling, tables, output files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.conversation import DataError
from .tasks import get_task


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


def _fmt_ci(res: dict[str, Any]) -> str:
    if "accuracy" not in res:
        return "-"
    lo, hi = res["ci95"]
    return f"{res['accuracy']:.1%} [{lo:.1%}, {hi:.1%}]"


def eval_command(args: Any) -> int:
    from .generate import GenerationSettings
    from .runner import Loaded, evaluate_model, slug

    task = get_task(args.task)
    out = Path(args.output or f"runs/eval/{task.name}")
    if not args.model:
        raise DataError("give at least one --model (a built-in name, a directory, a run directory or a hub id)")
    if task.kind != "generate" and args.export_review:
        raise DataError(f"--export-review needs a generation task, not '{task.name}'")
    all_results = {}
    for ref in args.model:
        if getattr(args, "backend", "hf") == "vllm" and task.kind != "generate":
            raise DataError(f"--backend vllm is for rollouts; task '{task.name}' runs with transformers")
        loaded = Loaded(ref, template=args.template, enable_thinking=args.enable_thinking,
                        backend=getattr(args, "backend", "hf"))
        target = out / slug(ref) if len(args.model) > 1 else out
        if task.kind == "perplexity":
            res = _perplexity(loaded, task, args, target)
        elif task.kind == "efficiency":
            res = _efficiency(loaded, task, args, target)
        else:
            items = task.items(limit=args.limit, source=args.data, system_prompt=loaded.system_prompt,
                               instruction=loaded.task_instruction)
            settings = GenerationSettings(
                max_new_tokens=args.max_new_tokens or task.max_new_tokens or 512, temperature=args.temperature,
                top_p=args.top_p, n=args.n, seed=args.seed, batch_size=args.batch_size)
            review = Path(args.export_review) if args.export_review else None
            if review is not None and len(args.model) > 1:
                review = review.with_name(f"{review.stem}_{slug(ref)}{review.suffix}")
            res = evaluate_model(loaded, task, items, target, settings, export_review=review)
        all_results[ref] = res
        del loaded
    _print(task, all_results)
    if len(args.model) > 1:
        (out / "comparison.json").write_text(json.dumps(all_results, indent=2, ensure_ascii=False))
    print(f"results in {out}")
    return 0


def _perplexity(loaded: Any, task: Any, args: Any, out: Path) -> dict[str, Any]:
    from ..data.clean import normalise
    from ..data.sources import load_conversations
    from .perplexity import perplexity

    if not args.data:
        raise DataError("task perplexity needs --data FILE (text or conversations, any supported format)")
    examples = [normalise(e) for e in load_conversations(args.data, limit=args.limit)]
    res = {"task": task.name, "data": args.data, **loaded.describe(),
           **perplexity(loaded.model, loaded.renderer, examples, max_length=args.max_length, stride=args.stride)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return res


def _efficiency(loaded: Any, task: Any, args: Any, out: Path) -> dict[str, Any]:
    from .efficiency import measure

    rows = measure(loaded.model, loaded.tokenizer, prompt_tokens=args.prompt_tokens,
                   new_tokens=args.max_new_tokens or 32)
    res = {"task": task.name, **loaded.describe(), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return res


def _print(task: Any, results: dict[str, dict[str, Any]]) -> None:
    if task.kind == "efficiency":
        for ref, res in results.items():
            cols = ["batch", "prompt tok", "new tok", "TTFT s", "latency s", "decode tok/s", "peak MB"]
            _table(f"efficiency: {ref}", cols, [[r["batch_size"], r["prompt_tokens"], r["new_tokens"], r["ttft_s"],
                                                r["latency_s"], r["decode_tokens_per_s"], r["peak_mem_mb"]]
                                               for r in res["rows"]])
        return
    if task.kind == "perplexity":
        _table(f"perplexity on {next(iter(results.values()))['data']}", ["model", "scored tokens", "perplexity"],
               [[ref, r["scored_tokens"], f"{r['perplexity']:.4f}"] for ref, r in results.items()])
        return
    if task.scorer == "rouge_zh":
        _table(task.name, ["model", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4"],
               [[ref, r["n"], r["rouge-1"], r["rouge-2"], r["rouge-l"], r["bleu-4"]] for ref, r in results.items()])
        return
    strict_name = "strict (#### / boxed)" if task.scorer == "gsm8k" else "strict match"
    rows = []
    for ref, r in results.items():
        strict = f"{r['strict_accuracy']:.1%}" if "strict_accuracy" in r else "-"
        rows.append([ref, r["n"], _fmt_ci(r), strict, f"{r['parseable_rate']:.0%}",
                     r["timing"]["tokens_per_s"] or "-"])
    _table(task.name, ["model", "n", "accuracy [95% CI]", strict_name, "parseable", "gen tok/s"], rows)


def grade_command(args: Any) -> int:
    """Score existing outputs: rows {"prediction", "gold"} -> the same rows plus extracted and correct."""
    from .runner import _read_rows, aggregate, score_row

    task = get_task(args.task)
    if task.scorer not in ("math", "gsm8k", "choice"):
        raise DataError(f"tunelab grade needs a task with an answer grader (math, gsm8k, choice), not '{task.name}'")
    src = Path(args.file)
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise DataError(f"{out} exists; pass --overwrite to replace it")
    rows = []
    for i, row in enumerate(_read_rows(src), 1):
        missing = [k for k in ("prediction", "gold") if k not in row]
        if missing:
            raise DataError(f"{src}:{i}: missing {missing}; each row needs 'prediction' and 'gold'")
        rows.append({**row, **score_row(task, str(row["prediction"]), str(row["gold"])), "sample": 0,
                     "id": row.get("id", i)})
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "sample"}, ensure_ascii=False) + "\n"
                           for r in rows), encoding="utf-8")
    tmp.replace(out)
    summary = aggregate(task, rows, 1)
    _table(f"grade {src.name} as {task.name}", ["n", "accuracy [95% CI]", "parseable"],
           [[summary["n"], _fmt_ci(summary), f"{summary['parseable_rate']:.0%}"]])
    return 0
