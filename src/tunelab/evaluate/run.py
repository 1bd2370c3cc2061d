"""The one evaluation entry point: a model reference and a task in, results and predictions out.

    from tunelab.evaluate.run import EvalSettings, evaluate
    results = evaluate("runs/quickstart", "arith_en", out=Path("runs/eval/arith_en"),
                       settings=EvalSettings(limit=40, max_new_tokens=256))

`tunelab eval`, the variants of `tunelab run` and a sweep's `eval:TASK:METRIC` objective all call
`evaluate`, so one model on one task with the same settings gets the same prompt (the training
renderer, the trained system prompt and instruction), the same generation settings and the same
scorer everywhere. Generation tasks write `predictions.jsonl` + `results.json`; `perplexity` and
`efficiency` write `results.json`.

With `rag` (--rag INDEX) every item's conversation gets the passages retrieved for its question through
`rag.context.RagContext`, the object `chat --rag` and `serve --rag` use, so an item is asked exactly
what chat would ask for the same message; the item itself is never retrieved (`with_retrieval`).
"""
from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, OutputExistsError
from ..models.generate import GenerationSettings
from .tasks import Item, Task, get_task

BACKENDS = ("hf", "vllm")
DEFAULT_MAX_NEW_TOKENS = 512


@dataclass
class EvalSettings:
    limit: int | None = None  # first N items
    data: str | None = None  # the task's data replaced by this source (required for perplexity)
    max_new_tokens: int | None = None  # None: the task's own value, else 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt (pass@k)
    seed: int = 0
    batch_size: int = 16
    backend: str = "hf"  # hf | vllm
    template: str | None = None  # override the trained chat template (warns)
    enable_thinking: bool | None = None
    max_length: int = 1024  # perplexity: context window
    stride: int = 512  # perplexity: sliding-window stride
    prompt_tokens: int = 128  # efficiency: prompt length
    # few-shot: K examples (an int for every task, or {task: K, "default": K}); never from the scored items
    n_shot: int | dict[str, int] = 0
    fewshot_as_multiturn: bool = False  # chat mode: shots as user/assistant turns, not folded into one message
    fewshot_data: str | None = None  # rollouts: draw the shots from this source (seeded) instead of the task's
    fewshot_seed: int = 1234
    # None: log-likelihood tasks use plain text (base models), rollouts the model's chat template
    chat_template: bool | None = None
    split: str | None = None  # multiple choice: the benchmark split to score (default: the task's)
    seeds: int = 1  # sampling: run every item with seeds seed .. seed+seeds-1, report mean and spread
    # retrieval (rollouts with a chat template): passages from this index (`tunelab rag index`) in each prompt
    rag: str | None = None
    rag_k: int = 3  # passages per question
    rag_mode: str | None = None  # bm25 | dense | hybrid (None: hybrid with an encoder, else bm25)
    rag_placement: str = "system"  # a system message, or before_question
    rag_encoder: str | None = None  # refuse an index built with another encoder
    device: str | None = None  # None: the GPU when there is one, else the CPU (as chat and serve)

    def __post_init__(self) -> None:
        checks = [("limit", self.limit is None or self.limit >= 1, "at least 1"),
                  ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "at least 1"),
                  ("temperature", self.temperature >= 0, ">= 0"), ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("n", self.n >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("backend", self.backend in BACKENDS, f"one of {', '.join(BACKENDS)}"),
                  ("max_length", self.max_length >= 2, "at least 2"),
                  ("stride", 1 <= self.stride <= self.max_length, "between 1 and max_length"),
                  ("prompt_tokens", self.prompt_tokens >= 1, "at least 1"),
                  ("n_shot", all(isinstance(k, int) and k >= 0 for k in
                                 (self.n_shot.values() if isinstance(self.n_shot, dict) else [self.n_shot])),
                   "a whole number >= 0, or a mapping of task names (and 'default') to such numbers"),
                  ("seeds", self.seeds >= 1, "at least 1"),
                  ("seeds", self.seeds == 1 or self.temperature > 0,
                   "1 with greedy decoding (every seed gives the same output); set --temperature > 0")]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"evaluation setting '{key}' (--{key.replace('_', '-')}) must be {expected}, "
                                  f"got {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "evaluation") -> "EvalSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def generation(self, task: Task) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens or task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                                  temperature=self.temperature, top_p=self.top_p, n=max(self.n, self.seeds),
                                  seed=self.seed, batch_size=self.batch_size)

    def shots_for(self, task: str) -> int:
        """K for this task: `n_shot` itself, or its entry for the task (else its "default", else 0)."""
        if isinstance(self.n_shot, dict):
            return int(self.n_shot.get(task, self.n_shot.get("default", 0)))
        return int(self.n_shot)

    def uses_chat_template(self, task: Task) -> bool:
        return self.chat_template if self.chat_template is not None else task.kind != "choice_ll"


