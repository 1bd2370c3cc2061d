"""The run directory: the contract between `train` and every command that reads its results.

    run/
      config.yaml        the resolved config (tunelab.config)
      metrics.jsonl      one JSON object per logged step (train/metrics.py)
      samples.jsonl      stage grpo: completions of one prompt every objective.sample_every steps (train/grpo.py)
      summary.json       totals, peak memory, losses, ... (train/recipe.py)
      data_stats.json    the prepared data's statistics
      model/             a transformers model, or a PEFT adapter, with tokenizer + tunelab.json
      checkpoints/       step-NNNNNN/ (train/checkpoint.py)
      error.txt          why an experiment's variant failed
      eval/              results of evaluations run on it (sweeps)

Every package asks this module for file names, the metadata beside a model (`tunelab.json`: base
model, method, template, quantization), the base model of an adapter and the quantization it was
trained with, so no two commands read a run two ways. Plain files only: importing it loads nothing
heavy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
DATA_STATS = "data_stats.json"
MODEL = "model"
CHECKPOINTS = "checkpoints"
ERROR = "error.txt"
EVAL = "eval"
TENSORBOARD = "tensorboard"
META = "tunelab.json"  # beside the weights in model/ (and in an export)
FINGERPRINT = "fingerprint.json"  # what produced a run or an evaluation: config, data, model identity
EXTERNAL = "external.json"  # ids of the run in W&B / SwanLab, so a resumed run continues the same one
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's


# Config keys that may change when a run is resumed: how long it trains and how often it logs,
# evaluates and saves. Any other change would make the resumed run a mix of two runs.
SAFE_ON_RESUME = ("training.max_steps", "training.epochs", "training.log_every", "training.eval_every",
                  "training.save_every", "training.keep_last", "training.early_stopping_patience",
                  "training.load_best", "output.report_to", "data.num_proc", "evaluation.")
NOT_IDENTITY = ("output.dir",)  # where a run lives is not what it is


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as {"section.key": value} (values such as data.columns stay whole)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            out[k] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} for every config key that differs (output.dir ignored)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(NOT_IDENTITY)}


def describe_changes(changes: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def unsafe_on_resume(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in changes.items() if not k.startswith(SAFE_ON_RESUME)}


def read_fingerprint(directory: str | Path) -> dict[str, Any] | None:
    return read_json(Path(directory) / FINGERPRINT)


def write_fingerprint(directory: str | Path, fingerprint: dict[str, Any]) -> None:
    path = Path(directory) / FINGERPRINT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def model_dir(path: str | Path) -> Path:
    """The directory holding the weights: a run's `model/`, or `path` itself (a model directory)."""
    path = Path(path)
    if (path / MODEL).is_dir() and not (path / "config.json").exists():
        return path / MODEL
    return path


def is_adapter(model_path: str | Path) -> bool:
    return (Path(model_path) / ADAPTER_CONFIG).is_file()


def read_json(path: str | Path) -> Any:
    """The JSON in `path`, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log written as training goes (metrics.jsonl, samples.jsonl); a last line
    cut short by a crash mid-write is skipped, not an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the one line a kill can leave half-written
            raise
    return rows


def trim_rows(path: str | Path, step: int) -> None:
    """Keep the rows of a training log up to `step` (a resumed run logs the later steps again)."""
    path = Path(path)
    if path.exists():
        from .paths import no_space_message

        kept = [row for row in read_rows(path) if row["step"] <= step]
        with no_space_message(path):
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_rows(Path(run_dir) / METRICS)


def read_error(run_dir: str | Path) -> str | None:
    """The first line of error.txt (why a variant failed), or None."""
    path = Path(run_dir) / ERROR
    return path.read_text(encoding="utf-8").split("\n")[0] if path.is_file() else None


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """`tunelab.json` beside a trained model (base model, method, template, ...), or {}."""
    return read_json(Path(model_path) / META) or {}


def write_metadata(model_path: str | Path, meta: dict[str, Any]) -> None:
    (Path(model_path) / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def build_metadata(*, base_model: str, tokenizer: str, method: str, stage: str, template: str,
                   enable_thinking: bool, supervise: str, from_scratch: bool,
                   quantization: dict[str, Any] | None) -> dict[str, Any]:
    """What later commands need to use a trained model exactly as it was trained."""
    from . import __version__

    return {"quantization": quantization, "base_model": base_model, "tokenizer": tokenizer, "method": method,
            "stage": stage, "template": template, "enable_thinking": enable_thinking, "supervise": supervise,
            "from_scratch": from_scratch, "tunelab_version": __version__}


def adapter_base(model_path: str | Path) -> str | None:
    """The model reference an adapter was trained on: tunelab's record, else PEFT's own field."""
    model_path = Path(model_path)
    base = read_metadata(model_path).get("base_model")
    if not base and is_adapter(model_path):
        base = (read_json(model_path / ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    return str(base) if base else None


def quantization(model_path: str | Path) -> dict[str, Any] | None:
    """The 4-bit settings a QLoRA adapter was trained with ({quant_type, double_quant, compute_dtype})."""
    return read_metadata(model_path).get("quantization") or None


def read_config(run_dir: str | Path) -> Any:
    """The run's resolved `tunelab.config.Config`, or None when `run_dir` has no config.yaml."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    from . import config as C

    return C.load(path)


def save_model(model: Any, tokenizer: Any, out: Path, meta: dict[str, Any]) -> None:
    """A transformers model dir (full/freeze) or a PEFT adapter dir, plus tokenizer and metadata,
    written to a temporary sibling and renamed when complete."""
    from .paths import atomic_dir

    with atomic_dir(out, owned=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_metadata(tmp, meta)
