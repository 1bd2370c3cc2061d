"""How right is `tunelab estimate`? Real trainings on this machine against the estimate's peak memory.

    .venv/bin/python bench/estimate.py                       # CPU matrix, tiny-qwen3 + SmolLM2-135M, ~35 min
    .venv/bin/python bench/estimate.py --tiny --out /tmp/b   # two tiny-qwen3 runs, about a minute (the smoke test)
    .venv/bin/python bench/estimate.py --only smollm2 --only lora   # rows whose name contains every --only
    .venv/bin/python bench/estimate.py --only scratch8k-,dpo-,grpo- --name estimate_cpu_stages   # a,b: any of them
    .venv/bin/python bench/estimate.py --rescore bench/results/estimate_cpu.json   # re-estimate saved measurements

What is measured. Each row is a real `tunelab.train.recipe.train(cfg)` in a fresh interpreter (peak RSS
never goes down, so one run per process). The child records the process's resident memory just before
the model is loaded (imports, tokenizer and the prepared data are in this baseline) and its peak
resident memory at the end of the run (VmHWM, `tunelab.memory`): measured = peak - baseline, the number
`tunelab train` reports on CPU. The estimate is `tunelab.estimate.estimate_from_config(cfg,
device="cpu")` with the prepared data's supervised fraction, computed in the parent before the run.

The data. Generated conversations that are all longer than `data.max_length` and truncated to it
(`data.overlong=truncate`), so every packed row holds exactly `max_length` tokens and every
micro-batch has `batch_size x max_length` tokens: the shape the estimate assumes (real data packs
rows less than full and peaks lower). The prompt is about 60 tokens, the rest is the supervised reply.

The other stages and vocabularies (rows named `scratch8k-`, `dpo-`, `grpo-`; each row carries its own
data and config overrides): `stage: pt` of a Qwen3-style model built from scratch for an 8,192-token
tokenizer (trained first by `tunelab tokenizer train` on ../shared/data, as `make scratch` does) on
generated text documents, every packed row full; `stage: dpo` on generated pairs whose both replies are
truncated to `max_length` (every row of a micro-batch exactly `max_length`: no padding), with the cached
reference (computed in the run, after the baseline); `stage: grpo` on built-in `arith_en` prompts (rows
are prompt + sampled completion, padded to the micro-batch's longest). For dpo and grpo the estimate is
made as `tunelab train` makes it, for the data's widest row (`seq_len`).

`--tunelab-src DIR` runs the children on another checkout's `src` (a frozen copy while the tree is
being edited); the estimate always comes from this checkout. Results: `--out/<--name>.json` (default
estimate_cpu, or estimate_cpu_tiny with --tiny).
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (bench/ is on sys.path when run as a script)

STEPS = 3  # the CPU heap reaches its steady state at step 2 (see docs/estimate.md)
SMOL, TINY = "smollm2-135m-instruct", "tiny-qwen3"


def _row(model: str, method: str, opt: str, batch: int, length: int, gc: bool = False) -> dict[str, Any]:
    short = {SMOL: "smollm2", TINY: "tinyqwen3"}[model]
    name = f"{short}-{method}-{opt}-b{batch}x{length}" + ("-gc" if gc else "")
    return {"name": name, "model": model, "method": method, "optimizer": opt, "batch": batch, "length": length,
            "gc": gc}


def _stage_row(name: str, model: str, method: str, opt: str, batch: int, length: int, *, stage: str, corpus: str,
               extra: tuple[str, ...] = (), gc: bool = False) -> dict[str, Any]:
    """A row with its own data (`corpus`, a key of CORPORA) and config overrides (`extra`, where `{work}` is the
    run's work directory: the tokenizer trained for it lives there)."""
    return {"name": name, "model": model, "method": method, "optimizer": opt, "batch": batch, "length": length,
            "gc": gc, "stage": stage, "corpus": corpus, "extra": list(extra)}


# configs/scratch/pretrain.yaml's model: Qwen3 layout, 4 layers x 256, tied, for an 8,192-token tokenizer
SCRATCH = ("model.from_scratch=true", "model.tokenizer={work}/tokenizer-8k", "model.arch.layers=4",
           "model.arch.hidden_size=256", "model.arch.heads=4", "model.arch.kv_heads=2",
           "model.arch.intermediate_size=768", "model.arch.context_length=512", "model.arch.tie_embeddings=true")
GRPO = ("data.n=64", "objective.num_generations=4", "objective.max_new_tokens=48", "objective.rewards=[correct,boxed]",
        "objective.sample_every=0")


def stage_rows() -> list[dict[str, Any]]:
    """Another vocabulary (8k, from scratch) and the dpo and grpo stages: a few minutes in all."""
    return [
        _stage_row("scratch8k-pt-full-adamw-b8x256", TINY, "full", "adamw", 8, 256, stage="pt", corpus="text",
                   extra=SCRATCH),
        _stage_row("scratch8k-pt-full-adamw-b16x512", TINY, "full", "adamw", 16, 512, stage="pt", corpus="text",
                   extra=SCRATCH),
        _stage_row("dpo-smollm2-lora-adamw-b2x256", SMOL, "lora", "adamw", 2, 256, stage="dpo", corpus="pairs"),
        _stage_row("dpo-smollm2-full-adamw-b2x256", SMOL, "full", "adamw", 2, 256, stage="dpo", corpus="pairs"),
        # batch counts prompts: 4 prompts x G=4 completions = 16 rows of prompt + up to 48 sampled tokens
        _stage_row("grpo-smollm2-lora-adamw-b4g4x48", SMOL, "lora", "adamw", 4, 256, stage="grpo",
                   corpus="arith_en", extra=GRPO),
    ]


def matrix(tiny: bool) -> list[dict[str, Any]]:
    """Methods x optimizers x batch x length x checkpointing on both models, sized for about 40 minutes
    on 2 idle cores (SmolLM2 rows dominate: 100-160 tokens/s)."""
    if tiny:
        return [_row(TINY, "full", "adamw", 2, 128), _row(TINY, "lora", "sgd", 2, 128, gc=True)]
    rows = []
    # tiny-qwen3: the 151,936-token vocabulary dominates (logits chunks, the embedding's gradient)
    for opt in ("adamw", "sgd", "adamw_8bit", "adafactor"):
        rows.append(_row(TINY, "full", opt, 4, 256))
    rows += [_row(TINY, "full", "adamw", 1, 256), _row(TINY, "full", "adamw", 8, 512),
             _row(TINY, "full", "adamw", 8, 512, gc=True), _row(TINY, "lora", "adamw", 4, 256),
             _row(TINY, "lora", "sgd", 2, 1024), _row(TINY, "lora", "adamw", 8, 512, gc=True),
             _row(TINY, "qlora", "adamw", 4, 256), _row(TINY, "qlora", "adafactor", 8, 512, gc=True)]
    # SmolLM2-135M: the decoder's weights, gradients, optimizer state and activations dominate
    rows += [_row(SMOL, "full", "adamw", 2, 256), _row(SMOL, "full", "sgd", 1, 512),
             _row(SMOL, "full", "adamw_8bit", 2, 256), _row(SMOL, "full", "adafactor", 1, 512),
             _row(SMOL, "full", "adamw", 2, 512, gc=True), _row(SMOL, "lora", "adamw", 2, 256),
             _row(SMOL, "lora", "adamw_8bit", 1, 512), _row(SMOL, "lora", "sgd", 4, 256, gc=True),
             _row(SMOL, "lora", "adafactor", 1, 768), _row(SMOL, "qlora", "adamw", 2, 256),
             _row(SMOL, "qlora", "sgd", 2, 512, gc=True)]
    return rows + stage_rows()


# ---------------------------------------------------------------------------------------------
# data: conversations longer than any max_length, truncated to it


WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force "
         "education").split()


