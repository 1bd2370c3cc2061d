"""Rollout benchmark: tunelab's batched eval generation against one `generate` call per question.

    .venv/bin/python bench/rollout.py                         # CPU: SmolLM2-135M-Instruct, 64 GSM8K questions, ~12 min
    .venv/bin/python bench/rollout.py --batch-sizes 16,32,64  # also try larger eval batches (~2 min more each)
    .venv/bin/python bench/rollout.py --tiny --out /tmp/b     # seconds-scale smoke run (tiny-qwen3), used by the test

What is measured, per runner: the wall time of generating greedy answers to the first `--questions`
GSM8K test questions (prompt tokenization included, model loading excluded, the same for both), the
generated tokens (each answer counted up to and including its first stop token, the same function for
both runners) and tokens per second. Every run is a fresh child process; runners alternate within each
repeat (the order rotates between repeats) and the table reports the median over repeats.

Runners
  tunelab_bs<B>  the `tunelab eval` path: `Loaded` (model, tokenizer, renderer), the gsm8k task's items,
                 `renderer.render_prompt`, then `Generator.generate` with `GenerationSettings(batch_size=B)`
                 (batched, left-padded, grouped by prompt length, KV cache). B defaults to eval's 16.
  naive          the tutorial loop: for each question `tokenizer.apply_chat_template(messages,
                 add_generation_prompt=True, return_tensors="pt")`, then `model.generate(**inputs,
                 max_new_tokens=M, do_sample=False)`, one question at a time.
Both load `tunelab.models.load.load_model(model)` (fp32 on CPU): the same weights. The naive child
asserts that its prompt ids equal tunelab's for every question, so both answer the same prompts.

Predictions: greedy decoding of a left-padded batch is not bit-identical to batch 1 in fp32 (the padded
rows take other matmul paths), so an answer can diverge after a near-tie. The parent reports how many
answers are identical and, for the others, how many agree on their first `--agree-k` tokens, and the
gsm8k (flexible) accuracy of each runner.

Why max_new_tokens defaults to 128 (eval's default is 512): the naive loop decodes about 10 tokens/s on
this 2-core CPU, so 64 questions x 256 tokens would take ~25 min for that runner alone; at 128 the whole
benchmark (one repeat, both runners) takes ~15 min. Pass `--max-new-tokens 256 --repeats 2` where time
allows.

Results go to `--out/rollout_cpu.json` (`harness.save`: machine, library versions, exact command).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness

DEFAULTS = dict(model="smollm2-135m-instruct", questions=64, max_new_tokens=128, repeats=1)
TINY = dict(model="tiny-qwen3", questions=4, max_new_tokens=8, repeats=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.arg_parser(__doc__)
    p.add_argument("--model", default=None, help="tunelab model reference (default smollm2-135m-instruct)")
    p.add_argument("--questions", type=int, default=None, help="first N GSM8K test questions (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per answer, both runners (default 128)")
    p.add_argument("--batch-sizes", default=None, help="tunelab eval batch sizes, comma-separated (default: eval's 16)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats, median reported (default 1)")
    p.add_argument("--agree-k", type=int, default=32, help="prefix length (tokens) for 'agree in the first K'")
    p.add_argument("--tiny", action="store_true", help="tiny-qwen3, 4 questions, 8 tokens (smoke test)")
    args = p.parse_args(argv)
    return harness.fill_defaults(args, TINY if args.tiny else DEFAULTS)


# -- children -------------------------------------------------------------------------------------

def gsm8k_items(n: int, system_prompt: str | None = None, instruction: str | None = None) -> list[Any]:
    """The questions exactly as `tunelab eval --task gsm8k --limit n` builds them (eval/command.py)."""
    from tunelab.evaluate.tasks import TASKS

    return TASKS["gsm8k"].items(limit=n, system_prompt=system_prompt, instruction=instruction)


def cut(row: list[int], stop_ids: list[int], pad_id: int) -> list[int]:
    """New tokens up to and including the first stop token, padding dropped (as `Generator._batch`)."""
    n = next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row))
    return [t for t in row[:n] if t != pad_id or t in stop_ids]


def run_tunelab(s: dict[str, Any]) -> dict[str, Any]:
    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.models.loaded import Loaded

    loaded = Loaded(s["model"])  # load_model(..., dtype="auto") = fp32, as `tunelab eval`
    items = gsm8k_items(s["questions"], loaded.system_prompt, loaded.task_instruction)
    settings = GenerationSettings(max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"])
    gen = Generator(loaded.model, loaded.tokenizer, loaded.stop_ids)
    t0 = time.perf_counter()
    prompts = [loaded.renderer.render_prompt(it.messages) for it in items]
    out = gen.generate(prompts, settings, progress=False)
    seconds = time.perf_counter() - t0
    preds = [out[(i, 0)] for i in range(len(items))]
    return {"seconds": seconds, "tokens": sum(n for _, n in preds), "predictions": [t for t, _ in preds],
            "token_counts": [n for _, n in preds], "prompt_ids": prompts, "stop_ids": gen.stop_ids,
            "golds": [it.gold for it in items]}


def run_naive(s: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tunelab.data.render import build_renderer
    from tunelab.models.generation import stop_token_ids
    from tunelab.models.load import load_model, load_tokenizer

    tok = load_tokenizer(s["model"])
    model = load_model(s["model"]).eval()
    items = gsm8k_items(s["questions"])  # a built-in model has no trained system prompt or instruction
    stop = stop_token_ids(tok, build_renderer(tok).eot)  # only to count tokens as tunelab does
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    texts, counts, prompt_ids = [], [], []
    t0 = time.perf_counter()
    for it in items:
        # enable_thinking=False: what a Qwen3 user passes for a direct answer (tunelab's default);
        # templates without the variable (SmolLM2's) ignore it.
        inputs = tok.apply_chat_template(it.messages, add_generation_prompt=True, return_tensors="pt",
                                         enable_thinking=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=s["max_new_tokens"], do_sample=False)
        width = inputs["input_ids"].shape[1]
        new = cut(out[0, width:].tolist(), stop, pad)
        texts.append(tok.decode(new, skip_special_tokens=True).strip())
        counts.append(len(new))
        prompt_ids.append(inputs["input_ids"][0].tolist())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": sum(counts), "predictions": texts, "token_counts": counts,
            "prompt_ids": prompt_ids, "stop_ids": stop, "golds": [it.gold for it in items],
            "generation_config_eos": model.generation_config.eos_token_id}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    res = run_naive(spec) if spec["run"] == "naive" else run_tunelab(spec)
    res["tokens_per_s"] = res["tokens"] / res["seconds"] if res["seconds"] > 0 else None
    res["peak_rss_mb"] = harness.peak_rss_mb()
    return res


# -- parent ---------------------------------------------------------------------------------------

def compare(model: str, a: list[str], b: list[str], k: int) -> dict[str, Any]:
    """Identical answers; for the others, the common prefix in tokens (both re-tokenized the same way)."""
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(model)
    same = sum(x == y for x, y in zip(a, b))
    prefixes = []
    for x, y in zip(a, b):
        if x != y:
            ix, iy = tok(x, add_special_tokens=False)["input_ids"], tok(y, add_special_tokens=False)["input_ids"]
            prefixes.append(next((j for j, (p, q) in enumerate(zip(ix, iy)) if p != q), min(len(ix), len(iy))))
    return {"n": len(a), "identical": same, "differing": len(prefixes), "agree_k": k,
            "differing_but_agree_first_k": sum(p >= k for p in prefixes),
            "differing_common_prefix_tokens": sorted(prefixes)}


def accuracy(preds: list[str], golds: list[str]) -> float:
    from tunelab.evaluate.scorers import get_scorer

    return round(sum(bool(get_scorer("gsm8k").score(p, g)["correct"]) for p, g in zip(preds, golds)) / len(golds), 4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        harness.emit(child(json.loads(args.child)))
        return 0
    from tunelab.models.generate import GenerationSettings

    sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else [GenerationSettings().batch_size]
    base = {"model": args.model, "questions": args.questions, "max_new_tokens": args.max_new_tokens}
    specs = [{"run": "naive", **base}] + [{"run": f"tunelab_bs{b}", "batch_size": b, **base} for b in sizes]
    runs: dict[str, list[dict[str, Any]]] = {s["run"]: [] for s in specs}
    for rep in range(args.repeats):
        order = specs[rep % len(specs):] + specs[: rep % len(specs)]
        for spec in order:
            print(f"[rollout] repeat {rep + 1}/{args.repeats}: {spec['run']} ...", flush=True)
            res = harness.run_child(Path(__file__), spec, timeout=3600)
            print(f"[rollout]   {res['tokens']} tokens in {res['seconds']:.1f} s", flush=True)
            runs[spec["run"]].append(res)

    naive = runs["naive"][0]
    rows, checks = [], {}
    for spec in specs:
        name, first = spec["run"], runs[spec["run"]][0]
        if name != "naive":
            if first["prompt_ids"] != naive["prompt_ids"]:
                raise SystemExit(f"{name}: prompt ids differ from the naive loop's; the comparison is not fair")
            checks[name] = compare(args.model, first["predictions"], naive["predictions"], args.agree_k)
        med = lambda key: statistics.median(r[key] for r in runs[name])  # noqa: E731
        rows.append({"runner": name, "batch": spec.get("batch_size", 1), "questions": args.questions,
                     "tokens": first["tokens"], "wall s": round(med("seconds"), 2),
                     "tok/s": round(med("tokens_per_s"), 2),
                     "accuracy": accuracy(first["predictions"], first["golds"]),
                     "identical": f"{checks[name]['identical']}/{args.questions}" if name in checks else "-",
                     "peak MB": max(r["peak_rss_mb"] for r in runs[name])})
    for r in rows:
        r["speedup"] = harness.ratio(r["tok/s"], rows[0]["tok/s"])
        r["wall ratio"] = harness.ratio(rows[0]["wall s"], r["wall s"])
    best = max(rows[1:], key=lambda r: r["speedup"] or 0)
    default = next((r for r in rows[1:] if r["batch"] == GenerationSettings().batch_size), rows[1])
    target = {"target": ">= 4x the one-question-at-a-time loop (tokens/s)", "runner": default["runner"],
              "speedup": default["speedup"], "best_runner": best["runner"], "best_speedup": best["speedup"],
              "met": bool(default["speedup"] and default["speedup"] >= 4)}
    cols = ["runner", "batch", "questions", "tokens", "wall s", "tok/s", "speedup", "wall ratio", "accuracy",
            "identical", "peak MB"]
    print(f"\nRollouts: {args.model}, {args.questions} GSM8K test questions, greedy, max_new_tokens "
          f"{args.max_new_tokens}, median of {args.repeats} (speedup = tok/s over naive)\n")
    print(harness.table(rows, cols))
    for name, c in checks.items():
        print(f"\n{name} vs naive: {c['identical']}/{c['n']} answers identical; of the {c['differing']} that differ, "
              f"{c['differing_but_agree_first_k']} agree on their first {c['agree_k']} tokens "
              f"(common prefixes: {c['differing_common_prefix_tokens']})")
    print(f"\ntarget {target['target']}: {default['runner']} {default['speedup']}x "
          f"({'met' if target['met'] else 'MISSED'}); best {best['runner']} {best['speedup']}x")
    slim = {k: [{kk: vv for kk, vv in r.items() if kk not in ("prompt_ids",)} for r in v] for k, v in runs.items()}
    path = harness.save("rollout_cpu", {"settings": {**base, "batch_sizes": sizes, "repeats": args.repeats,
                                                     "agree_k": args.agree_k},
                                        "rows": rows, "prediction_checks": checks, "target": target,
                                        "runs": slim}, args.out)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
