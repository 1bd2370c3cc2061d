"""The `tunelab eval` and `tunelab grade` commands: arguments in, tables printed, files written.

The work itself is `evaluate.run.evaluate` (shared with experiments and sweeps) and the task's
scorer (`evaluate/scorers/`), which also lays out the table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError, OutputExistsError
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


def settings_from_args(args: Any) -> Any:
    from .run import EvalSettings

    extra = {k: getattr(args, k) for k in ("n_shot", "fewshot_as_multiturn", "fewshot_data", "fewshot_seed",
                                           "chat_template", "split", "seeds", "rag", "rag_k", "rag_mode", "rag_placement",
                                           "rag_encoder", "device") if getattr(args, k, None) is not None}
    return EvalSettings(limit=args.limit, data=args.data, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, n=args.n, seed=args.seed,
                        batch_size=args.batch_size, backend=args.backend, template=args.template,
                        enable_thinking=args.enable_thinking, max_length=args.max_length, stride=args.stride,
                        prompt_tokens=args.prompt_tokens, **extra)


def eval_command(args: Any) -> int:
    from .rollout import slug
    from .run import check, evaluate

    task = get_task(args.task)
    settings = settings_from_args(args)
    if not args.model:
        raise DataError("give at least one --model (a built-in name, a directory, a run directory or a hub id)")
    if task.kind != "generate" and args.export_review:  # log-likelihood scores have no answer to review
        raise DataError(f"--export-review needs a generation task, not '{task.name}'")
    check(task, settings)  # before any model loads
    out = Path(args.output or f"runs/eval/{task.name}")
    all_results = {}
    for ref in args.model:
        target = out / slug(ref) if len(args.model) > 1 else out
        review = Path(args.export_review) if args.export_review else None
        if review is not None and len(args.model) > 1:
            review = review.with_name(f"{review.stem}_{slug(ref)}{review.suffix}")
        all_results[ref] = evaluate(ref, task, out=target, settings=settings, export_review=review,
                                    overwrite=getattr(args, "overwrite", False))
    _print(task, all_results)
    if len(args.model) > 1:
        (out / "comparison.json").write_text(json.dumps(all_results, indent=2, ensure_ascii=False))
    print(f"results in {out}")
    return 0


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
    from .scorers import get_scorer

    _table(task.name, *get_scorer(task.scorer).table(results))
    for ref, r in results.items():
        if task.kind == "choice_ll" and len(r.get("by_category") or {}) > 1:
            _table(f"{task.name} by category: {ref}", ["category", "n", "acc [95% CI]", "acc_norm"],
                   [[c, v["n"], f"{v['acc']:.1%} [{v['ci95'][0]:.1%}, {v['ci95'][1]:.1%}]", f"{v['acc_norm']:.1%}"]
                    for c, v in r["by_category"].items()])
        if r.get("steps", {}).get("n"):
            st = r["steps"]
            print(f"{ref}: step similarity vs the reference solution (n={st['n']}): recall {st['recall']:.2f}, "
                  f"precision {st['precision']:.2f}, F1 {st['f1']:.2f}, order agreement {st['order']:.2f}")
        if r.get("seeds"):
            sd = r["seeds"]
            print(f"{ref}: over seeds {sd['seeds']}: mean {sd['mean']:.4f}, std {sd['std']:.4f} (values {sd['values']})")


def review_command(args: Any) -> int:
    """Read a filled-in review CSV back: mean score per dimension, printed, stored with --eval DIR
    (results.json "human_review") and/or written to --output FILE.json."""
    from .review import attach, read_review

    summary = read_review(Path(args.review))
    _table(f"human review: {args.review} ({summary['rows']} rows)", ["dimension", "mean (1-5)", "scored rows"],
           [[d, "-" if v["mean"] is None else f"{v['mean']:.2f}", v["n"]] for d, v in summary["dimensions"].items()])
    if getattr(args, "eval", None):
        print(f"stored in {attach(summary, Path(args.eval))}")
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        out.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


def grade_command(args: Any) -> int:
    """Score existing outputs: rows {"prediction", "gold"} -> the same rows plus extracted and correct."""
    from .rollout import read_rows
    from .scorers import get_scorer

    if getattr(args, "review", None):
        return review_command(args)
    if not args.file or not args.task or not args.output:
        raise DataError("tunelab grade needs FILE.jsonl, --task and --output (or --review FILE.csv)")
    task = get_task(args.task)
    scorer = get_scorer(task.scorer) if task.kind == "generate" else None
    if scorer is None or scorer.gold != "answer":
        raise DataError(f"tunelab grade needs a task graded by its answer (math, gsm8k, choice), not '{task.name}'")
    src = Path(args.file)
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    rows = []
    for i, row in enumerate(read_rows(src), 1):
        if not isinstance(row, dict):
            raise DataError(f"{src}:{i}: each line must be a JSON object with 'prediction' and 'gold', "
                            f"got {type(row).__name__}")
        missing = [k for k in ("prediction", "gold") if k not in row]
        if missing:
            raise DataError(f"{src}:{i}: missing {missing}; each row needs 'prediction' and 'gold'")
        rows.append({**row, **scorer.score(str(row["prediction"]), str(row["gold"])), "sample": 0,
                     "id": row.get("id", i)})
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "sample"}, ensure_ascii=False) + "\n"
                           for r in rows), encoding="utf-8")
    tmp.replace(out)
    summary = scorer.aggregate(rows, 1)
    lo, hi = summary["ci95"]
    _table(f"grade {src.name} as {task.name}", ["n", "accuracy [95% CI]", "parseable"],
           [[summary["n"], f"{summary['accuracy']:.1%} [{lo:.1%}, {hi:.1%}]", f"{summary['parseable_rate']:.0%}"]])
    return 0