def check(task: Task, settings: EvalSettings) -> None:
    """What can be refused before any model loads."""
    if settings.backend == "vllm":
        if task.kind != "generate":
            raise DataError(f"--backend vllm is for rollouts; task '{task.name}' runs with transformers")
        from .vllm_backend import check_available

        check_available()
    if task.kind == "perplexity" and not settings.data:
        raise DataError("task perplexity needs --data FILE (text or conversations, any supported format)")
    k = settings.shots_for(task.name)
    if k and task.kind in ("perplexity", "efficiency"):
        raise DataError(f"--n-shot is for rollouts and multiple choice, not task '{task.name}'")
    if k and task.kind == "generate" and not (task.fewshot or settings.fewshot_data):
        raise DataError(f"task '{task.name}' has no split to draw few-shot examples from that is not its test set; "
                        "give --fewshot-data SOURCE (a training set of the same kind; K examples are drawn with "
                        "--fewshot-seed)")
    if task.kind == "choice_ll" and not (settings.data or task.source):
        raise DataError(f"task {task.name} needs --data FOLDER (the benchmark in its published layout) or --data hub")
    if settings.rag:
        if task.kind != "generate" or not settings.uses_chat_template(task):
            raise DataError(f"--rag puts passages into the chat conversation a model answers: it needs a rollout task "
                            f"asked through the chat template, not '{task.name}'"
                            + (" with --no-chat-template" if task.kind == "generate" else ""))
        if k:
            raise DataError("--rag with --n-shot: the retrieved passages are the worked examples; use one or the other")
        check_retrieval(settings)


def check_retrieval(settings: EvalSettings) -> None:
    """The index of `settings.rag` exists, can run `rag_mode` and was built with `rag_encoder` (no model loads)."""
    from ..rag.context import check as check_index

    check_index(settings.rag, k=settings.rag_k, mode=settings.rag_mode, placement=settings.rag_placement,
                encoder=settings.rag_encoder)


def load(ref: str, settings: EvalSettings) -> Any:
    """The model as evaluation uses it (vLLM loads the weights itself)."""
    from ..models.loaded import Loaded, pick_device

    loaded = Loaded(ref, template=settings.template, enable_thinking=settings.enable_thinking,
                    load_weights=settings.backend != "vllm", device=pick_device(settings.device))
    if settings.backend == "vllm":
        from .vllm_backend import engine_args

        engine_args(loaded.path, loaded.meta)  # refuses DoRA/QLoRA adapters with the way out
    return loaded


def task_items(task: Task, loaded: Any, settings: EvalSettings) -> list[Item]:
    """A task's items, asked the way the model was trained (its system prompt and math instruction);
    with --n-shot, the examples go before each question (see fewshot.py)."""
    k = settings.shots_for(task.name)
    chat = settings.uses_chat_template(task)
    plain = task.items(limit=settings.limit, source=settings.data, instruction="", normalize=loaded.normalize)
    questions = {it.messages[-1]["content"] for it in plain}  # the scored questions: never a shot
    if not chat:  # plain text for a base model: the question alone (the shots show the format)
        from .fewshot import plain_prompt

        shots = _shots(task, settings, questions, k)
        return [dataclasses.replace(it, text=plain_prompt(task.fewshot, shots, it.messages[-1]["content"])[0])
                for it in plain]
    items = task.items(limit=settings.limit, source=settings.data, system_prompt=loaded.system_prompt,
                       instruction=loaded.task_instruction, normalize=loaded.normalize)
    if k:
        from .fewshot import chat_prompt

        shots = _shots(task, settings, questions, k)
        return [dataclasses.replace(it, messages=chat_prompt(task.fewshot, shots, it.messages,
                                                             settings.fewshot_as_multiturn)) for it in items]
    return items


def _shots(task: Task, settings: EvalSettings, questions: set[str], k: int) -> list[tuple[str, str]]:
    from .fewshot import EXEMPLARS, exemplars, sample

    if not k:
        return []
    source = settings.fewshot_data or task.fewshot
    if source in EXEMPLARS and not settings.fewshot_data:
        return exemplars(source, k)
    return sample(source, k, settings.fewshot_seed, exclude=questions)