def write_data(path: Path, n: int = 96, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            prompt = "Continue the list: " + " ".join(rng.choice(WORDS) for _ in range(40))
            reply = " ".join(rng.choice(WORDS) for _ in range(1600))
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": reply}]}) + "\n")


def write_text(path: Path, n: int = 96, seed: int = 0) -> None:
    """Raw text documents for `stage: pt`, each longer than any max_length (packed rows are all full)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(1600))}) + "\n")


def write_pairs(path: Path, n: int = 12, seed: int = 0) -> None:
    """Preference pairs for `stage: dpo` whose both replies are longer than any max_length."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            prompt = "Continue the list: " + " ".join(rng.choice(WORDS) for _ in range(40))
            chosen, rejected = (" ".join(rng.choice(WORDS) for _ in range(1600)) for _ in range(2))
            f.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")


# a row's data: a file written into the work directory, or a built-in data set's name
CORPORA = {"conversations": ("long_conversations.jsonl", write_data), "text": ("long_texts.jsonl", write_text),
           "pairs": ("long_pairs.jsonl", write_pairs), "arith_en": ("arith_en", None)}


def corpus_path(row: dict[str, Any], work: Path) -> Path:
    name, write = CORPORA[row.get("corpus", "conversations")]
    if write is None:
        return Path(name)
    path = work / name
    if not path.is_file():
        write(path)
    return path


def make_assets(rows: list[dict[str, Any]], work: Path) -> None:
    """What rows need beyond their data: the 8k tokenizer of the from-scratch rows, trained by tunelab's own
    `tokenizer train` on ../shared/data exactly as `make scratch` trains it (a few seconds)."""
    import subprocess

    tok = work / "tokenizer-8k"
    if any("{work}/tokenizer-8k" in x for r in rows for x in r.get("extra", ())) and not (tok / "tokenizer.json").is_file():
        cmd = [sys.executable, "-m", "tunelab", "tokenizer", "train", "gsm8k", "alpaca_en_demo", "alpaca_zh_demo",
               "belle_eval", "cmath", "math500", "--vocab-size", "8192", "--output", str(tok), "--overwrite"]
        proc = subprocess.run(cmd, cwd=harness.REPO, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"tokenizer train failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def overrides(row: dict[str, Any], data: Path, out: Path, work: Path | None = None) -> list[str]:
    extra = [x.replace("{work}", str(work)) for x in row.get("extra", ())]
    if row.get("stage"):
        extra = [f"stage={row['stage']}", *extra]
    return [f"model.name={row['model']}", f"method.name={row['method']}", f"optimizer.name={row['optimizer']}",
            f"training.batch_size={row['batch']}", f"data.max_length={row['length']}",
            f"training.gradient_checkpointing={str(row['gc']).lower()}", f"data.name={data}",
            "data.overlong=truncate", "data.dedup=none", "data.val_size=0", "data.packing=true",
            f"training.max_steps={STEPS}", "training.grad_accum=1", "training.log_every=1", "training.eval_every=0",
            "training.save_every=0", "schedule.name=constant", f"output.dir={out}", *extra]


# ---------------------------------------------------------------------------------------------
# the child: one training, measured


def child(spec: dict[str, Any]) -> None:
    from tunelab import config as C
    from tunelab.estimate.check import current_rss_mb as _rss_mb  # measured as tunelab train measures
    from tunelab.models import load as L
    from tunelab.train import recipe

    cfg = C.load(None, spec["overrides"])
    if spec.get("prepare_only"):
        from tunelab.data.prepare import prepare_from_config

        tokenizer = L.load_tokenizer(cfg.model.tokenizer or cfg.model.name)  # runs on older trees too (--tunelab-src)
        if cfg.stage == "grpo":  # prompts with answers; a row is a prompt and up to max_new_tokens sampled
            from tunelab.train.grpo import prepare_prompts

            prepared = prepare_prompts(cfg, tokenizer)
            stats = dict(prepared.stats, widest=prepared.stats["prompt_length"]["max"] + cfg.objective.max_new_tokens)
            harness.emit({"stats": stats})
            return
        prepared = prepare_from_config(cfg, tokenizer=tokenizer)
        prepared = prepared[0] if isinstance(prepared, tuple) else prepared  # (prepared, tokenizer) in older trees
        stats = dict(prepared.stats)
        if cfg.stage == "dpo":  # a micro-batch is padded to its widest side: what `tunelab train` estimates for
            from tunelab.data.batching import pair_lengths

            stats["widest"] = max(pair_lengths(prepared.load("train")))
        harness.emit({"stats": stats})
        return
    marks: list[tuple[str, float, float]] = []
    # live tensor bytes (tunelab's CPU allocator, when it is the one in use): now, and the most since the
    # previous mark, MB over the live bytes at the baseline; what resident memory holds beyond them is slack
    live: list[tuple[str, float, float]] = []
    live_base: list[int] = []
    load_model = L.load_model

    def live_mark(name: str) -> None:
        from tunelab.models import cpu_alloc

        now, peak = cpu_alloc.allocated()
        live_base[:] = live_base or [now]
        live.append((name, round((now - live_base[0]) / 2**20, 1), round((peak - live_base[0]) / 2**20, 1)))
        cpu_alloc.reset_peak()

    def measured_load(*args: Any, **kwargs: Any) -> Any:
        marks.append(("before_load", _rss_mb(), harness.peak_rss_mb()))  # the baseline: imports, tokenizer, data
        live_mark("before_load")
        model = load_model(*args, **kwargs)
        marks.append(("after_load", _rss_mb(), harness.peak_rss_mb()))
        live_mark("after_load")
        return model

    L.load_model = measured_load  # recipe.train imports load_model from the module when it runs
    step_s: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, state: dict) -> None:
        now = time.perf_counter()
        step_s.append(now - last[0])
        last[0] = now
        marks.append((f"step{step}", _rss_mb(), harness.peak_rss_mb()))
        live_mark(f"step{step}")

    summary = recipe.train(cfg, overwrite=True, callbacks=(on_step,))
    marks.append(("end", _rss_mb(), harness.peak_rss_mb()))
    live_mark("end")
    base = marks[0][1]
    peak = harness.peak_rss_mb()
    metrics = [json.loads(l) for l in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines() if l]
    harness.emit({
        "baseline_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "measured_mb": round(peak - base, 1),
        "peak_before_load_mb": round(marks[0][2], 1),
        # the first mark at which the process's peak was already reached: where the peak happened
        "peak_at": next(n for n, _, p in marks if p >= peak - 0.5),
        "marks": [(n, round(r - base, 1), round(p - base, 1)) for n, r, p in marks],
        "live_marks": live,
        "steps": [{k: m.get(k) for k in ("step", "tokens", "supervised_tokens")} for m in metrics
                  if m.get("split") == "train"],
        "step_s": [round(s, 3) for s in step_s], "summary_peak_mem_mb": summary["peak_mem_mb"],
    })


# ---------------------------------------------------------------------------------------------
# the parent: prepare, run, estimate, compare


def run_child(spec: dict[str, Any], src: str | None) -> dict[str, Any]:
    env = {"PYTHONPATH": src} if src else None
    return harness.run_child(Path(__file__), spec, timeout=1800, env=env)


def estimate_row(row: dict[str, Any], data: Path, out: Path, supervised_fraction: float | None,
                 work: Path | None = None) -> dict[str, Any]:
    """The estimate `tunelab train` prints for the row: for dpo and grpo (unpacked rows) made for the data's
    widest row, as the run makes it; grpo has no supervised fraction before its rollouts (None)."""
    from tunelab import config as C
    from tunelab.estimate import estimate_from_config

    cfg = C.load(None, overrides(row, data, out, work))
    widest = row["stats"].get("widest") if row.get("stage") in ("dpo", "grpo") else None
    est = estimate_from_config(cfg, device="cpu", supervised_fraction=supervised_fraction, seq_len=widest)
    return est.to_dict()


def score(row: dict[str, Any]) -> dict[str, Any]:
    est = row["estimate"]["peak_bytes"] / 2**20
    meas = row["measured"]["measured_mb"]
    out = {"name": row["name"], "estimate_mb": round(est, 1), "measured_mb": meas,
           "error": round((est - meas) / meas, 4), "peak_at": row["measured"]["peak_at"],
           "est_phase": row["estimate"]["peak_phase"]}
    steps = row["measured"]["step_s"][1:]  # step 1 pays one-off costs (optimizer state, warm-up)
    if steps:
        out["step_s"] = round(sorted(steps)[len(steps) // 2], 2)
        out["est_step_s"] = round(row["estimate"]["step_time_s"], 2)
    return out


def report(rows: list[dict[str, Any]]) -> str:
    shown = []
    for row in rows:
        s = score(row)
        shown.append({"model": row["model"] + (" (scratch, 8k)" if row["name"].startswith("scratch8k") else ""),
                      "method": row["method"], "optimizer": row["optimizer"],
                      "batch x length": f"{row['batch']} x {row['length']}", "stage": row.get("stage", "sft"),
                      "checkpointing": "on" if row["gc"] else "",
                      "estimate MB": round(s["estimate_mb"]), "measured MB": round(s["measured_mb"]),
                      "error": f"{s['error']:+.1%}", "estimated peak": s["est_phase"],
                      "step s (est.)": f"{s.get('step_s', '-')} ({s.get('est_step_s', '-')})"})
    table = harness.table(shown, list(shown[0]))
    errs = [abs(score(r)["error"]) for r in rows]
    line = (f"\n{len(errs)} rows: max |error| {max(errs):.1%}, mean |error| {sum(errs) / len(errs):.1%}, "
            f"within 10%: {sum(e <= 0.10 for e in errs)}, within 20%: {sum(e <= 0.20 for e in errs)}")
    return table + line


def main() -> int:
    p = harness.arg_parser(__doc__)
    p.add_argument("--tiny", action="store_true", help="two tiny-qwen3 runs (smoke test)")
    p.add_argument("--only", action="append", default=[],
                   help="run rows whose name contains this (repeatable: all of them; a,b: any of a, b)")
    p.add_argument("--name", help="results file name (default estimate_cpu, estimate_cpu_tiny with --tiny)")
    p.add_argument("--tunelab-src", help="run the trainings with this checkout's src on PYTHONPATH")
    p.add_argument("--rescore", help="recompute the estimates of a saved results file (no training)")
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.rescore:  # the measurements stay; the estimates are recomputed by this checkout's code
        path = Path(args.rescore)
        doc = json.loads(path.read_text())
        work = Path(tempfile.mkdtemp(prefix="tunelab-bench-estimate-"))
        make_assets(doc["rows"], work)  # the 8k tokenizer again (same corpus, same tokenizer): its vocabulary
        for row in doc["rows"]:
            row["estimate"] = estimate_row(row, Path(row["data"]), Path(row["run_dir"]),
                                           row["stats"]["supervised_fraction"], work)
        shutil.rmtree(work, ignore_errors=True)
        doc["estimates_recomputed"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(report(doc["rows"]))
        return 0

    rows = [r for r in matrix(args.tiny) if all(any(a in r["name"] for a in o.split(",")) for o in args.only)]
    name = args.name or ("estimate_cpu_tiny" if args.tiny else "estimate_cpu")
    work = Path(tempfile.mkdtemp(prefix="tunelab-bench-estimate-"))
    make_assets(rows, work)
    stats: dict[tuple, dict] = {}
    done = []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        out = work / row["name"]
        data = corpus_path(row, work)
        ov = overrides(row, data, out, work)
        key = (row["model"], row["length"], str(data), *row.get("extra", ()))
        if key not in stats:  # tokenize in its own process: its peak must not precede the baseline
            stats[key] = run_child({"run": f"prepare {key[:3]}", "overrides": ov, "prepare_only": True},
                                   args.tunelab_src)["stats"]
        row = {**row, "data": str(data), "run_dir": str(out), "stats": stats[key]}
        row["estimate"] = estimate_row(row, data, out, stats[key]["supervised_fraction"], work)
        row["measured"] = run_child({"run": row["name"], "overrides": ov}, args.tunelab_src)
        shutil.rmtree(out, ignore_errors=True)  # the run's model and checkpoints: up to 2 GB each
        done.append(row)
        harness.save(name, {"steps": STEPS, "rows": done}, args.out)
        s = score(row)
        print(f"[{i + 1}/{len(rows)} {time.perf_counter() - t0:6.0f}s] {row['name']}: "
              f"estimate {s['estimate_mb']:.0f} MB, measured {s['measured_mb']:.0f} MB, error {s['error']:+.1%} "
              f"(peak at {s['peak_at']})", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    path = harness.save(name, {"steps": STEPS, "rows": done}, args.out)
    print(report(done))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
