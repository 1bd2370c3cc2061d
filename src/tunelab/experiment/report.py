"""The comparison report, built from run and eval directories alone (`tunelab report DIR ...`).

Reads only files other commands wrote: each run's `metrics.jsonl`, `summary.json`, `config.yaml`,
`data_stats.json`, `error.txt`, and each `eval/<model>/<task>/results.json`. Writes `report.md`, a
self-contained `report.html` (images embedded) and the PNG charts beside them:
- `loss_train.png`: training loss vs step, all variants in one chart;
- `loss_val.png`: validation loss vs step;
- `data_scale.png`: score and final validation loss against training-set size, when variants
  differ in data size;
- alignment stages: `dpo.png` (reward margin and preference accuracy vs step, train and validation)
  and `grpo.png` (mean reward and accuracy of the rollouts vs step), with a table of each run's first
  and last values. Loss charts hold the sft/pt runs only: a DPO or GRPO loss is not a token
  cross-entropy and would share no scale with them.
Evaluations run with different settings (generation settings, template, n) are flagged in the
report instead of being compared silently.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from .. import rundir
from ..errors import DataError


def collect(dirs: list[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Path]:
    """(runs by name, evals by model label -> task -> results, output directory) from experiment
    directories (with runs/ and eval/) or plain run directories."""
    runs: dict[str, dict[str, Any]] = {}
    evals: dict[str, dict[str, Any]] = {}
    for d in dirs:
        d = Path(d)
        run_dirs = sorted(p for p in (d / "runs").iterdir() if p.is_dir()) if (d / "runs").is_dir() else [d]
        for r in run_dirs:
            if not any((r / f).exists() for f in (rundir.CONFIG, rundir.SUMMARY, rundir.ERROR, rundir.METRICS)):
                continue  # not a run (an unrelated folder under runs/)
            cfg = yaml.safe_load((r / rundir.CONFIG).read_text()) if (r / rundir.CONFIG).is_file() else {}
            runs[r.name] = {"dir": r, "metrics": rundir.read_metrics(r), "summary": rundir.read_json(r / rundir.SUMMARY),
                            "config": cfg or {}, "data": rundir.read_json(r / rundir.DATA_STATS),
                            "error": rundir.read_error(r)}
        if (d / "eval").is_dir():
            for label in sorted(p for p in (d / "eval").iterdir() if p.is_dir()):
                for task in sorted(p for p in label.iterdir() if p.is_dir()):
                    res = rundir.read_json(task / "results.json")
                    if res is not None:
                        evals.setdefault(label.name, {})[task.name] = res
    if not runs and not evals:
        raise DataError(f"{', '.join(map(str, dirs))}: no run and no evaluation found (a run directory has "
                        f"{rundir.CONFIG} or {rundir.SUMMARY}; an experiment directory has runs/ and eval/)")
    out = Path(dirs[0]) if len(dirs) == 1 else Path(dirs[0]).parent
    return runs, evals, out


def config_differences(runs: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): the config keys whose values differ between the runs, and each run's values;
    with the environment each was trained in, a study can be reproduced from its report alone."""
    flat = {name: rundir.flatten(r["config"]) for name, r in runs.items() if r["config"]}
    keys = sorted({k for f in flat.values() for k in f if not k.startswith(rundir.NOT_IDENTITY)})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    # one line per cell (yaml wraps long values at 80 columns, and a newline ends a markdown table row)
    rows = [[name] + [yaml.safe_dump(f.get(k), default_flow_style=True, width=10**9).strip().removesuffix("...").strip()
                      for k in varying] for name, f in flat.items()]
    return ["variant"] + varying, rows


def environment_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    from ..env import environment

    rows = []
    for name, r in [("this report", {"summary": {"environment": environment()}}), *runs.items()]:
        env = (r["summary"] or {}).get("environment")
        if env:
            libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
            rows.append([name, f"{env.get('tunelab')} ({env.get('commit') or 'no git'})", env.get("device") or "-",
                         env.get("date") or "-", f"python {env.get('python')}; {libs}"])
    return rows


def _stage(r: dict[str, Any]) -> str:
    return (r.get("config") or {}).get("stage") or "sft"


