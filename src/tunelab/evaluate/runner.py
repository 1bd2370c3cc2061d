"""`tunelab eval`: rollouts, grading and metrics for one or several models on one task.

    tunelab eval --model smollm2-135m-instruct --model runs/quickstart --task gsm8k --limit 20 --output out/eval

For each model it writes `<out>/<model>/predictions.jsonl` (one row per item and sample, written as
soon as its batch is done, so an interrupted eval continues where it stopped) and
`<out>/<model>/results.json` (task, model, n, accuracy with a 95% Wilson interval, the task's other
metrics, generation settings, template, timing); with several models, `<out>/comparison.json` and a
side-by-side table. A run directory brings its own tokenizer, chat template and prompt settings
(`config.yaml`), so a tuned model is asked exactly as it was trained.
"""
from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..data.conversation import DataError
from .generate import GenerationSettings
from .tasks import Item, Task


def slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ref.strip("/").replace("/", "__"))[-80:] or "model"


class Loaded:
    """A model with the tokenizer, renderer and prompt settings it was trained with."""

    def __init__(self, ref: str, *, template: str | None = None, enable_thinking: bool | None = None,
                 device: str | None = None, dtype: str = "auto", backend: str = "hf"):
        from ..data.render import build_renderer
        from ..models.load import load_model, load_tokenizer, resolve, run_metadata

        self.ref = ref
        r = resolve(ref)
        run_cfg = Path(ref) / "config.yaml"
        self.train_cfg = None
        if run_cfg.is_file():  # a run directory: its resolved training config
            from .. import config as C

            self.train_cfg = C.load(run_cfg)
        meta = run_metadata(r.path)
        saved = meta.get("template")
        self.warning = None
        if template and saved and template not in (saved, "auto"):
            self.warning = (f"WARNING: {ref} was trained with template '{saved}' but '{template}' was requested; "
                            f"using '{template}'. Scores will not reflect the trained behaviour.")
            print(self.warning, flush=True)
        self.tokenizer = load_tokenizer(r)
        think = enable_thinking
        if think is None:
            think = self.train_cfg.data.enable_thinking if self.train_cfg else False
        self.renderer = build_renderer(self.tokenizer, template=template or "auto", enable_thinking=think)
        self.system_prompt = self.train_cfg.data.system_prompt if self.train_cfg else None
        self.instruction = self.train_cfg.data.instruction if self.train_cfg else None
        self.backend, self.meta, self.path, self.dtype = backend, meta, Path(r.path), dtype
        if backend == "vllm":  # vLLM loads the weights itself; check it can before anything else
            from .vllm_backend import check_available, engine_args

            check_available()
            engine_args(self.path, meta)  # refuses DoRA/QLoRA adapters with the way out
            self.model = None
            return
        if backend != "hf":
            from ..data.conversation import DataError

            raise DataError(f"--backend '{backend}' is not one of hf, vllm")
        self.model = load_model(r, dtype=dtype).eval()
        if hasattr(self.model, "merge_and_unload") and not meta.get("quantization"):
            # LoRA/DoRA folded into the weights: the same function, without the adapter's extra
            # matmuls at every layer (several times faster generation on CPU)
            self.model = self.model.merge_and_unload()
        if device:
            self.model.to(device)

    def generator(self) -> Any:
        """The rollout engine: transformers' batched `generate`, or vLLM's."""
        from .generate import Generator, stop_token_ids

        stops = stop_token_ids(self.tokenizer, self.renderer.eot)
        if self.backend == "vllm":
            from .vllm_backend import VllmGenerator

            return VllmGenerator(self.path, self.meta, self.tokenizer, stops, dtype=self.dtype)
        return Generator(self.model, self.tokenizer, stops)

    @property
    def task_instruction(self) -> str | None:
        """The math instruction the model was trained with, to ask it the same way (None: task default)."""
        return self.instruction if self.instruction not in (None, "auto") else None

    def describe(self) -> dict[str, Any]:
        return {"model": self.ref, "backend": self.backend, "template": self.renderer.template,
                "end_of_turn": self.renderer.eot,
                "enable_thinking": self.renderer.template_kwargs.get("enable_thinking"),
                "system_prompt": self.system_prompt}


def _read_rows(path: Path) -> list[dict[str, Any]]:
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