# settings that do not change what is generated (tested: batched greedy == one by one)
NOT_IN_FINGERPRINT = ("batch_size", "device")


def fingerprint_settings(settings: EvalSettings) -> dict[str, Any]:
    """The settings an evaluation's results depend on. Without retrieval the rag_* keys are left out, so
    evaluations that ran before they existed keep their fingerprints; with it they all count."""
    return {k: v for k, v in dataclasses.asdict(settings).items()
            if k not in NOT_IN_FINGERPRINT and not (k.startswith("rag") and not settings.rag)}


def fingerprint(loaded: Any, task: Task, settings: EvalSettings, items: list[Item] | None) -> dict[str, Any]:
    """What an evaluation's results depend on: the model and its weights' identity, the task, the
    settings, the prompt settings and, for rollouts, the items (ids, prompts, gold answers)."""
    import dataclasses
    import hashlib

    fp = {"model": loaded.ref, "model_identity": loaded.identity, "task": task.name,
          # `fewshot` (where shots would come from) matters only with n_shot > 0, which the settings record
          "task_definition": {k: v for k, v in dataclasses.asdict(task).items()
                              if k not in ("description", "fewshot") and not (k in ("benchmark", "split") and not v)},
          "settings": fingerprint_settings(settings),
          **{k: v for k, v in loaded.describe().items() if k != "model"}}
    if items is not None:
        body = json.dumps([[it.id, it.messages, it.gold] + ([it.text] if it.text else []) for it in items],
                          ensure_ascii=False, sort_keys=True)
        fp["items"] = {"n": len(items), "sha256": hashlib.sha256(body.encode()).hexdigest()[:16]}
    return json.loads(json.dumps(fp, default=str))  # as it reads back from disk (tuples -> lists)


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    from .. import rundir

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    return rundir.describe_changes({k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})


def open_output(out: Path, fp: dict[str, Any], *, overwrite: bool) -> None:
    """An evaluation continues in `out` only if what is there was produced by the same fingerprint;
    otherwise it is refused (or, with overwrite, replaced when tunelab wrote it)."""
    from .. import rundir
    from ..paths import check_writable, mark, marker_kind, remove_output

    if out.exists() and not out.is_dir():
        check_writable(out, overwrite, kind="eval")  # refuses: a file is never replaced by a directory
    if out.is_dir() and any(out.iterdir()):
        old = rundir.read_fingerprint(out)
        if old != fp:
            if not overwrite:
                why = (f"it differs in {differences(old, fp)}" if old else
                       f"it has no {rundir.FINGERPRINT} (not an evaluation tunelab wrote, or an older one)")
                raise OutputExistsError(f"{out} holds another evaluation ({why}); its predictions would be mixed "
                                        "with these. Choose another --output, or pass --overwrite to replace it")
            remove_output(out, "eval")
    out.mkdir(parents=True, exist_ok=True)
    if marker_kind(out) is None:
        mark(out, "eval")
    rundir.write_fingerprint(out, fp)