def _plot_loss(runs: dict[str, dict[str, Any]], split: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    drawn = False
    for name, r in runs.items():
        if _stage(r) not in ("sft", "pt"):
            continue  # alignment losses have their own charts
        pts = [(m["step"], m["loss"]) for m in r["metrics"] if m.get("split") == split]
        if pts:
            ax.plot(*zip(*pts), marker="o" if split == "val" else None, markersize=3, label=name)
            drawn = True
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy, nats)")
    ax.set_title(("training" if split == "train" else "validation") + " loss")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return drawn


# stage -> (chart file, [(metric, axis title)], table metrics); metrics as metrics.jsonl names them
ALIGNMENT = {
    "dpo": ("dpo.png", [("rewards/margins", "reward margin (chosen - rejected)"),
                        ("rewards/accuracy", "preference accuracy (chosen > rejected)")],
            ["loss", "rewards/margins", "rewards/accuracy", "rewards/chosen", "rewards/rejected"]),
    "grpo": ("grpo.png", [("reward", "mean reward of the rollouts"), ("accuracy", "rollout accuracy (correct)")],
             ["reward", "accuracy", "completion_length", "kl", "entropy"]),
}


def _plot_alignment(runs: dict[str, dict[str, Any]], stage: str, path: Path) -> bool:
    """Each metric of the stage vs step in its own panel: training (lines) and validation (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, panels, _ = ALIGNMENT[stage]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4), dpi=120)
    drawn = False
    for ax, (key, label) in zip(axes, panels):
        for name, r in runs.items():
            if _stage(r) != stage:
                continue
            for split, style in (("train", {}), ("val", {"marker": "o", "linestyle": "--"})):
                pts = [(m["step"], m[key]) for m in r["metrics"] if m.get("split") == split and key in m]
                if pts:
                    ax.plot(*zip(*pts), label=f"{name} ({split})", markersize=3, **style)
                    drawn = True
        ax.set_xlabel("optimizer step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if drawn:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return drawn


def alignment_rows(runs: dict[str, dict[str, Any]], stage: str) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): each run of `stage`, each metric's mean over the first and over the last quarter of its
    logged training steps (one step each when fewer than 8 were logged): a GRPO step's metrics come from a few
    prompts and jump from step to step, so the first and last step alone would say little."""
    keys = ALIGNMENT[stage][2]
    rows = []
    for name, r in runs.items():
        rows_train = [m for m in r["metrics"] if m.get("split") == "train"]
        if _stage(r) != stage or not rows_train:
            continue
        val = [m for m in r["metrics"] if m.get("split") == "val"]
        cells = [name]
        for k in keys:
            values = [m[k] for m in rows_train if isinstance(m.get(k), (int, float))]
            w = max(1, len(values) // 4)
            cells.append(f"{_fmt(sum(values[:w]) / w, 3)} -> {_fmt(sum(values[-w:]) / w, 3)}" if values else "-")
        if stage == "dpo":
            cells.append(_fmt(val[-1].get("rewards/accuracy"), 3) if val else "-")
        rows.append(cells)
    cols = ["variant", *(f"{k} (first -> last steps)" for k in keys)] + (["val accuracy"] if stage == "dpo" else [])
    return cols, rows


def _plot_scale(rows: list[tuple[int, float | None, float | None]], path: Path, task: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    xs = [r[0] for r in rows]
    if task and any(r[1] is not None for r in rows):
        ax.plot(xs, [100 * (r[1] or 0) for r in rows], marker="o", color="tab:blue", label=f"{task} score")
        ax.set_ylabel(f"{task} score (accuracy or ROUGE-L, %)")
    ax2 = ax.twinx()
    ax2.plot(xs, [r[2] for r in rows], marker="s", color="tab:red", label="final validation loss")
    ax2.set_ylabel("final validation loss (nats)")
    ax.set_xscale("log")
    ax.set_xlabel("training examples (log scale)")
    ax.set_title("data scale")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _scale_series(runs: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """Runs that differ only in training-set size (same method, targets, optimizer, lr): the largest such group."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, r in runs.items():
        size = (r["data"] or {}).get("examples_out", {}).get("train")
        if not size or r["summary"] is None:
            continue
        c = r["config"]
        m, o = c.get("method") or {}, c.get("optimizer") or {}
        key = json.dumps([m.get("name"), m.get("lora_r"), m.get("target_modules"), o.get("name"), o.get("lr")])
        groups.setdefault(key, []).append((name, size))
    best = max(groups.values(), key=lambda g: len({s for _, s in g}), default=[])
    return best if len({s for _, s in best}) > 1 else []


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _resource_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, r in runs.items():
        s = r["summary"]
        if s is None:
            rows.append([name, *["-"] * (len(RESOURCE_COLS) - 2), "failed: " + (r["error"] or "no summary")])
            continue
        epochs = s.get("epoch_times_s") or []
        per_epoch = sum(epochs) / len(epochs) if epochs else None
        rows.append([name, s["method"], s["optimizer"], f"{s['trainable_params']:,}",
                     f"{s['peak_mem_mb']:,.0f} ({'GPU alloc' if s['peak_mem_kind'].startswith('cuda') else 'CPU RSS'})",
                     _estimate_cell(s.get("estimate")), _fmt(per_epoch, 1), _fmt(s.get("supervised_tokens_per_s"), 1),
                     _fmt(s["train_time_s"], 1),
                     _fmt(s.get("final_train_loss")), _fmt(s.get("final_val_loss")), "ok"])
    return rows


def _estimate_cell(e: dict[str, Any] | None) -> str:
    """`tunelab estimate`'s prediction against what this run measured (summary.json `estimate`)."""
    if not e:
        return "-"
    if e.get("measured_mb") is None:
        return f"{e['estimate_mb']:,.0f} (measured: n/a)"
    return f"{e['estimate_mb']:,.0f} vs {e['measured_mb']:,.0f} ({100 * e['error']:+.1f}%)"


RESOURCE_COLS = ["variant", "method", "optimizer", "trainable params", "peak memory MB",
                 "estimate vs measured MB (error)", "time/epoch s",
                 "supervised tok/s", "total train s", "final train loss", "final val loss", "status"]


def _settings_key(res: dict[str, Any]) -> str:
    g = dict(res.get("generation") or {})
    g.pop("batch_size", None)  # batching does not change greedy outputs (tested)
    return json.dumps({"gen": g, "n": res.get("n"), "thinking": res.get("enable_thinking")}, sort_keys=True)


def _scorer(results: list[dict[str, Any]]) -> Any:
    """The scorer that produced these results (results.json records it; older files: by their keys)."""
    from ..evaluate.scorers import get_scorer

    names = {r.get("scorer") or ("rouge_zh" if "rouge-l" in r else "math") for r in results}
    return get_scorer(sorted(names)[0])


def _score_table(evals: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    tasks = sorted({t for per in evals.values() for t in per})
    labels = (["base"] if "base" in evals else []) + [k for k in evals if k != "base"]
    cols = ["model"]
    warnings = []
    scorers = {}
    for t in tasks:
        results = [evals[l][t] for l in labels if t in evals[l]]
        if len({_settings_key(r) for r in results}) > 1:
            warnings.append(f"task {t}: the models were evaluated with different settings (generation, n or "
                            "thinking mode); their scores are not directly comparable")
        scorers[t] = _scorer(results)
        cols += scorers[t].report_columns(t)
    rows = []
    for l in labels:
        row = [l]
        for t in tasks:
            r = evals[l].get(t)
            row += scorers[t].report_cells(r, None if l == "base" else evals.get("base", {}).get(t))
        rows.append(row)
    return cols, rows, warnings


def _labels(evals: dict[str, dict[str, Any]]) -> list[str]:
    return (["base"] if "base" in evals else []) + [k for k in evals if k != "base"]


def prompting_table(evals: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """How each model was asked on each task: "5-shot plain text", "0-shot chat", ... (base models are
    often asked few-shot in plain text and tuned models zero-shot in their chat template)."""
    tasks = sorted({t for per in evals.values() for t in per})
    rows = []
    for label in _labels(evals):
        row = [label]
        for t in tasks:
            r = evals[label].get(t)
            if r is None or r.get("task") in ("perplexity", "efficiency"):
                row.append("-")
            else:
                rag = r.get("retrieval")  # label+rag: the passages retrieved from an index (eval --rag)
                row.append(f"{r.get('n_shot') or 0}-shot, {r.get('prompt_mode') or 'chat'}"  # older results: chat
                           + (f", {rag['k']} passages retrieved ({rag['mode']}) from {rag['index']}" if rag else ""))
        rows.append(row)
    return ["model"] + tasks, rows


def seed_notes(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Differences to the base model no larger than the seed spread (`scores.within_spread`)."""
    from ..evaluate.scores import within_spread

    notes = []
    base = evals.get("base", {})
    for label in _labels(evals):
        for t, r in evals[label].items():
            b = base.get(t)
            if label == "base" or b is None or r.get("accuracy") is None or b.get("accuracy") is None:
                continue
            diff = r["accuracy"] - b["accuracy"]
            if within_spread(r, b, diff):
                stds = [x["seeds"]["std"] for x in (r, b) if x.get("seeds")]
                notes.append(f"{label} vs base on {t}: {100 * diff:+.1f} points, within the seed spread "
                             f"(std up to {100 * max(stds):.1f} points over {len(r.get('seeds', b.get('seeds'))['values'])} "
                             "seeds): not a difference the evaluation can resolve")
    return notes


def extra_tables(evals: dict[str, dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, columns, rows, how to read) for step similarity, seeds and human review, where results have them."""
    out = []
    cells = [(l, t, r) for l in _labels(evals) for t, r in sorted(evals[l].items())]
    steps = [(l, t, r["steps"]) for l, t, r in cells if (r.get("steps") or {}).get("n")]
    if steps:
        out.append(("Step similarity", ["model", "task", "n", "step recall", "step precision", "step F1", "order agreement"],
                    [[l, t, s["n"], f"{s['recall']:.2f}", f"{s['precision']:.2f}", f"{s['f1']:.2f}", f"{s['order']:.2f}"]
                     for l, t, s in steps],
                    "The model's solution steps aligned with the reference solution's (ROUGE-L >= 0.5 per step; "
                    "see evaluate/steps.py), beside exact-match accuracy."))
    seeds = [(l, t, r["seeds"]) for l, t, r in cells if r.get("seeds")]
    if seeds:
        out.append(("Variance over seeds", ["model", "task", "seeds", "mean", "std", "values"],
                    [[l, t, len(s["values"]), f"{100 * s['mean']:.1f}", f"{100 * s['std']:.1f}",
                      ", ".join(f"{100 * v:.1f}" for v in s["values"])] for l, t, s in seeds],
                    "Each seed is a whole sampled pass over the items; std is the sample standard deviation."))
    review = [(l, t, r["human_review"]) for l, t, r in cells if r.get("human_review")]
    if review:
        from ..evaluate.review import DIMENSIONS

        out.append(("Human review", ["model", "task", *DIMENSIONS],
                    [[l, t, *("-" if h["dimensions"][d]["mean"] is None else
                              f"{h['dimensions'][d]['mean']:.2f} (n={h['dimensions'][d]['n']})" for d in DIMENSIONS)]
                     for l, t, h in review],
                    "Mean scores from 1 to 5 given by reviewers in the exported CSV (tunelab grade --review)."))
    return out


def _md_table(cols: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(cols: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build(dirs: list[str | Path], out: str | Path | None = None, title: str | None = None) -> Path:
    runs, evals, default_out = collect([Path(d) for d in dirs])
    out = Path(out or default_out)
    out.mkdir(parents=True, exist_ok=True)
    charts = []
    if _plot_loss(runs, "train", out / "loss_train.png"):
        charts.append(("Training loss", "loss_train.png"))
    if _plot_loss(runs, "val", out / "loss_val.png"):
        charts.append(("Validation loss", "loss_val.png"))
    for stage, (png, _, _) in ALIGNMENT.items():
        if _plot_alignment(runs, stage, out / png):
            charts.append(({"dpo": "Preference tuning (DPO family)", "grpo": "GRPO rollouts"}[stage], png))
    series = _scale_series(runs)
    if series:
        task = next(iter(sorted({t for per in evals.values() for t in per})), None)
        def score(name: str) -> float | None:
            r = evals.get(name, {}).get(task) if task else None
            return _scorer([r]).headline(r) if r else None

        pts = [(size, score(n), (runs[n]["summary"] or {}).get("final_val_loss")) for n, size in series]
        _plot_scale(pts, out / "data_scale.png", task)
        charts.append(("Score and validation loss against data size", "data_scale.png"))
    res_rows = _resource_rows(runs)
    score_cols, score_rows, warnings = _score_table(evals)
    prompt_cols, prompt_rows = prompting_table(evals)
    notes = seed_notes(evals)
    extras = extra_tables(evals)
    for stage, how in (("dpo", "Training metrics logged each step (metrics.jsonl): the loss, the implicit rewards "
                               "beta * (log pi - log pi_ref) of the chosen and rejected replies, their margin, and "
                               "the share of pairs whose chosen reply gets the higher reward; the last column on the "
                               "held-out pairs."),
                       ("grpo", "Rollout metrics logged each step: the mean total reward of the sampled completions, "
                                "the share graded correct, their length in tokens, the KL to the reference (0 "
                                "without objective.kl_coef) and the policy's entropy.")):
        cols, rows = alignment_rows(runs, stage)
        if rows:
            how += (" 'first -> last steps': the mean over the first and over the last quarter of the logged steps "
                    "(one step each when fewer than 8).")
            extras.append(({"dpo": "Preference tuning", "grpo": "GRPO"}[stage], cols, rows, how))
    title = title or f"tunelab report: {out.name}"

    md = [f"# {title}", ""]
    for w in warnings:
        md += [f"> **Warning:** {w}", ""]
    md += ["## Resources", "", _md_table(RESOURCE_COLS, res_rows), "",
           "Peak memory: GPU max allocated, or the process's peak resident memory on CPU; 'estimate vs measured' is "
           "`tunelab estimate`'s prediction against the training's own part of that peak (on CPU the peak minus "
           "the memory before the model loaded). Time per epoch and "
           "throughput exclude evaluation and checkpointing.", ""]
    if score_rows:
        md += ["## Scores", "", _md_table(score_cols, score_rows), "",
               "Accuracy in percent with its 95% Wilson interval; 'vs base' is the difference to the base model "
               "in percentage points; 'final answer stated' is the share of outputs that state a final answer "
               "(\\boxed{}, 'The answer is', '#### N', '答：') rather than leaving it to the last number.", ""]
        md += ["How each model was asked (few-shot examples, plain text or chat template):", "",
               _md_table(prompt_cols, prompt_rows), ""]
        md += [f"> **Within seed noise:** {n}" for n in notes] + ([""] if notes else [])
    for title, cols, rows, how in extras:
        md += [f"## {title}", "", _md_table(cols, rows), "", how, ""]
    for caption, png in charts:
        md += [f"## {caption}", "", f"![{caption}]({png})", ""]
    diff_cols, diff_rows = config_differences(runs)
    env_cols, env_rows = ["what", "tunelab (commit)", "device", "date", "versions"], environment_rows(runs)
    if len(diff_cols) > 1:
        md += ["## What differs between the runs", "", _md_table(diff_cols, diff_rows), "",
               "Every other config key is the same for all runs (each run's full config is its config.yaml).", ""]
    md += ["## Environment", "", _md_table(env_cols, env_rows), ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")

    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".warn{background:#fff3cd;padding:.6em;border-left:4px solid #e0a800}img{max-width:100%}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='warn'>Warning: {html.escape(w)}</p>" for w in warnings]
    parts += ["<h2>Resources</h2>", _html_table(RESOURCE_COLS, res_rows)]
    if score_rows:
        parts += ["<h2>Scores</h2>", _html_table(score_cols, score_rows), "<p>How each model was asked:</p>",
                  _html_table(prompt_cols, prompt_rows)]
        parts += [f"<p class='warn'>Within seed noise: {html.escape(n)}</p>" for n in notes]
    for title, cols, rows, how in extras:
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(cols, rows), f"<p>{html.escape(how)}</p>"]
    for caption, png in charts:
        data = base64.b64encode((out / png).read_bytes()).decode()
        parts += [f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"]
    if len(diff_cols) > 1:
        parts += ["<h2>What differs between the runs</h2>", _html_table(diff_cols, diff_rows)]
    parts += ["<h2>Environment</h2>", _html_table(env_cols, env_rows)]
    parts.append("</body></html>")
    (out / "report.html").write_text("".join(parts), encoding="utf-8")
    return out / "report.md"
