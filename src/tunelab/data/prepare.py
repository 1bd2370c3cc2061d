"""`tunelab prepare`: data source -> conversations -> clean -> split -> render -> saved datasets.

    tunelab prepare configs/quickstart.yaml data.name=math500 model.name=tiny-qwen3 --output out/math500

Writes `<out>/train` and `<out>/validation` (`datasets.save_to_disk`, columns `input_ids` and
`labels`; for `stage: dpo` `chosen_input_ids`, `chosen_labels`, `rejected_input_ids`, `rejected_labels`),
and `<out>/stats.json`. The steps, in order (every drop counted by its reason):
1. read and convert each record (`sources.iter_conversations`: validated roles, leading assistant
   turns removed and counted); drop records over `max_chars` characters (`too_long_chars`) right
   there, before anything costly (normalising, hashing, deduplicating, tokenizing) touches them;
2. add the system prompt and math instruction, normalise (`data.normalize`), drop empties, deduplicate,
   split (a `val_size` that leaves nothing to train on is a DataError);
3. render: conversations into ids + labels (`render.py`), dropping or truncating overlong ones; raw
   text (`stage: pt`) is tokenized document by document, each followed by the end-of-text token, and
   cut into pieces of at most `max_length` tokens, nothing dropped and nothing truncated. Packing
   fills rows with pieces and restarts positions at each (`batching.collate_packed`), so no token
   attends across a document boundary; `tokens_in` (documents' tokens with their separators) equals
   `tokens` (what the saved pieces hold, i.e. what training sees). Preference pairs (`stage: dpo`):
   each side is the prompt plus its reply, rendered by the same renderer as SFT with ONLY that reply
   supervised (whatever `data.supervise` says: DPO scores the reply alone), so both sides share the
   prompt's ids token for token; a pair is dropped (`too_long`) when either side is over `max_length`,
   or with `overlong: truncate` both sides are cut to it. Statistics count tokens and supervised tokens
   of both sides, and lengths of the longer side (what a batch of pairs is padded to).

Tokenized data is cached under `$TUNELAB_HOME/prepared/<key>`, where the key hashes the converted
conversations (so any change of the input or of the conversion settings changes it), the tokenizer
and chat template, and every setting that affects tokens; a second run with the same inputs only
copies the cached result. The same key is the prepared data's fingerprint, `data_fingerprint` in
`stats.json`: two prepared data sets with the same fingerprint hold the same token ids and labels,
so a run can record exactly which data it trained on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import atomic_dir, home
from .batching import pair_lengths
from .clean import NORMALIZE, content_key, dedup, is_empty, normalise, split, validation_count
from .conversation import DataError, is_pair, is_text
from .prompts import apply_prompts
from .render import IGNORE_INDEX, Renderer, build_renderer

CACHE_VERSION = 3  # bump when rendering or cleaning changes what ends up in the cache (3: stats name the stage)
# examples; below this, worker start-up costs more than it saves: each worker gets the renderer, whose
# tokenizer datasets pickles with dill (~10 MB for Qwen3, ~1 s to pickle, ~0.4 s to load), while one
# process renders ~2,000 examples/s (bench/prepare.py: GSM8K train took 2.4x longer with 2 workers)
PARALLEL_FROM = 20_000


PAIR_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


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
            cols = PAIR_COLUMNS if self.stats.get("stage") == "dpo" else ("input_ids", "labels")
            return Dataset.from_dict({c: [] for c in cols}, features=Features({c: ids for c in cols}))
        return load_from_disk(str(self.path / split)).with_format(None)


def _tokenizer_key(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return content_key([type(tok).__name__, body, tok.chat_template, tok.eos_token, tok.bos_token])


def _chars(example: dict[str, Any]) -> int:
    if is_text(example):
        return len(example["text"])
    replies = [example.get(k) or "" for k in ("chosen", "rejected") if k in example]
    return sum(len(m["content"]) for m in example["messages"]) + sum(len(r) for r in replies if isinstance(r, str))


def read_examples(source: str, *, stage: str = "sft", fmt: str = "auto", columns: dict | None = None,
                  split_name: str | None = None, limit: int | None = None, n: int = 2000, seed: int = 0,
                  gsm8k_boxed: bool = True, system_prompt: str | None = None, instruction: str = "auto",
                  max_chars: int = 1_000_000) -> tuple[list[dict[str, Any]], int, Counter, Counter]:
    """Step 1 and the prompts of step 2: (examples, records read, drops, fixes). Each example keeps
    the `where` of its record ("file:line"), for messages about it later; it is never rendered or hashed."""
    from .sources import iter_conversations

    drops: Counter = Counter()
    fixes: Counter = Counter()
    examples, n_in = [], 0
    for where, ex in iter_conversations(source, format=fmt, columns=columns or None, split=split_name, limit=limit,
                                        n=n, seed=seed, gsm8k_boxed=gsm8k_boxed, fixes=fixes):
        n_in += 1
        # Counted before anything else looks at the record: a 30 MB record costs its reading only.
        if _chars(ex) > max_chars:
            drops["too_long_chars"] += 1
            continue
        if stage == "dpo" and not is_pair(ex):
            raise DataError(f"{where}: stage 'dpo' trains on preference pairs (a prompt with a 'chosen' and a "
                            "'rejected' reply: formats pairs, pairs_sharegpt, pairs_alpaca) but this record is "
                            f"{'raw text' if is_text(ex) else 'a conversation without chosen/rejected replies'}")
        if stage != "dpo" and is_pair(ex):
            raise DataError(f"{where}: this record is a preference pair (a 'chosen' and a 'rejected' reply); "
                            f"stage {stage!r} cannot train on it: use stage=dpo")
        if stage == "sft" and is_text(ex):
            raise DataError(f"{where}: stage 'sft' needs conversations but the data is raw text; use stage=pt")
        if stage == "pt" and not is_text(ex):
            raise DataError(f"{where}: stage 'pt' trains on raw text ({{\"text\": ...}} records, .txt/.md files or "
                            "folders of them) but this record is a conversation; use stage=sft, or data.format=text "
                            "with data.columns={text: COLUMN}")
        if not is_text(ex):
            ex = apply_prompts(ex, system_prompt=system_prompt, instruction=instruction)
        examples.append({**ex, "where": where})
    return examples, n_in, drops, fixes


def read_mixture(mix: list[dict[str, Any]], *, size: int | None, stage: str, n: int, seed: int,
                 gsm8k_boxed: bool, system_prompt: str | None, instruction: str,
                 max_chars: int) -> tuple[list[dict[str, Any]], int, Counter, Counter, dict[str, dict[str, int]]]:
    """`read_examples` for each source of a mixture, then the draw by weight (data/mixture.py). Each
    example carries `mix_source` (the source's name) so statistics can be counted per source."""
    from .mixture import draw, mixture_counts

    per_source, n_in, drops, fixes, stats = [], 0, Counter(), Counter(), {}
    for m in mix:
        ex, k, d, f = read_examples(m["name"], stage=stage, fmt=m.get("format") or "auto",
                                    columns=m.get("columns") or None, split_name=m.get("split"), limit=m.get("limit"),
                                    n=n, seed=seed, gsm8k_boxed=gsm8k_boxed, system_prompt=system_prompt,
                                    instruction=instruction, max_chars=max_chars)
        if not ex:
            raise DataError(f"data.mix source {m['name']!r}: no example ({k} records read, dropped: "
                            f"{_dropped(d, max_chars)})")
        per_source.append([{**e, "mix_source": m["name"]} for e in ex])
        n_in, drops, fixes = n_in + k, drops + d, fixes + f
        stats[m["name"]] = {"weight": m.get("weight", 1.0), "records_read": k, "available": len(ex)}
    counts = mixture_counts([len(x) for x in per_source], [m.get("weight", 1.0) for m in mix], size)
    for m, c in zip(mix, counts):
        stats[m["name"]]["drawn"] = c
    return draw(per_source, counts, seed), n_in, drops, fixes, stats


def _source_stats(stats: dict[str, dict[str, Any]], parts: dict[str, list[dict]], splits: dict[str, Any]) -> None:
    """Per source of a mixture: examples kept after cleaning, and tokens / supervised tokens trained on."""
    import pyarrow.compute as pc

    for name, st in stats.items():
        st["kept"] = sum(1 for part in parts.values() for ex in part if ex.get("mix_source") == name)
    for split_name, ds in splits.items():
        if not len(ds) or "source" not in ds.column_names:
            continue
        table = ds.with_format("arrow")[:]
        for name, st in stats.items():
            rows = table.filter(pc.equal(table["source"], name))
            st.setdefault("tokens", 0)
            st.setdefault("supervised_tokens", 0)
            for side in _sides(ds):
                sup = pc.list_flatten(pc.list_slice(rows[f"{side}labels"], 1))
                st["tokens"] += int(pc.sum(pc.list_value_length(rows[f"{side}input_ids"])).as_py() or 0)
                st["supervised_tokens"] += int(pc.sum(pc.not_equal(sup, IGNORE_INDEX)).as_py() or 0)
    total = sum(st.get("tokens", 0) for st in stats.values()) or 1
    for st in stats.values():
        st["token_share"] = round(st.get("tokens", 0) / total, 4)


def _dropped(drops: Counter, max_chars: int) -> str:
    text = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) or "none"
    if drops.get("too_long_chars"):
        text += f" (data.max_chars={max_chars}: raise it to keep longer records)"
    return text