def score_row(task: Task, prediction: str, gold: str) -> dict[str, Any]:
    """Grading fields for one prediction (shared by `tunelab eval` and `tunelab grade`)."""
    from .grading import grade, gsm8k_verdicts

    if task.scorer == "gsm8k":
        v = gsm8k_verdicts(prediction, gold)
        return {"extracted": v["flexible"].extracted, "correct": v["flexible"].correct,
                "strict_extracted": v["strict"].extracted, "strict_correct": v["strict"].correct}
    if task.scorer == "choice":
        v = grade(prediction, gold, extractors=("choice",), compare="choice")
        return {"extracted": v.extracted, "correct": v.correct}
    if task.scorer == "math":
        v = grade(prediction, gold)
        return {"extracted": v.extracted, "correct": v.correct, "strict_correct": v.strict, "extractor": v.method}
    return {}


def _has_final_answer(row: dict[str, Any]) -> bool:
    """A final answer stated as such (boxed, "The answer is", "#### N", "答：", a choice letter); the
    last-number fallback used for flexible scoring does not count, so the rate measures format."""
    if "strict_extracted" in row:
        return row["strict_extracted"] is not None
    return row.get("extracted") is not None and row.get("extractor") != "last_number"


def aggregate(task: Task, rows: list[dict[str, Any]], n_samples: int) -> dict[str, Any]:
    from .scores import accuracy_summary, pass_at_k, rouge_bleu_zh

    first = [r for r in rows if r["sample"] == 0]
    out: dict[str, Any] = {"n": len(first)}
    if task.scorer == "rouge_zh":
        out.update(rouge_bleu_zh([r["prediction"] for r in first], [r["gold"] for r in first]))
        return out
    out.update(accuracy_summary([bool(r["correct"]) for r in first]))
    out["parseable_rate"] = round(sum(_has_final_answer(r) for r in first) / max(1, len(first)), 4)
    if any("strict_correct" in r for r in first):
        strict = accuracy_summary([bool(r.get("strict_correct")) for r in first])
        out["strict_accuracy"], out["strict_ci95"] = strict["accuracy"], strict["ci95"]
    if n_samples > 1:
        per_item: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            per_item[r["id"]].append(bool(r["correct"]))
        for k in sorted({1, n_samples} | ({5} if n_samples >= 5 else set())):
            vals = [pass_at_k(len(c), sum(c), k) for c in per_item.values()]
            out[f"pass@{k}"] = round(sum(vals) / max(1, len(vals)), 4)
    for key in task.breakdown:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r in first:
            groups[str(r.get("meta", {}).get(key))].append(bool(r["correct"]))
        out[f"by_{key}"] = {g: accuracy_summary(v) for g, v in sorted(groups.items())}
    return out


def evaluate_model(loaded: Loaded, task: Task, items: list[Item], out: Path, settings: GenerationSettings,
                   export_review: Path | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    rows = _read_rows(pred_path)
    by_id = {it.id: k for k, it in enumerate(items)}
    done = {(by_id[r["id"]], r["sample"]) for r in rows if r["id"] in by_id}
    if done:
        print(f"[tunelab] {loaded.ref}: {len(done)} predictions already in {pred_path}; continuing", flush=True)
    prompts = [loaded.renderer.render_prompt(it.messages) for it in items]
    texts = [loaded.renderer.prompt_text(it.messages) for it in items]
    gen = loaded.generator()
    t0 = time.perf_counter()
    new_tokens = 0

    def write(batch: list[int], sample: int, results: list[tuple[str, int]]) -> None:
        nonlocal new_tokens
        with pred_path.open("a", encoding="utf-8") as f:
            for i, (text, n_tok) in zip(batch, results):
                it = items[i]
                row = {"id": it.id, "sample": sample, "prompt": texts[i], "prediction": text, "gold": it.gold,
                       **score_row(task, text, it.gold), "tokens": n_tok, "meta": it.meta}
                row.setdefault("extracted", None)
                row.setdefault("correct", None)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
                new_tokens += n_tok

    gen.generate(prompts, settings, on_batch=write, skip=done)
    seconds = time.perf_counter() - t0
    rows = [r for r in rows if r["id"] in by_id]
    metrics = aggregate(task, rows, settings.n)
    results = {"task": task.name, "description": task.description, **loaded.describe(), **metrics,
               "generation": settings.as_dict(),
               "timing": {"seconds": round(seconds, 2), "generated_tokens": new_tokens,
                          "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 and new_tokens else None}}
    if loaded.warning:
        results["warning"] = loaded.warning
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    if export_review is not None:
        write_review(export_review, rows)
    return results


def write_review(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV for people to score: knowledge accuracy, logical coherence, clarity (1-5), left empty."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # BOM: Excel opens Chinese text right
        w = csv.writer(f)
        w.writerow(["id", "prompt", "answer", "gold", "knowledge_accuracy", "logical_coherence", "clarity", "notes"])
        for r in rows:
            if r["sample"] == 0:
                w.writerow([r["id"], r["prompt"], r["prediction"], r["gold"], "", "", "", ""])
