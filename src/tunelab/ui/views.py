"""What a run's page and the comparison show, computed by the code that computes it elsewhere.

- a run's curves: which metrics of `metrics.jsonl` each chart draws, by the run's stage (the preference
  curves of a DPO run, the rewards of a GRPO run, next to the loss); the page draws them from the rows;
- a GRPO run's samples: the newest rows of `samples.jsonl`;
- the data example: `data.show.marked_example` on the first prepared training example (the prepared
  data set in tunelab's cache, found by the run's `data_fingerprint`) with the run's tokenizer, as
  `tunelab prepare` prints it;
- the comparison: the picked runs and their evaluations are linked into a temporary directory laid
  out as an experiment (`runs/<name>`, `eval/<name>/<task>`), and `experiment.report` reads it exactly
  as `tunelab report` reads an experiment: the same resource table, score table with intervals,
  config differences, and for the download the same report.html.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .. import rundir
from .roots import Roots
from .scan import Scanner, checkpoints

EXAMPLE_CHARS = 6000  # of the rendered example shown; the rest is cut, and the page says so


# -- a run's curves ----------------------------------------------------------------------------
# A chart is (name, title, [(label, split, metric, dots)]); metrics as metrics.jsonl names them
# (train/metrics.py; train/dpo.py and train/grpo.py add their own). Validation points are dots.
LOSS = ("loss", "loss (train and validation)", [("train", "train", "loss", False), ("val", "val", "loss", True)])
COMMON = [
    ("lr", "learning rate", [("lr", "train", "lr", False)]),
    ("grad_norm", "gradient norm (before clipping)", [("grad norm", "train", "grad_norm", False)]),
    ("tokens_per_s", "tokens/s", [("all", "train", "tokens_per_s", False),
                                  ("supervised", "train", "supervised_tokens_per_s", False)]),
    ("memory", "peak memory (MB)", [("peak", "train", "peak_mem_mb", False)]),
]
DPO = [
    ("margins", "reward margin (chosen - rejected)", [("train", "train", "rewards/margins", False),
                                                      ("val", "val", "rewards/margins", True)]),
    ("preference_accuracy", "preference accuracy (chosen reward > rejected)",
     [("train", "train", "rewards/accuracy", False), ("val", "val", "rewards/accuracy", True)]),
    ("implicit_rewards", "implicit rewards beta * (log pi - log pi_ref)",
     [("chosen", "train", "rewards/chosen", False), ("rejected", "train", "rewards/rejected", False),
      ("chosen (val)", "val", "rewards/chosen", True), ("rejected (val)", "val", "rewards/rejected", True)]),
    ("logps", "log-probability of the replies", [("chosen", "train", "logps/chosen", False),
                                                 ("rejected", "train", "logps/rejected", False)]),
]
GRPO = [
    ("completion_length", "completion length (tokens, mean)", [("length", "train", "completion_length", False)]),
    ("shares", "truncated completions and clipped ratios (share)",
     [("truncated", "train", "truncated", False), ("clip low", "train", "clip_ratio/low", False),
      ("clip high", "train", "clip_ratio/high", False), ("clip region", "train", "clip_ratio/region", False)]),
    ("entropy", "policy entropy (nats per token)", [("entropy", "train", "entropy", False)]),
    ("kl", "KL to the reference (0 without objective.kl_coef)", [("kl", "train", "kl", False)]),
]


def grpo_reward_chart(keys: set[str]) -> tuple[str, str, list[tuple[str, str, str, bool]]]:
    """Mean reward, accuracy, the spread within groups and one curve per reward function
    (`rewards/<name>`, whichever functions the run logs: the registry's or a user's own)."""
    per_fn = [(k.split("/", 1)[1], "train", k, False) for k in sorted(keys) if k.startswith("rewards/")]
    return ("reward", "reward of the rollouts (mean over completions)",
            [("mean reward", "train", "reward", False), ("accuracy", "train", "accuracy", False), *per_fn,
             ("std in group", "train", "reward_std", False)])


def charts(stage: str, keys: set[str]) -> list[dict[str, Any]]:
    """The charts of a run's page, in order: the loss with the stage's own curves next to it, then the
    common ones. A stage's chart is left out once rows are logged and none carries its metrics (a loss
    variant that logs fewer of them); before the first row every chart shows, empty."""
    own = {"dpo": DPO, "grpo": [grpo_reward_chart(keys), *GRPO]}.get(stage, [])
    own = [c for c in own if not keys or any(m in keys for _, _, m, _ in c[2])]
    return [{"name": name, "title": title,
             "series": [{"label": label, "split": split, "key": key, "dots": dots} for label, split, key, dots in ss]}
            for name, title, ss in [LOSS, *own, *COMMON]]


def samples(scanner: Scanner, run: Path, *, limit: int) -> dict[str, Any]:
    """The newest `limit` rows of samples.jsonl, newest first, and how many there are."""
    rows = scanner.samples(run)
    return {"total": len(rows), "rows": rows[::-1][:limit]}


def run_page(scanner: Scanner, run: Path, job: dict[str, Any] | None) -> dict[str, Any]:
    roots = scanner.roots
    cfg_file = roots.file(run, rundir.CONFIG)
    parent_dir = run.parent.parent if run.parent.name in ("runs", "trials") else None
    parent = None
    if parent_dir is not None and roots.contains(parent_dir):
        parent = {"id": roots.id_of(parent_dir), "name": parent_dir.name,
                  "kind": "sweep" if run.parent.name == "trials" else "experiment"}
    rec = scanner.run_record(run, parent, job)
    error_file = roots.file(run, rundir.ERROR)
    rec.update({
        "config_yaml": cfg_file.read_text(encoding="utf-8") if cfg_file else None,
        "summary": scanner.json(run, rundir.SUMMARY),
        "data_stats": scanner.json(run, rundir.DATA_STATS),
        "fingerprint": scanner.json(run, rundir.FINGERPRINT),
        "error_text": error_file.read_text(encoding="utf-8", errors="replace")[-20000:] if error_file else None,
        "evals": [scanner.eval_record(e) for e in scanner.run_evals(run)],
        "checkpoints": checkpoints(run),
        "job_detail": {k: job.get(k) for k in ("id", "kind", "command", "state", "error", "log")} if job else None,
    })
    return rec


_examples: dict[tuple[str, str], dict[str, Any]] = {}


def data_example(scanner: Scanner, run: Path) -> dict[str, Any]:
    """The first training example with its supervised part marked, or why there is none."""
    stats = scanner.json(run, rundir.DATA_STATS) or {}
    key = stats.get("data_fingerprint") or stats.get("cache_key")
    if not key:
        return {"error": "no data statistics yet (the run has not finished preparing its data)"}
    if (str(run), key) in _examples:
        return _examples[(str(run), key)]
    from ..data.prepare import Prepared
    from ..data.show import marked_example
    from ..models.load import load_tokenizer
    from ..paths import home

    cache = home() / "prepared" / key
    if not (cache / "train").is_dir():
        return {"error": f"the prepared data ({key}) is no longer in tunelab's cache ({home() / 'prepared'}); "
                         "`tunelab prepare` with the run's config.yaml makes it again"}
    model_dir = run / rundir.MODEL
    if roots_ok := (scanner.roots.file(model_dir, "tokenizer_config.json") is not None and
                    scanner.roots.all_inside(model_dir)):
        tokenizer = load_tokenizer(str(model_dir))  # the tokenizer with the template saved in training
    else:
        cfg = scanner.config(run)
        m = cfg.get("model") or {}
        tokenizer = load_tokenizer(m.get("tokenizer") or m.get("name"))
    ex = Prepared(cache, stats, True).load("train")[0]
    parts, shown, cut = [], 0, False
    for text, supervised in marked_example(ex["input_ids"], ex["labels"], tokenizer):
        if shown + len(text) > EXAMPLE_CHARS:
            text, cut = text[: EXAMPLE_CHARS - shown], True
        parts.append({"text": text, "supervised": supervised})
        shown += len(text)
        if cut:
            break
    out = {"parts": parts, "tokens": len(ex["input_ids"]),
           "supervised_tokens": sum(1 for x in ex["labels"] if x != -100), "cut": cut,
           "tokenizer": "the run's model/" if roots_ok else "the config's model.tokenizer or model.name"}
    _examples[(str(run), key)] = out
    return out


def predictions(roots: Roots, eval_dir: Path, *, wrong_only: bool, offset: int, limit: int) -> dict[str, Any]:
    """Rows of predictions.jsonl (id, prompt, prediction, extracted, gold, correct), optionally only the
    wrong ones (graded and not correct; ungraded rows such as ROUGE tasks are never 'wrong')."""
    import json

    f = roots.file(eval_dir, "predictions.jsonl")
    rows = []
    if f is not None:
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line being written
    total, wrong = len(rows), sum(1 for r in rows if r.get("correct") is False)
    if wrong_only:
        rows = [r for r in rows if r.get("correct") is False]
    keep = ("id", "sample", "prompt", "prediction", "extracted", "gold", "correct")
    page = [{k: r.get(k) for k in keep} for r in rows[offset: offset + limit]]
    return {"total": total, "wrong": wrong, "matching": len(rows), "rows": page}


# -- comparison -------------------------------------------------------------------------------

def _labels(runs: list[Path]) -> list[str]:
    """Each run's name in the report: its directory name, with its parent's when two names clash."""
    names = [r.name for r in runs]
    out = []
    for r in runs:
        name = r.name if names.count(r.name) == 1 else f"{r.parent.parent.name}-{r.name}"
        while name in out:
            name += "'"
        out.append(name)
    return out


@contextmanager
def study(scanner: Scanner, runs: list[Path]) -> Iterator[Path]:
    """A temporary experiment directory of links to the picked runs and their evaluations (plus the
    base model's, when they all come from one experiment that evaluated it)."""
    tmp = Path(tempfile.mkdtemp(prefix="tunelab-ui-compare-"))
    try:
        (tmp / "runs").mkdir()
        for label, run in zip(_labels(runs), runs):
            (tmp / "runs" / label).symlink_to(run, target_is_directory=True)
            for ev in scanner.run_evals(run):
                if (ev / "results.json").is_file():
                    dst = tmp / "eval" / label / ev.name
                    if not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.symlink_to(ev, target_is_directory=True)
        exps = {r.parent.parent for r in runs if r.parent.name == "runs"}
        if len(exps) == 1 and len(runs) == sum(1 for r in runs if r.parent.name == "runs"):
            for ev in scanner.experiment_evals(exps.pop(), "base"):
                dst = tmp / "eval" / "base" / ev.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(ev, target_is_directory=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare(scanner: Scanner, runs: list[Path]) -> dict[str, Any]:
    from ..experiment import report

    with study(scanner, runs) as tmp:
        found, evals, _ = report.collect([tmp])
        score_cols, score_rows, warnings = report._score_table(evals)
        diff_cols, diff_rows = report.config_differences(found)
        stages = {name: report._stage(r) for name, r in found.items()}
        panel_keys = {k for st in set(stages.values()) if st in report.ALIGNMENT for k, _ in report.ALIGNMENT[st][1]}
        keys = ("step", "split", "loss", *sorted(panel_keys))
        curves = {name: [{k: m.get(k) for k in keys} for m in r["metrics"]] for name, r in found.items()}
        alignment = []
        for stage, (_, panels, _) in report.ALIGNMENT.items():  # the report's charts and tables of each stage
            names = [n for n, st in stages.items() if st == stage]
            if not names:
                continue
            cols, rows = report.alignment_rows(found, stage)
            alignment.append({"stage": stage, "runs": names, "panels": [{"key": k, "title": t} for k, t in panels],
                              "columns": cols, "rows": rows})
        return {"labels": list(found), "ids": [scanner.roots.id_of(r) for r in runs], "stages": stages,
                "resource": {"columns": report.RESOURCE_COLS, "rows": report._resource_rows(found)},
                "scores": {"columns": score_cols, "rows": score_rows, "warnings": warnings},
                "differences": {"columns": diff_cols, "rows": diff_rows}, "curves": curves, "alignment": alignment}


def report_html(scanner: Scanner, runs: list[Path]) -> bytes:
    """report.html as `tunelab report` writes it (charts embedded), built in a temporary directory."""
    from ..experiment import report

    with study(scanner, runs) as tmp:
        out = tmp / "report"
        report.build([tmp], out=out, title="tunelab report: " + ", ".join(_labels(runs)))
        return (out / "report.html").read_bytes()