def clean_and_split(examples: list[dict[str, Any]], *, source: str = "", n_in: int | None = None,
                    drops: Counter | None = None, normalize: str = "basic", dedup_mode: str = "near",
                    near_dup_threshold: float = 0.9, val_size: float = 0.05, seed: int = 0,
                    max_chars: int = 1_000_000) -> tuple[list[dict], list[dict], Counter]:
    """Normalise, drop empties, deduplicate, then split: the one path to train/validation."""
    drops = Counter(drops or {})
    n_in = len(examples) if n_in is None else n_in
    examples = [normalise(ex, normalize) for ex in examples]
    kept = [ex for ex in examples if not is_empty(ex)]
    drops["empty"] += len(examples) - len(kept)
    pairs = [ex for ex in kept if not (is_pair(ex) and ex["chosen"] == ex["rejected"])]
    drops["identical_replies"] += len(kept) - len(pairs)  # differed only in what normalising removed
    kept = pairs
    kept, dd = dedup(kept, mode=dedup_mode, threshold=near_dup_threshold)
    drops.update(dd)
    if not kept:
        raise DataError(f"{source}: no example left to train on: {n_in} records read, dropped: "
                        f"{_dropped(drops, max_chars)}")
    n_val = validation_count(len(kept), val_size)
    if n_val >= len(kept):
        raise DataError(f"{source}: data.val_size={val_size:g} leaves no training example: the data has {len(kept)} "
                        f"examples ({n_in} records read, dropped: {_dropped(drops, max_chars)}) and {n_val} would go "
                        f"to validation; use a count below {len(kept)} or a fraction such as 0.1 (0: no validation)")
    train, val = split(kept, val_size=val_size, seed=seed)
    return train, val, drops