def evaluate(model: str | Any, task: str | Task, *, out: Path, settings: EvalSettings | None = None,
             items: list[Item] | None = None, export_review: Path | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Evaluate `model` (a reference, or an already loaded `models.loaded.Loaded`) on `task`.

    `items` replaces the task's own items (an experiment's held-out split); otherwise they come
    from the task's data with the model's trained prompt settings. Predictions already in `out`
    are continued only when they come from the same model, task, items and settings."""
    settings = settings or EvalSettings()
    task = get_task(task) if isinstance(task, str) else task
    check(task, settings)
    loaded = load(model, settings) if isinstance(model, str) else model
    out = Path(out)
    if task.kind == "generate" and items is None:
        items = task_items(task, loaded, settings)
    retrieval = None
    if settings.rag:  # the prompts with their passages are what the fingerprint's items hash covers
        items, retrieval = with_retrieval(items, settings, loaded.task_instruction)
    if task.kind == "choice_ll":
        from .multiple_choice import build_prompts, choice_eval, prompts_digest

        resolved = dataclasses.replace(settings, chat_template=settings.uses_chat_template(task))
        prompts = build_prompts(task, loaded, resolved)
        fp = fingerprint(loaded, task, settings, None)
        fp["items"] = prompts_digest(prompts)  # the exact prompts and continuations scored
        open_output(out, fp, overwrite=overwrite)
        return choice_eval(loaded, task, resolved, out, prompts)
    open_output(out, fingerprint(loaded, task, settings, items), overwrite=overwrite)
    if task.kind == "perplexity":
        return _perplexity(loaded, task, settings, out)
    if task.kind == "efficiency":
        return _efficiency(loaded, task, settings, out)
    from .rollout import rollouts

    return rollouts(loaded, task, items, out, settings.generation(task), backend=settings.backend,
                    export_review=export_review, seeds=settings.seeds, n_shot=settings.shots_for(task.name),
                    stop_strings=_stop_strings(task, items), extra={"retrieval": retrieval} if retrieval else None)


REFERENCE_MIN_CHARS = 40


def with_retrieval(items: list[Item], settings: EvalSettings,
                   instruction: str | None = None) -> tuple[list[Item], dict[str, Any]]:
    """(the items with the passages retrieved for their last user message, how retrieval went).

    The passages come from `RagContext.augmented`, as in `chat --rag`. Never the item itself: the
    leakage check (`rag.leakage.Exclude`) drops candidates whose document id is the item's own (when
    the item's data has an id column; a bare position would match unrelated records) or whose text
    near-duplicates the item's question (without the math instruction, which would dilute the
    overlap) or its reference solution (one of at least REFERENCE_MIN_CHARS: a short one, "#### 7" or
    "还剩9页", is a phrase many solutions share, not the item). Each item's meta records its sources
    and what was dropped."""
    import time

    from ..data.prompts import without_instruction
    from ..rag.context import RagContext
    from ..rag.leakage import THRESHOLD, Exclude

    rag = RagContext(settings.rag, k=settings.rag_k, mode=settings.rag_mode, placement=settings.rag_placement,
                     encoder=settings.rag_encoder)
    t0 = time.perf_counter()
    out, reasons, affected, passages = [], {}, 0, 0
    try:
        for it in items:
            own_id = it.meta.get("unique_id") or it.meta.get("id")
            reference = it.reference if it.reference and len(it.reference) >= REFERENCE_MIN_CHARS else ""
            texts = [without_instruction(it.messages[-1]["content"], instruction), reference]
            messages, found = rag.augmented(it.messages, Exclude(ids={own_id} if own_id else set(), texts=texts))
            for _, why in found.excluded:
                kind = why.split()[0]  # "id" or "near-duplicate"
                reasons[kind] = reasons.get(kind, 0) + 1
            affected += bool(found.excluded)
            passages += len(found.hits)
            meta = {**it.meta, "retrieved": "; ".join(h.citation for h in found.hits),
                    "leaks_excluded": "; ".join(f"{d} ({why})" for d, why in found.excluded)}
            out.append(dataclasses.replace(it, messages=messages, meta=meta))
        info = {**rag.describe(), "query": "the item's last user message (as chat --rag)",
                "leakage_check": f"document id, or character 5-gram overlap >= {THRESHOLD} with the question or "
                                 f"the reference solution (if at least {REFERENCE_MIN_CHARS} characters)",
                "excluded": sum(reasons.values()), "excluded_by_reason": reasons, "items_with_excluded": affected,
                "passages": passages, "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        rag.close()
    print(f"[tunelab] retrieval: {passages} passages for {len(items)} items from {settings.rag}; "
          f"{info['excluded']} candidates excluded as the items themselves ({affected} items)", flush=True)
    return out, info


def _stop_strings(task: Task, items: list[Item]) -> list[str]:
    """Plain-text prompts end where the next example would begin ("Q:", "Problem:", "Question:")."""
    if not any(it.text for it in items):
        return []
    from .fewshot import LAYOUTS, layout

    return LAYOUTS[layout(task.fewshot, items[0].messages[-1]["content"])][3]


def _write(out: Path, res: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return res


def _perplexity(loaded: Any, task: Task, settings: EvalSettings, out: Path) -> dict[str, Any]:
    from ..data.clean import normalise
    from ..data.sources import load_conversations
    from .perplexity import perplexity

    examples = [normalise(e, loaded.normalize) for e in load_conversations(settings.data, limit=settings.limit)]
    res = {"task": task.name, "data": settings.data, **loaded.describe(),
           **perplexity(loaded.model, loaded.renderer, examples, max_length=settings.max_length,
                        stride=settings.stride)}
    return _write(out, res)


def _efficiency(loaded: Any, task: Task, settings: EvalSettings, out: Path) -> dict[str, Any]:
    from .efficiency import measure

    rows = measure(loaded.model, loaded.tokenizer, prompt_tokens=settings.prompt_tokens,
                   new_tokens=settings.max_new_tokens or 32)
    return _write(out, {"task": task.name, **loaded.describe(), "rows": rows})
