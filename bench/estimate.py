"""How right is `tunelab estimate`? Real trainings on this machine against the estimate's peak memory.

    .venv/bin/python bench/estimate.py                       # CPU matrix, tiny-qwen3 + SmolLM2-135M, ~35 min
    .venv/bin/python bench/estimate.py --tiny --out /tmp/b   # two tiny-qwen3 runs, about a minute (the smoke test)
    .venv/bin/python bench/estimate.py --only smollm2 --only lora   # rows whose name contains every --only
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

`--tunelab-src DIR` runs the children on another checkout's `src` (a frozen copy while the tree is
being edited); the estimate always comes from this checkout. Results: `--out/estimate_cpu.json`.
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
    return rows


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


def overrides(row: dict[str, Any], data: Path, out: Path) -> list[str]:
    return [f"model.name={row['model']}", f"method.name={row['method']}", f"optimizer.name={row['optimizer']}",
            f"training.batch_size={row['batch']}", f"data.max_length={row['length']}",
            f"training.gradient_checkpointing={str(row['gc']).lower()}", f"data.name={data}",
            "data.overlong=truncate", "data.dedup=none", "data.val_size=0", "data.packing=true",
            f"training.max_steps={STEPS}", "training.grad_accum=1", "training.log_every=1", "training.eval_every=0",
            "training.save_every=0", "schedule.name=constant", f"output.dir={out}"]


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
        prepared = prepare_from_config(cfg, tokenizer=tokenizer)
        prepared = prepared[0] if isinstance(prepared, tuple) else prepared  # (prepared, tokenizer) in older trees
        harness.emit({"stats": prepared.stats})
        return
    marks: list[tuple[str, float, float]] = []
    load_model = L.load_model

    def measured_load(*args: Any, **kwargs: Any) -> Any:
        marks.append(("before_load", _rss_mb(), harness.peak_rss_mb()))  # the baseline: imports, tokenizer, data
        model = load_model(*args, **kwargs)
        marks.append(("after_load", _rss_mb(), harness.peak_rss_mb()))
        return model

    L.load_model = measured_load  # recipe.train imports load_model from the module when it runs
    step_s: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, state: dict) -> None:
        now = time.perf_counter()
        step_s.append(now - last[0])
        last[0] = now
        marks.append((f"step{step}", _rss_mb(), harness.peak_rss_mb()))

    summary = recipe.train(cfg, overwrite=True, callbacks=(on_step,))
    marks.append(("end", _rss_mb(), harness.peak_rss_mb()))
    base = marks[0][1]
    peak = harness.peak_rss_mb()
    metrics = [json.loads(l) for l in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines() if l]
    harness.emit({
        "baseline_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "measured_mb": round(peak - base, 1),
        "peak_before_load_mb": round(marks[0][2], 1),
        # the first mark at which the process's peak was already reached: where the peak happened
        "peak_at": next(n for n, _, p in marks if p >= peak - 0.5),
        "marks": [(n, round(r - base, 1), round(p - base, 1)) for n, r, p in marks],
        "steps": [{k: m.get(k) for k in ("step", "tokens", "supervised_tokens")} for m in metrics
                  if m.get("split") == "train"],
        "step_s": [round(s, 3) for s in step_s], "summary_peak_mem_mb": summary["peak_mem_mb"],
    })


# ---------------------------------------------------------------------------------------------
# the parent: prepare, run, estimate, compare


def run_child(spec: dict[str, Any], src: str | None) -> dict[str, Any]:
    env = {"PYTHONPATH": src} if src else None
    return harness.run_child(Path(__file__), spec, timeout=1800, env=env)


def estimate_row(row: dict[str, Any], data: Path, out: Path, supervised_fraction: float) -> dict[str, Any]:
    from tunelab import config as C
    from tunelab.estimate import estimate_from_config

    cfg = C.load(None, overrides(row, data, out))
    est = estimate_from_config(cfg, device="cpu", supervised_fraction=supervised_fraction)
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
        shown.append({"model": row["model"], "method": row["method"], "optimizer": row["optimizer"],
                      "batch x length": f"{row['batch']} x {row['length']}", "checkpointing": "on" if row["gc"] else "",
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
    p.add_argument("--only", action="append", default=[], help="run rows whose name contains this (repeatable: all)")
    p.add_argument("--tunelab-src", help="run the trainings with this checkout's src on PYTHONPATH")
    p.add_argument("--rescore", help="recompute the estimates of a saved results file (no training)")
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.rescore:  # the measurements stay; the estimates are recomputed by this checkout's code
        path = Path(args.rescore)
        doc = json.loads(path.read_text())
        for row in doc["rows"]:
            row["estimate"] = estimate_row(row, Path(row["data"]), Path(row["run_dir"]),
                                           row["stats"]["supervised_fraction"])
        doc["estimates_recomputed"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(report(doc["rows"]))
        return 0

    rows = [r for r in matrix(args.tiny) if all(o in r["name"] for o in args.only)]
    work = Path(tempfile.mkdtemp(prefix="tunelab-bench-estimate-"))
    data = work / "long_conversations.jsonl"
    write_data(data)
    stats: dict[tuple[str, int], dict] = {}
    done = []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        out = work / row["name"]
        ov = overrides(row, data, out)
        key = (row["model"], row["length"])
        if key not in stats:  # tokenize in its own process: its peak must not precede the baseline
            stats[key] = run_child({"run": f"prepare {key}", "overrides": ov, "prepare_only": True},
                                   args.tunelab_src)["stats"]
        row = {**row, "data": str(data), "run_dir": str(out), "stats": stats[key]}
        row["estimate"] = estimate_row(row, data, out, stats[key]["supervised_fraction"])
        row["measured"] = run_child({"run": row["name"], "overrides": ov}, args.tunelab_src)
        shutil.rmtree(out, ignore_errors=True)  # the run's model and checkpoints: up to 2 GB each
        done.append(row)
        harness.save("estimate_cpu_tiny" if args.tiny else "estimate_cpu", {"steps": STEPS, "rows": done}, args.out)
        s = score(row)
        print(f"[{i + 1}/{len(rows)} {time.perf_counter() - t0:6.0f}s] {row['name']}: "
              f"estimate {s['estimate_mb']:.0f} MB, measured {s['measured_mb']:.0f} MB, error {s['error']:+.1%} "
              f"(peak at {s['peak_at']})", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    name = "estimate_cpu_tiny" if args.tiny else "estimate_cpu"
    path = harness.save(name, {"steps": STEPS, "rows": done}, args.out)
    print(report(done))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
