"""Readers that turn one raw data record into a tunelab conversation.

Each supported on-disk format (alpaca, sharegpt, openai, MATH, GSM8K, CMATH, BELLE, raw text, the
built-in arithmetic generator) has one reader with the same signature:

    read_X(record, *, columns=None, where="", **options) -> conversation | {"text": str}

`columns` maps the format's canonical field names to the file's column names (as LLaMA-Factory's
dataset_info.json does), so one reader serves any file laid out the same way. `where` ("file:line")
is only used in error messages. Options understood: `source` (stored in meta) and `gsm8k_boxed`;
others are ignored so that one option set can be passed to every reader.

Readers do not clean text and do not add instructions or system prompts: contents pass through as
given, and math formats mark meta `task="math"` so that a later stage can add its instruction.
`FORMATS` is the registry, `get_reader` looks a name up, and `detect` guesses from the keys.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from tunelab.data.answers import final_answer_line, last_boxed, split_hash_answer
from tunelab.data.conversation import DataError, conversation, message

Reader = Callable[..., dict]
FORMATS: dict[str, Reader] = {}
# Canonical fields per format; a column mapping may only rename these (a typo in a mapping key
# would otherwise be silently ignored and surface later as a confusing "missing column").
FIELDS: dict[str, tuple[str, ...]] = {}

_ROLES = {"user": {"human", "user", "prompter"}, "system": {"system"},
          "assistant": {"gpt", "assistant", "bot", "chatgpt", "model", "ai", "chatbot", "gpt4", "gpt-4"}}


def _register(name: str, *fields: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        FORMATS[name] = fn
        FIELDS[name] = fields
        return fn
    return deco


def _at(where: str) -> str:
    return f"{where}: " if where else ""


class _Rec:
    """Field access through the column mapping, with errors that name the record and column."""

    def __init__(self, record: Any, columns: dict[str, str] | None, where: str, fmt: str):
        if not isinstance(record, dict):
            raise DataError(f"{_at(where)}a {fmt} record must be a JSON object, got {type(record).__name__}")
        unknown = sorted(set(columns or {}) - set(FIELDS[fmt]))
        if unknown:
            raise DataError(f"{_at(where)}column mapping for format {fmt!r} has unknown field(s) {unknown}; "
                            f"its fields are {list(FIELDS[fmt])}")
        self.record, self.columns, self.where, self.fmt = record, columns or {}, where, fmt

    def column(self, field: str) -> str:
        return self.columns.get(field, field)

    def get(self, field: str, required: bool = True) -> Any:
        col = self.column(field)
        value = self.record.get(col)
        if value is None and required:
            mapped = f" (mapped from {self.fmt} field {field!r})" if col != field else ""
            state = "is null in" if col in self.record else "missing from"
            raise DataError(f"{_at(self.where)}column {col!r}{mapped} {state} this {self.fmt} record; "
                            f"columns present: {', '.join(map(repr, self.record)) or '(none)'}")
        return value

    def text(self, field: str, required: bool = True) -> str | None:
        value = self.get(field, required)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{_at(self.where)}column {self.column(field)!r} must be text, "
                            f"got {type(value).__name__}: {value!r:.80}")
        return value

    def answer(self, field: str, required: bool = True) -> str | None:
        # Final answers are sometimes stored as numbers (CSV/parquet, generators); graders want text.
        value = self.get(field, required)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return self.text(field, required)


def _meta(options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    meta = {k: v for k, v in fields.items() if v is not None}
    if options.get("source"):
        meta["source"] = options["source"]
    return meta


def _join(instruction: str, extra: str | None) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def _role(name: Any, where: str, index: int) -> str:
    role = next((r for r, names in _ROLES.items() if str(name).lower() in names), None)
    if role is None:
        known = "; ".join(f"{r}: {', '.join(sorted(names))}" for r, names in _ROLES.items())
        raise DataError(f"{_at(where)}message {index}: unknown role {name!r}; known role names ({known})")
    return role


@_register("alpaca", "instruction", "input", "output", "system", "history")
def read_alpaca(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "alpaca")
    msgs = []
    if system := r.text("system", required=False):
        msgs.append(message("system", system))
    history = r.get("history", required=False) or []
    if not isinstance(history, list):
        raise DataError(f"{_at(where)}column {r.column('history')!r} must be a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{_at(where)}history item {i} must be a [user, assistant] pair of strings, "
                            f"got {pair!r:.80}")
        msgs += [message("user", pair[0]), message("assistant", pair[1])]
    msgs.append(message("user", _join(r.text("instruction"), r.text("input", required=False))))
    msgs.append(message("assistant", r.text("output")))
    return conversation(msgs, None, **_meta(options))


@_register("belle_math", "instruction", "input", "output")
def read_belle_math(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    """BELLE school_math: `题目：...` in `instruction`, a worked solution in `output`.

    Convention kept, not converted: a solution ends with a line `答案：...`, and the gold answer is
    read from that line by `answers.final_answer_line` (its number, or its text when it has none),
    the very function the grader uses on a model's output (`chinese` extractor). The record's meta
    says `answer_format: answer_line`, so `prompts.apply_prompts` asks for that line ("在最后一行写出
    “答案：”和最终答案") instead of `\\boxed{}`. Why keep it: the targets are the data set's own
    text; rewriting 250,000 generated solutions around a parsed answer would train on text nobody
    wrote, and any answer misread would become a wrong target. A solution without an `答案：` line
    (some records end in a sentence) has `answer=None`: no gold, so it is not graded by exact match.
    """
    r = _Rec(record, columns, where, "belle_math")
    output = r.text("output")
    msgs = [message("user", _join(r.text("instruction"), r.text("input", required=False))),
            message("assistant", output)]
    return conversation(msgs, final_answer_line(output), **_meta(options, task="math", answer_format="answer_line"))


@_register("belle_seed", "instruction", "instances")
def read_belle_seed(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "belle_seed")
    instances = r.get("instances")
    if not (isinstance(instances, list) and instances and isinstance(instances[0], dict)
            and isinstance(instances[0].get("output"), str)):
        raise DataError(f"{_at(where)}column {r.column('instances')!r} must be a non-empty list of "
                        f"{{input, output}} objects, got {instances!r:.80}")
    first = instances[0]  # the seed tasks carry exactly one worked instance each
    msgs = [message("user", _join(r.text("instruction"), first.get("input") or None)),
            message("assistant", first["output"])]
    return conversation(msgs, None, **_meta(options, id=record.get("id"), name=record.get("name")))


# A speaker marker at the start of the text or after whitespace, so "a Human: b" inside a sentence
# without a preceding space is not taken for a turn boundary. Full-width colons occur in Chinese data.
_TURN = re.compile(r"(?:^|(?<=\s))(Human|Assistant)\s*[:：]")


def parse_turns(text: str, where: str = "") -> list[dict[str, str]]:
    """Split "Human: ... Assistant: ..." text into messages; a trailing empty "Assistant:" is dropped."""
    marks = list(_TURN.finditer(text))
    if not marks:
        return [message("user", text)]
    if text[: marks[0].start()].strip():
        raise DataError(f"{_at(where)}text before the first 'Human:' marker: {text[: marks[0].start()]!r:.80}")
    msgs = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = "user" if m.group(1) == "Human" else "assistant"
        # Whitespace around a turn belongs to the "Human:/Assistant:" framing, not to the content.
        content = text[m.end():end].strip()
        if msgs and msgs[-1]["role"] == role:
            raise DataError(f"{_at(where)}two {m.group(1)} turns in a row (turn {i + 1})")
        msgs.append(message(role, content))
    if msgs[0]["role"] != "user":
        raise DataError(f"{_at(where)}the turns must start with 'Human:'")
    if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs


@_register("belle_multiturn", "instruction", "input", "output")
def read_belle_multiturn(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "belle_multiturn")
    msgs = parse_turns(r.text("instruction"), where)
    if msgs[-1]["role"] != "user":
        raise DataError(f"{_at(where)}the earlier turns must end with a Human turn (the current question) "
                        f"or an empty 'Assistant:'")
    if extra := r.text("input", required=False):
        msgs[-1] = message("user", _join(msgs[-1]["content"], extra))
    msgs.append(message("assistant", r.text("output")))
    return conversation(msgs, None, **_meta(options))


def _chat(items: Any, where: str, col: str, role_key: str, content_key: str) -> list[dict[str, str]]:
    if not isinstance(items, list):
        raise DataError(f"{_at(where)}column {col!r} must be a list of messages, got {type(items).__name__}")
    msgs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{_at(where)}message {i} must be an object, got {item!r:.80}")
        # sharegpt files use from/value, OpenAI-style files role/content; accept either in both.
        pairs = [(role_key, content_key), ("role", "content"), ("from", "value")]
        rk, ck = next((p for p in pairs if p[0] in item), pairs[0])
        if rk not in item or ck not in item:
            raise DataError(f"{_at(where)}message {i} needs {role_key!r}/{content_key!r} (or role/content), "
                            f"has keys {sorted(item)}")
        if not isinstance(item[ck], str):
            raise DataError(f"{_at(where)}message {i}: {ck!r} must be text, got {type(item[ck]).__name__}")
        msgs.append(message(_role(item[rk], where, i), item[ck]))
    return msgs


def _with_system(msgs: list[dict[str, str]], system: str | None, where: str) -> list[dict[str, str]]:
    if not system:
        return msgs
    if msgs and msgs[0]["role"] == "system":
        raise DataError(f"{_at(where)}both a top-level 'system' and a system message; keep one")
    return [message("system", system), *msgs]


@_register("sharegpt", "conversations", "system")
def read_sharegpt(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "sharegpt")
    msgs = _chat(r.get("conversations"), where, r.column("conversations"), "from", "value")
    return conversation(_with_system(msgs, r.text("system", required=False), where), None, **_meta(options))


@_register("openai", "messages", "system", "answer", "meta")
def read_openai(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "openai")
    msgs = _with_system(_chat(r.get("messages"), where, r.column("messages"), "role", "content"),
                        r.text("system", required=False), where)
    # A saved tunelab conversation is an openai record plus answer/meta: keep both so it round-trips.
    meta = r.get("meta", required=False)
    meta = dict(meta) if isinstance(meta, dict) else {}
    return conversation(msgs, r.answer("answer", required=False), **{**meta, **_meta(options)})


@_register("math", "problem", "solution", "answer", "subject", "level", "unique_id")
def read_math(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "math")
    solution = r.text("solution")
    # The original MATH release has no answer column; its answer is the last \boxed{} of the solution.
    answer = r.answer("answer", required=False)
    if answer is None:
        answer = last_boxed(solution)
    subject = r.get("subject", required=False) or record.get("type")  # "type" in the original MATH
    meta = _meta(options, task="math", subject=subject, level=r.get("level", required=False),
                 unique_id=r.get("unique_id", required=False))
    return conversation([message("user", r.text("problem")), message("assistant", solution)], answer, **meta)


_CALC = re.compile(r"<<.*?>>")


@_register("gsm8k", "question", "answer")
def read_gsm8k(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "gsm8k")
    text = r.text("answer")
    parts = split_hash_answer(text)
    if parts is None:
        raise DataError(f"{_at(where)}a gsm8k answer must end with '#### N' (N not empty), got {text[-80:]!r}")
    body, final = parts
    # <<48/2=24>> are calculator annotations for the original tool-using model, not reasoning text.
    body = _CALC.sub("", body)
    if options.get("gsm8k_boxed", True):
        sep = "\n" if body and not body.endswith("\n") else ""
        reply = f"{body}{sep}The answer is \\boxed{{{final}}}."
    else:
        reply = body + text[text.rfind("####"):]
    return conversation([message("user", r.text("question")), message("assistant", reply)], final,
                        **_meta(options, task="math"))


@_register("cmath", "input", "golden")
def read_cmath(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "cmath")
    golden = r.answer("golden")
    # No worked solution exists: the reply is the bare answer, flagged so that SFT can skip it.
    meta = _meta(options, task="math", has_solution=False, grade=record.get("grade"))
    return conversation([message("user", r.text("input")), message("assistant", golden)], golden, **meta)


@_register("arith", "question", "solution", "answer")
def read_arith(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "arith")
    meta = _meta(options, task="math", lang=record.get("lang"), id=record.get("id"))
    return conversation([message("user", r.text("question")), message("assistant", r.text("solution"))],
                        r.answer("answer"), **meta)


@_register("text", "text")
def read_text(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "text")
    out: dict[str, Any] = {"text": r.text("text")}
    if meta := _meta(options):
        out["meta"] = meta
    return out


def get_reader(name: str) -> Reader:
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown data format {name!r}; known formats: {', '.join(FORMATS)}") from None


def detect(record: Any) -> tuple[str, dict[str, str] | None]:
    """Guess (format, column mapping) from a record's keys; the mapping covers known renamed layouts."""
    if not isinstance(record, dict):
        raise DataError(f"cannot detect the format of a {type(record).__name__}; records must be JSON objects")
    keys = set(record)
    answer = record.get("answer")
    if "messages" in keys:
        return "openai", None
    if "conversations" in keys:
        return "sharegpt", None
    if {"problem", "solution"} <= keys:
        return "math", None
    if {"question", "solution", "answer"} <= keys:
        return "arith", None
    if {"question", "answer"} <= keys and isinstance(answer, str) and "####" in answer:
        return "gsm8k", None
    if {"input", "golden"} <= keys:
        return "cmath", None
    if {"instruction", "instances"} <= keys:
        return "belle_seed", None
    if {"instruction", "output"} <= keys:
        instruction = record["instruction"]
        if isinstance(instruction, str) and re.match(r"\s*Human\s*[:：]", instruction) \
                and re.search(r"Assistant\s*[:：]", instruction):
            return "belle_multiturn", None
        return "alpaca", None  # BELLE school_math looks the same: name belle_math explicitly
    if {"question", "std_answer"} <= keys:  # BELLE eval set
        return "alpaca", {"instruction": "question", "output": "std_answer"}
    if {"question", "answer"} <= keys:  # final answer only (Qwen2.5-Math eval sets): like CMATH
        return "cmath", {"input": "question", "golden": "answer"}
    if "text" in keys:
        return "text", None
    raise DataError(f"cannot detect the data format from keys {sorted(keys)}; known formats: "
                    f"{', '.join(FORMATS)} (pass format=... and, for other column names, columns=...)")