def _render_batch(batch: dict[str, list], renderer: Renderer, stage: str, max_length: int) -> dict[str, list]:
    if stage == "dpo":  # each side: prompt + its reply, one conversation for the one renderer
        out: dict[str, list] = {"source": batch["source"]}
        for side in ("chosen", "rejected"):
            convs = [m + [{"role": "assistant", "content": r}] for m, r in zip(batch["messages"], batch[side])]
            rendered = renderer.render_many(convs, wheres=batch["where"])
            out[f"{side}_input_ids"] = [i for i, _ in rendered]
            out[f"{side}_labels"] = [lab for _, lab in rendered]
        return out
    if stage != "pt":
        pairs = renderer.render_many(batch["messages"], wheres=batch["where"])
        return {"input_ids": [i for i, _ in pairs], "labels": [lab for _, lab in pairs], "source": batch["source"]}
    # Pretraining: each document whole (with its end-of-text token), cut into pieces of max_length;
    # `document_tokens` (on a document's first piece) lets the statistics count tokens in independently.
    ids_out, doc_tokens, sources = [], [], []
    for text, source in zip(batch["text"], batch["source"]):
        ids, _ = renderer.render_text(text)
        for start in range(0, len(ids), max_length):
            ids_out.append(ids[start:start + max_length])
            doc_tokens.append(len(ids) if start == 0 else 0)
            sources.append(source)
    return {"input_ids": ids_out, "labels": [list(x) for x in ids_out], "document_tokens": doc_tokens,
            "source": sources}


