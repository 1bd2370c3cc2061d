"""Evaluation tasks: a small registry entry each (data, prompt, extractor, scorer).

    TASKS["gsm8k"].items(limit=20)  ->  [Item(id, messages, gold, meta), ...]

A task names its scorer (`scorers/`: math, gsm8k, choice, rouge_zh). A task's prompt is the data set's conversation without its final reply, passed through the same
`apply_prompts` as training (system prompt, step-by-step `\\boxed{}` instruction), and rendered by
the same renderer, so a model is asked at test time exactly as it was trained. Custom tasks come
from a YAML file with the same fields (`tunelab eval --task my_task.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..data.prompts import apply_prompts

KINDS = ("generate", "choice_ll", "perplexity", "efficiency")
CHOICE_INSTRUCTION = "请直接给出正确选项的字母，并写在 \\boxed{} 中。"


@dataclass(frozen=True)
class Item:
    id: str
    messages: list[dict[str, str]]  # the prompt: everything before the reply to be generated
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # the data's reference solution (for step similarity), when it has one
    text: str | None = None  # a plain-text prompt (few-shot for base models): used instead of `messages`


@dataclass(frozen=True)
class Task:
    name: str
    source: str = ""
    description: str = ""
    kind: str = "generate"
    scorer: str = "math"
    format: str = "auto"
    columns: dict[str, str] | None = None
    instruction: str = "auto"  # appended to math questions (as in training); "" for none
    breakdown: tuple[str, ...] = ()  # meta keys to report accuracy by (e.g. subject, level)
    n: int = 200  # size and seed of generated sets (arith); a seed unlike training's default 0
    seed: int = 1234
    max_new_tokens: int | None = None
    # multiple choice by log-likelihood (kind choice_ll): mmlu | ceval | cmmlu | cn_middle_school, the split scored
    benchmark: str = ""
    split: str = ""
    # where --n-shot examples come from for rollouts: a data source (a seeded sample of it), or a fixed
    # exemplar set of fewshot.py (gsm8k_cot, minerva_math); "" = --n-shot is refused for this task
    fewshot: str = ""

    def items(self, *, limit: int | None = None, source: str | None = None, system_prompt: str | None = None,
              instruction: str | None = None, normalize: str = "basic") -> list[Item]:
        from ..data.clean import normalise
        from ..data.sources import load_conversations

        convs = load_conversations(source or self.source, format=self.format, columns=self.columns, limit=limit,
                                   n=self.n if limit is None else min(self.n, limit), seed=self.seed)
        out = []
        for i, conv in enumerate(convs):
            conv = normalise(apply_prompts(conv, system_prompt=system_prompt,
                                           instruction=self.instruction if instruction is None else instruction),
                             normalize)  # as the model's training data was
            item = to_item(conv, i, self.scorer, where=f"task {self.name}: item {i} of {source or self.source}")
            if self.scorer == "choice" and not item.gold.strip():
                continue  # cn_middle_school: fill-in rows have no option letter to grade
            out.append(item)
        return out


def to_item(conv: dict[str, Any], index: int, scorer: str, where: str = "") -> Item:
    """A prepared conversation -> the prompt (everything before the last reply) and the reference:
    the exact answer for graded tasks, the last reply itself for generation metrics."""
    msgs = conv["messages"]
    last = max(k for k, m in enumerate(msgs) if m["role"] == "assistant")
    from .scorers import get_scorer

    gold = conv.get("answer") if get_scorer(scorer).gold == "answer" else msgs[last]["content"]
    if gold is None:
        raise DataError(f"{where}: no reference answer")
    meta = {k: v for k, v in (conv.get("meta") or {}).items() if isinstance(v, (str, int, float))}
    reference = msgs[last]["content"] if get_scorer(scorer).gold == "answer" else None
    return Item(str(meta.get("unique_id") or meta.get("id") or index), msgs[:last], str(gold), meta, reference)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("math500", "math500", "MATH-500 competition math, \\boxed{} answers, by subject and level",
         breakdown=("subject", "level"), max_new_tokens=1024, fewshot="minerva_math"),
    Task("gsm8k", "gsm8k_test", "GSM8K test, strict and flexible extraction side by side", scorer="gsm8k",
         fewshot="gsm8k_cot"),
    Task("cmath", "cmath", "CMATH Chinese elementary math (answers with units)", breakdown=("grade",)),
    Task("arith", "arith", "built-in arith word problems, zh and en (seed 1234, unlike training's 0)"),
    Task("arith_en", "arith_en", "built-in arith word problems, English"),
    Task("arith_zh", "arith_zh", "built-in arith word problems, Chinese"),
    Task("gaokao_math_cloze", "gaokao_math_cloze", "Gaokao fill-in-the-blank math"),
    Task("cn_middle_school", "cn_middle_school", "Chinese middle-school math multiple choice, log-likelihood of A-D "
         "(C-Eval prompt; 5 items held out as the few-shot pool)", kind="choice_ll", scorer="choice_ll",
         benchmark="cn_middle_school"),
    Task("cn_middle_school_gen", "cn_middle_school", "Chinese middle-school multiple choice, generated letter",
         scorer="choice", columns={"input": "question", "golden": "choice_answer"}, instruction=CHOICE_INSTRUCTION),
    Task("mmlu", "", "MMLU (--data FOLDER in the published layout, or hub), log-likelihood of A-D, per subject "
         "and category", kind="choice_ll", scorer="choice_ll", benchmark="mmlu", split="test"),
    Task("ceval", "", "C-Eval val split (--data FOLDER or hub), log-likelihood of A-D", kind="choice_ll",
         scorer="choice_ll", benchmark="ceval", split="val"),
    Task("cmmlu", "", "CMMLU (--data FOLDER or hub), log-likelihood of A-D", kind="choice_ll", scorer="choice_ll",
         benchmark="cmmlu", split="test"),
    Task("belle_eval", "belle_eval", "BELLE eval set, ROUGE/BLEU (Chinese) against the reference answer",
         scorer="rouge_zh", instruction=""),
    Task("alpaca_zh_demo", "alpaca_zh_demo", "Chinese alpaca demo, ROUGE/BLEU against the reference",
         scorer="rouge_zh", instruction=""),
    Task("perplexity", "", "perplexity of a text or conversation file (--data); assistant tokens only for "
         "conversations", kind="perplexity", scorer="none"),
    Task("efficiency", "", "time to first token, decode tokens/s, latency, peak memory at batch 1, 4, 8",
         kind="efficiency", scorer="none"),
]}


def get_task(name: str) -> Task:
    """A registered task, or a custom one from a YAML file with Task's fields."""
    if name in TASKS:
        return TASKS[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        import yaml

        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(Task)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown task key(s) {unknown}; known: {', '.join(sorted(known))}")
        spec.setdefault("name", path.stem)
        if "breakdown" in spec:
            spec["breakdown"] = tuple(spec["breakdown"])
        task = Task(**spec)
        if task.kind not in KINDS:
            raise ConfigError(f"{path}: kind '{task.kind}'; known: {', '.join(KINDS)}")
        if task.kind == "choice_ll" and task.benchmark not in ("mmlu", "ceval", "cmmlu", "cn_middle_school"):
            raise ConfigError(f"{path}: a choice_ll task needs benchmark: mmlu, ceval, cmmlu or cn_middle_school")
        if task.kind in ("generate", "choice_ll"):
            from .scorers import SCORERS

            if task.scorer not in SCORERS:
                raise ConfigError(f"{path}: scorer '{task.scorer}'; known: {', '.join(SCORERS)}")
        return task
    raise ConfigError(f"unknown task '{name}'; known: {', '.join(TASKS)} (or a task .yaml file)")
