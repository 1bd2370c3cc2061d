"""`tunelab prepare`: data source -> conversations -> clean -> split -> render -> saved datasets.

    tunelab prepare configs/quickstart.yaml data.name=math500 model.name=tiny-qwen3 --output out/math500

Writes `<out>/train` and `<out>/validation` (`datasets.save_to_disk`, columns `input_ids` and
`labels`), and `<out>/stats.json`. Tokenized data is cached under `$TUNELAB_HOME/prepared/<key>`,
where the key hashes the converted conversations (so any change of the input or of the conversion
settings changes it), the tokenizer and chat template, and every setting that affects tokens;
a second run with the same inputs only copies the cached result.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import atomic_dir, home
from .clean import content_key, dedup, is_empty, normalise, split
from .conversation import DataError, is_text
from .prompts import apply_prompts
from .render import IGNORE_INDEX, Renderer, build_renderer

CACHE_VERSION = 1  # bump when rendering or cleaning changes what ends up in the cache
# examples; below this, worker start-up costs more than it saves: each worker gets the renderer, whose
# tokenizer datasets pickles with dill (~10 MB for Qwen3, ~1 s to pickle, ~0.4 s to load), while one
# process renders ~2,000 examples/s (bench/prepare.py: GSM8K train took 2.4x longer with 2 workers)
PARALLEL_FROM = 20_000


@dataclass
class Prepared:
    path: Path  # directory with train/, validation/, stats.json
    stats: dict[str, Any]
    cached: bool

    def load(self, split: str) -> Any:
        """One split as a `datasets.Dataset` (plain Python lists). An empty split (data.val_size=0) is
        built in memory: datasets 5.2 saves a zero-row dataset but cannot load it back."""
        from datasets import Dataset, Features, Sequence, Value, load_from_disk

        if self.stats.get("examples_out", {}).get(split) == 0:
            ids = Sequence(Value("int64"))
            return Dataset.from_dict({"input_ids": [], "labels": []}, features=Features(input_ids=ids, labels=ids))
        return load_from_disk(str(self.path / split)).with_format(None)


def _tokenizer_key(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return content_key([type(tok).__name__, body, tok.chat_template, tok.eos_token, tok.bos_token])


def _render_batch(batch: dict[str, list], renderer: Renderer, stage: str) -> dict[str, list]:
    if stage == "pt":
        pairs = [renderer.render_text(text) for text in batch["text"]]
    else:
        pairs = renderer.render_many(batch["messages"])
    return {"input_ids": [i for i, _ in pairs], "labels": [lab for _, lab in pairs]}


# Statistics are computed by Arrow on the columns: turning every row into Python lists first took
# longer than rendering the ids on GSM8K. `with_format("arrow")[:]` honours a select()'s indices.
def _lengths(ds: Any) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")[:]["input_ids"]).to_pylist() if len(ds) else []


def _supervised(ds: Any) -> int:
    """Supervised tokens as the loss counts them (`batching.supervised_mask`: labels[1:] of each example)."""
    import pyarrow.compute as pc

    if not len(ds):
        return 0
    labels = pc.list_slice(ds.with_format("arrow")[:]["labels"], 1)
    return int(pc.sum(pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX)).as_py() or 0)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
    return {"min": v[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": v[-1],
            "mean": round(sum(v) / len(v), 1)}


def tokenize_split(examples: list[dict[str, Any]], renderer: Renderer, *, stage: str, max_length: int,
                   overlong: str, num_proc: int, desc: str, fingerprint: str) -> tuple[Any, Counter]:
    """Render a list of conversations (or texts) into a `datasets.Dataset`, filtering by length."""
    from datasets import Dataset

    rows = [{"messages": ex.get("messages", []), "text": ex.get("text", "")} for ex in examples]
    if not rows:
        return Dataset.from_dict({"input_ids": [], "labels": []}), Counter()
    ds = Dataset.from_list(rows)
    procs = num_proc or (min(4, os.cpu_count() or 1) if len(rows) >= PARALLEL_FROM else 1)
    ds = ds.map(_render_batch, batched=True, batch_size=256, fn_kwargs={"renderer": renderer, "stage": stage},
                remove_columns=["messages", "text"], num_proc=procs if procs > 1 else None, desc=desc,
                new_fingerprint=fingerprint)  # given, so datasets does not pickle the tokenizer to hash it
    drops: Counter = Counter()
    lengths = _lengths(ds)
    keep = []
    for i, n in enumerate(lengths):
        if n > max_length and overlong == "drop" and stage != "pt":
            drops["too_long"] += 1
        else:
            keep.append(i)
    ds = ds.select(keep)
    if any(lengths[i] > max_length for i in keep):
        # truncate (or, in pretraining, cut into chunks later when packing): keep the beginning
        ds = ds.map(lambda b: {k: [v[:max_length] for v in b[k]] for k in ("input_ids", "labels")}, batched=True,
                    desc=f"{desc}: truncating")
    unsupervised = [i for i, lab in enumerate(ds["labels"]) if all(t == IGNORE_INDEX for t in lab)]
    if unsupervised:
        drops["no_supervised_tokens"] += len(unsupervised)
        ds = ds.select(sorted(set(range(len(ds))) - set(unsupervised)))
    return ds, drops


def clean_and_split(examples: list[dict[str, Any]], *, dedup_mode: str, near_dup_threshold: float, val_size: float,
                    seed: int) -> tuple[list[dict], list[dict], Counter]:
    """Normalise, drop empties, deduplicate, then split: the one path to train/validation."""
    drops: Counter = Counter()
    examples = [normalise(ex) for ex in examples]
    kept = [ex for ex in examples if not is_empty(ex)]
    drops["empty"] = len(examples) - len(kept)
    kept, dd = dedup(kept, mode=dedup_mode, threshold=near_dup_threshold)
    drops.update(dd)
    train, val = split(kept, val_size=val_size, seed=seed)
    return train, val, drops


def heldout_conversations(cfg: Any) -> list[dict[str, Any]]:
    """The validation split of `cfg.data` as conversations, exactly as `prepare` splits it (before
    length filtering), so an experiment can roll out on the part a model never trained on."""
    from .sources import load_conversations

    d = cfg.data
    examples = load_conversations(d.name, format=d.format, columns=d.columns or None, split=d.split, limit=d.limit,
                                  n=d.n, seed=d.seed, gsm8k_boxed=d.gsm8k_boxed)
    examples = [apply_prompts(ex, system_prompt=d.system_prompt, instruction=d.instruction) for ex in examples]
    _, val, _ = clean_and_split(examples, dedup_mode=d.dedup, near_dup_threshold=d.near_dup_threshold,
                                val_size=d.val_size, seed=d.seed)
    return val


def prepare(*, source: str, tokenizer: Any, stage: str = "sft", fmt: str = "auto", columns: dict | None = None,
            split_name: str | None = None, limit: int | None = None, n: int = 2000, seed: int = 0,
            val_size: float = 0.05, template: str = "auto", enable_thinking: bool = False,
            system_prompt: str | None = None, instruction: str = "auto", gsm8k_boxed: bool = True,
            supervise: str = "all_turns", max_length: int = 1024, overlong: str = "drop", dedup_mode: str = "near",
            near_dup_threshold: float = 0.9, num_proc: int = 0, use_cache: bool = True) -> Prepared:
    """Prepare a data set and return where it is (the cache directory) with its statistics."""
    from datasets import load_from_disk  # noqa: F401  (fail early if datasets is missing)

    from .sources import load_conversations

    t0 = time.perf_counter()
    examples = load_conversations(source, format=fmt, columns=columns or None, split=split_name, limit=limit,
                                  n=n, seed=seed, gsm8k_boxed=gsm8k_boxed)
    n_in = len(examples)
    if stage == "sft":
        texts = [ex for ex in examples if is_text(ex)]
        if texts:
            raise DataError(f"{source}: stage 'sft' needs conversations but the data is raw text; use stage=pt")
        examples = [apply_prompts(ex, system_prompt=system_prompt, instruction=instruction) for ex in examples]
    renderer = build_renderer(tokenizer, template=template, enable_thinking=enable_thinking, supervise=supervise)
    settings = dict(v=CACHE_VERSION, stage=stage, template=renderer.template, eot=renderer.eot,
                    kwargs=renderer.template_kwargs, supervise=supervise, max_length=max_length,
                    overlong=overlong, dedup=dedup_mode, thr=near_dup_threshold, val=val_size, seed=seed)
    payload = [{k: ex.get(k) for k in ("messages", "text")} for ex in examples]
    key = content_key([content_key(payload), _tokenizer_key(tokenizer), settings])[:24]
    cache = home() / "prepared" / key
    if use_cache and (cache / "stats.json").is_file():
        return Prepared(cache, json.loads((cache / "stats.json").read_text()), True)

    train, val, drops = clean_and_split(examples, dedup_mode=dedup_mode, near_dup_threshold=near_dup_threshold,
                                        val_size=val_size, seed=seed)
    out_splits = {}
    for name, part in (("train", train), ("validation", val)):
        ds, d = tokenize_split(part, renderer, stage=stage, max_length=max_length, overlong=overlong,
                               num_proc=num_proc, desc=f"Tokenizing {name}", fingerprint=f"{key}-{name}")
        drops.update(d)
        out_splits[name] = ds
    drops = Counter({k: v for k, v in drops.items() if v})
    if len(out_splits["train"]) == 0:
        raise DataError(f"{source}: no training example left after filtering ({n_in} in); "
                        f"dropped by reason: {dict(drops) or 'none'}; max_length={max_length}")
    stats = _stats(source, tokenizer, renderer, n_in, drops, out_splits, time.perf_counter() - t0, key)
    with atomic_dir(cache, overwrite=True) as tmp:
        for name, ds in out_splits.items():
            ds.save_to_disk(str(tmp / name))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return Prepared(cache, stats, False)


def _stats(source: str, tok: Any, renderer: Renderer, n_in: int, drops: Counter, splits: dict, seconds: float,
           key: str) -> dict[str, Any]:
    lengths = [n for ds in splits.values() for n in _lengths(ds)]
    supervised = sum(_supervised(ds) for ds in splits.values())
    return {
        "source": source,
        "tokenizer": getattr(tok, "name_or_path", ""),
        "template": renderer.template,
        "end_of_turn": renderer.eot,
        "supervise": renderer.supervise,
        "examples_in": n_in,
        "examples_out": {name: len(ds) for name, ds in splits.items()},
        "dropped": dict(drops),
        "tokens": sum(lengths),
        "supervised_tokens": supervised,
        "supervised_fraction": round(supervised / max(1, sum(lengths)), 4),
        "token_length": _percentiles(lengths),
        "prepare_seconds": round(seconds, 2),
        "cache_key": key,
    }


def export(prepared: Prepared, out: Path, overwrite: bool = False, inputs: tuple = ()) -> None:
    """Copy a prepared data set (from the cache) to a user's output directory, atomically."""
    with atomic_dir(Path(out), kind="data", overwrite=overwrite, inputs=inputs) as tmp:
        for name in ("train", "validation"):
            shutil.copytree(prepared.path / name, tmp / name)
        shutil.copy2(prepared.path / "stats.json", tmp / "stats.json")


def prepare_from_config(cfg: Any, tokenizer: Any, *, use_cache: bool = True) -> Prepared:
    """The builder: read the typed config, call `prepare` with plain arguments (the caller loads the
    tokenizer: `data` knows nothing of models)."""
    d = cfg.data
    return prepare(
        source=d.name, tokenizer=tokenizer, stage=cfg.stage, fmt=d.format, columns=d.columns, split_name=d.split,
        limit=d.limit, n=d.n, seed=d.seed, val_size=d.val_size, template=d.template,
        enable_thinking=d.enable_thinking, system_prompt=d.system_prompt, instruction=d.instruction,
        gsm8k_boxed=d.gsm8k_boxed, supervise=d.supervise, max_length=d.max_length, overlong=d.overlong,
        dedup_mode=d.dedup, near_dup_threshold=d.near_dup_threshold, num_proc=d.num_proc, use_cache=use_cache,
    )