def _sides(ds: Any) -> list[str]:
    """Column prefixes of a prepared split's token rows: "" (input_ids, labels), or both sides of pairs."""
    return ["chosen_", "rejected_"] if "chosen_input_ids" in ds.column_names else [""]


# Statistics are computed by Arrow on the columns: turning every row into Python lists first took
# longer than rendering the ids on GSM8K. `with_format("arrow")[:]` honours a select()'s indices.
def _lengths(ds: Any) -> list[int]:
    """Tokens per example; for pairs, of the longer side (what a batch of pairs is padded to)."""
    import pyarrow.compute as pc

    if _sides(ds) != [""]:
        return pair_lengths(ds)
    return pc.list_value_length(ds.with_format("arrow")[:]["input_ids"]).to_pylist() if len(ds) else []


def _tokens(ds: Any) -> int:
    """All tokens of a split (both sides of pairs)."""
    import pyarrow.compute as pc

    if not len(ds):
        return 0
    table = ds.with_format("arrow")[:]
    return sum(int(pc.sum(pc.list_value_length(table[f"{p}input_ids"])).as_py() or 0) for p in _sides(ds))


def _supervised(ds: Any) -> int:
    """Supervised tokens as the loss counts them (`batching.supervised_mask`: labels[1:] of each row),
    both replies of pairs."""
    import pyarrow.compute as pc

    if not len(ds):
        return 0
    table = ds.with_format("arrow")[:]
    return sum(int(pc.sum(pc.not_equal(pc.list_flatten(pc.list_slice(table[f"{p}labels"], 1)), IGNORE_INDEX)).as_py()
                   or 0) for p in _sides(ds))


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
    return {"min": v[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": v[-1],
            "mean": round(sum(v) / len(v), 1)}


def tokenize_split(examples: list[dict[str, Any]], renderer: Renderer, *, stage: str, max_length: int,
                   overlong: str, num_proc: int, desc: str, fingerprint: str) -> tuple[Any, Counter, dict[str, int]]:
    """Render a list of conversations (or texts) into a `datasets.Dataset`, filtering conversations by
    length. Returns (dataset, drops, counts); counts has `documents` and `tokens_in` for `stage: pt`."""
    from datasets import Dataset

    fields = {"pt": ["text"], "dpo": ["messages", "chosen", "rejected"]}.get(stage, ["messages"])
    rows = [{**{f: ex[f] for f in fields}, "where": ex.get("where", ""), "source": ex.get("mix_source", "")}
            for ex in examples]
    columns = PAIR_COLUMNS if stage == "dpo" else ("input_ids", "labels")
    if not rows:
        return Dataset.from_dict({c: [] for c in columns}), Counter(), {}
    ds = Dataset.from_list(rows)
    procs = num_proc or (min(4, os.cpu_count() or 1) if len(rows) >= PARALLEL_FROM else 1)
    ds = ds.map(_render_batch, batched=True, batch_size=256,
                fn_kwargs={"renderer": renderer, "stage": stage, "max_length": max_length},
                remove_columns=[*fields, "where", "source"], num_proc=procs if procs > 1 else None, desc=desc,
                new_fingerprint=fingerprint)  # given, so datasets does not pickle the tokenizer to hash it
    drops: Counter = Counter()
    if stage == "pt":  # nothing is dropped or cut short: every token of every document is in a piece
        import pyarrow.compute as pc

        docs = ds.with_format("arrow")[:]["document_tokens"]
        counts = {"documents": int(pc.sum(pc.greater(docs, 0)).as_py() or 0),
                  "tokens_in": int(pc.sum(docs).as_py() or 0)}
        return ds.remove_columns("document_tokens"), drops, counts
    lengths = _lengths(ds)  # pairs: the longer side, so a pair goes (or is cut) as a whole
    keep = []
    for i, n in enumerate(lengths):
        if n > max_length and overlong == "drop":
            drops["too_long"] += 1
        else:
            keep.append(i)
    ds = ds.select(keep)
    columns = [c for c in ds.column_names if c.endswith(("input_ids", "labels"))]
    if any(lengths[i] > max_length for i in keep):  # overlong: truncate, keeping the beginning
        ds = ds.map(lambda b: {k: [v[:max_length] for v in b[k]] for k in columns}, batched=True,
                    desc=f"{desc}: truncating")
    label_rows = zip(*(ds[c] for c in columns if c.endswith("labels")))
    unsupervised = [i for i, labs in enumerate(label_rows) if any(all(t == IGNORE_INDEX for t in lab) for lab in labs)]
    if unsupervised:
        drops["no_supervised_tokens"] += len(unsupervised)
        ds = ds.select(sorted(set(range(len(ds))) - set(unsupervised)))
    return ds, drops, {}


def heldout_conversations(cfg: Any) -> list[dict[str, Any]]:
    """The validation split of `cfg.data` as conversations, exactly as `prepare` splits it (before
    length filtering), so an experiment can roll out on the part a model never trained on."""
    d = cfg.data
    if d.mix:
        examples, n_in, drops, _, _ = read_mixture(
            [dataclasses.asdict(m) for m in d.mix], size=d.mix_size, stage=cfg.stage, n=d.n, seed=d.seed,
            gsm8k_boxed=d.gsm8k_boxed, system_prompt=d.system_prompt, instruction=d.instruction,
            max_chars=d.max_chars)
    else:
        examples, n_in, drops, _ = read_examples(
            d.name, stage=cfg.stage, fmt=d.format, columns=d.columns, split_name=d.split, limit=d.limit, n=d.n,
            seed=d.seed, gsm8k_boxed=d.gsm8k_boxed, system_prompt=d.system_prompt, instruction=d.instruction,
            max_chars=d.max_chars)
    _, val, _ = clean_and_split(examples, source=d.name, n_in=n_in, drops=drops, normalize=d.normalize,
                                dedup_mode=d.dedup, near_dup_threshold=d.near_dup_threshold, val_size=d.val_size,
                                seed=d.seed, max_chars=d.max_chars)
    return [{k: v for k, v in ex.items() if k not in ("where", "mix_source")} for ex in val]


def prepare(*, source: str, tokenizer: Any, stage: str = "sft", fmt: str = "auto", columns: dict | None = None,
            split_name: str | None = None, limit: int | None = None, n: int = 2000, seed: int = 0,
            val_size: float = 0.05, template: str = "auto", enable_thinking: bool = False,
            system_prompt: str | None = None, instruction: str = "auto", gsm8k_boxed: bool = True,
            supervise: str = "all_turns", max_length: int = 1024, overlong: str = "drop", dedup_mode: str = "near",
            near_dup_threshold: float = 0.9, normalize: str = "basic", max_chars: int = 1_000_000,
            num_proc: int = 0, use_cache: bool = True, mix: list[dict[str, Any]] | None = None,
            mix_size: int | None = None) -> Prepared:
    """Prepare a data set and return where it is (the cache directory) with its statistics."""
    from datasets import load_from_disk  # noqa: F401  (fail early if datasets is missing)

    if normalize not in NORMALIZE:
        raise DataError(f"unknown data.normalize {normalize!r}; known: {', '.join(NORMALIZE)}")
    t0 = time.perf_counter()
    source_stats: dict[str, dict[str, Any]] = {}
    if mix:
        source = "mix(" + ", ".join(f"{m['name']}:{m.get('weight', 1.0):g}" for m in mix) + ")"
        examples, n_in, drops, fixes, source_stats = read_mixture(
            mix, size=mix_size, stage=stage, n=n, seed=seed, gsm8k_boxed=gsm8k_boxed, system_prompt=system_prompt,
            instruction=instruction, max_chars=max_chars)
    else:
        examples, n_in, drops, fixes = read_examples(
            source, stage=stage, fmt=fmt, columns=columns, split_name=split_name, limit=limit, n=n, seed=seed,
            gsm8k_boxed=gsm8k_boxed, system_prompt=system_prompt, instruction=instruction, max_chars=max_chars)
    # DPO scores the reply alone: each side supervises only its last turn, whatever data.supervise says
    renderer = build_renderer(tokenizer, template=template, enable_thinking=enable_thinking,
                              supervise="last_turn" if stage == "dpo" else supervise)
    settings = dict(v=CACHE_VERSION, stage=stage, template=renderer.template, eot=renderer.eot,
                    kwargs=renderer.template_kwargs, supervise=renderer.supervise, max_length=max_length,
                    overlong=overlong, dedup=dedup_mode, thr=near_dup_threshold, val=val_size, seed=seed,
                    normalize=normalize, max_chars=max_chars)
    # What the key hashes: the converted conversations (records over max_chars are already gone, so a
    # huge record is never hashed), the tokenizer and its template, and the settings above.
    payload = [{k: ex.get(k) for k in ("messages", "chosen", "rejected", "text", "mix_source") if k in ex}
               for ex in examples]
    key = content_key([content_key(payload), _tokenizer_key(tokenizer), settings])[:24]
    cache = home() / "prepared" / key
    if use_cache and (cache / "stats.json").is_file():
        return Prepared(cache, json.loads((cache / "stats.json").read_text()), True)

    train, val, drops = clean_and_split(examples, source=source, n_in=n_in, drops=drops, normalize=normalize,
                                        dedup_mode=dedup_mode, near_dup_threshold=near_dup_threshold,
                                        val_size=val_size, seed=seed, max_chars=max_chars)
    out_splits, counts = {}, Counter()
    for name, part in (("train", train), ("validation", val)):
        ds, d, c = tokenize_split(part, renderer, stage=stage, max_length=max_length, overlong=overlong,
                                  num_proc=num_proc, desc=f"Tokenizing {name}", fingerprint=f"{key}-{name}")
        drops.update(d)
        counts.update(c)
        out_splits[name] = ds
    drops = Counter({k: v for k, v in drops.items() if v})
    if len(out_splits["train"]) == 0:
        raise DataError(f"{source}: no training example left after filtering ({n_in} in); "
                        f"dropped by reason: {dict(drops) or 'none'}; max_length={max_length}")
    stats = _stats(source, tokenizer, renderer, n_in, drops, out_splits, time.perf_counter() - t0, key)
    stats["stage"] = stage
    stats["normalize"] = normalize
    if fixes:  # repaired, not dropped: the conversation is kept without the turn
        stats["turns_removed"] = {"leading_assistant": fixes["leading_assistant_turn"]}
    if stage == "pt":
        stats.update(documents=counts["documents"], tokens_in=counts["tokens_in"])
    if source_stats:
        _source_stats(source_stats, {"train": train, "validation": val}, out_splits)
        stats["sources"] = source_stats
    out_splits = {k: ds.remove_columns("source") if "source" in ds.column_names else ds for k, ds in out_splits.items()}
    with atomic_dir(cache, overwrite=True) as tmp:
        for name, ds in out_splits.items():
            ds.save_to_disk(str(tmp / name))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return Prepared(cache, stats, False)


def _stats(source: str, tok: Any, renderer: Renderer, n_in: int, drops: Counter, splits: dict, seconds: float,
           key: str) -> dict[str, Any]:
    lengths = [n for ds in splits.values() for n in _lengths(ds)]  # pairs: the longer side
    tokens = sum(_tokens(ds) for ds in splits.values())
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
        "tokens": tokens,
        "supervised_tokens": supervised,
        "supervised_fraction": round(supervised / max(1, tokens), 4),
        "token_length": _percentiles(lengths),
        "prepare_seconds": round(seconds, 2),
        "data_fingerprint": key,  # = cache_key: converted data + tokenizer + every setting that affects tokens
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
        dedup_mode=d.dedup, near_dup_threshold=d.near_dup_threshold, normalize=d.normalize, max_chars=d.max_chars,
        num_proc=d.num_proc, use_cache=use_cache, mix=[dataclasses.asdict(m) for m in d.mix] or None,
        mix_size=d.mix_size,
    )
