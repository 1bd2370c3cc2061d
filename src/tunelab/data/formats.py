"""Readers that turn one raw data record into a tunelab conversation.

Each supported on-disk format (alpaca, sharegpt, openai, MATH, GSM8K, CMATH, BELLE, raw text, the
built-in arithmetic generator, and the preference-pair layouts `pairs`, `pairs_sharegpt`,
`pairs_alpaca`) has one reader with the same signature:

    read_X(record, *, columns=None, where="", **options) -> conversation | pair | {"text": str}

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
from tunelab.data.conversation import DataError, conversation, message, pair

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


def _alpaca_prompt(r: _Rec, where: str) -> list[dict[str, str]]:
    """system?, the history's turns, then instruction (+ input) as the last user turn."""
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
    return msgs


@_register("alpaca", "instruction", "input", "output", "system", "history")
def read_alpaca(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    r = _Rec(record, columns, where, "alpaca")
    msgs = _alpaca_prompt(r, where) + [message("assistant", r.text("output"))]
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


# -- preference pairs (stage: dpo) ------------------------------------------------------------
# A pair is the prompt as messages plus the two replies' texts (conversation.pair); every layout below
# is converted to that, and `conversation.validate_pair` checks it after conversion.

def _reply(value: Any, where: str, col: str) -> str:
    """One reply's text, given as text, as one assistant message ({role, content} or {from, value}),
    or as a list holding exactly that message (TRL's conversational layout)."""
    if isinstance(value, str):
        return value
    msgs = _chat([value] if isinstance(value, dict) else value, where, col, "role", "content")
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DataError(f"{_at(where)}column {col!r} must be one assistant reply (text, a message, or a list of "
                        f"one assistant message), got roles {[m['role'] for m in msgs]}")
    return msgs[0]["content"]


def _shared_prompt(chosen: list[dict[str, str]], rejected: list[dict[str, str]], where: str) -> tuple[list, str, str]:
    """TRL's implicit prompt (and UltraFeedback's lists): two whole conversations that agree up to the
    last reply. Returns (the shared messages, chosen reply, rejected reply)."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) == len(rejected) and k:  # identical: validate_pair says so, naming the record
        k -= 1
    tails = chosen[k:], rejected[k:]
    if any(len(t) != 1 or t[0]["role"] != "assistant" for t in tails):
        raise DataError(f"{_at(where)}'chosen' and 'rejected' must be the same conversation up to their last "
                        f"assistant reply, but they first differ at message {k} (chosen has {len(chosen)} "
                        f"messages, rejected {len(rejected)})")
    return chosen[:k], tails[0][0]["content"], tails[1][0]["content"]


@_register("pairs", "prompt", "chosen", "rejected", "system", "answer", "meta")
def read_pairs(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    """TRL's preference layouts and UltraFeedback-binarized:
    - explicit prompt: `prompt` text or messages, `chosen`/`rejected` texts or one-assistant-message lists;
    - implicit prompt: `chosen`/`rejected` whole conversations (user ... assistant) sharing everything
      but the last reply; the shared part is the prompt (a `prompt` text beside them, as UltraFeedback
      has, repeats their first user turn and is not read)."""
    r = _Rec(record, columns, where, "pairs")
    cols = r.column("chosen"), r.column("rejected")
    sides = [r.get("chosen"), r.get("rejected")]
    lists = [_chat(v, where, col, "role", "content") if isinstance(v, list) else None for v, col in zip(sides, cols)]
    if any(ms and any(m["role"] != "assistant" for m in ms) for ms in lists):  # whole conversations
        if any(ms is None for ms in lists):
            raise DataError(f"{_at(where)}one of 'chosen'/'rejected' is a whole conversation, the other is not; "
                            "give both as conversations (implicit prompt) or both as replies")
        prompt, c, j = _shared_prompt(lists[0], lists[1], where)
    else:
        given = r.get("prompt", required=False)
        if given is None:
            raise DataError(f"{_at(where)}no prompt: give column {r.column('prompt')!r}, or 'chosen' and "
                            "'rejected' as whole conversations (TRL's implicit prompt); texts alone cannot be "
                            "split into prompt and reply")
        prompt = [message("user", given)] if isinstance(given, str) else \
            _chat(given, where, r.column("prompt"), "role", "content")
        c, j = (_reply(v, where, col) for v, col in zip(sides, cols))
    meta = r.get("meta", required=False)
    meta = dict(meta) if isinstance(meta, dict) else {}
    return pair(_with_system(prompt, r.text("system", required=False), where), c, j,
                r.answer("answer", required=False), **{**meta, **_meta(options)})


@_register("pairs_sharegpt", "conversations", "chosen", "rejected", "system")
def read_pairs_sharegpt(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    """LLaMA-Factory's sharegpt ranking layout: `conversations` (the prompt, ending with a human turn)
    and `chosen`/`rejected`, each one {from: gpt, value} (or {role, content}) message."""
    r = _Rec(record, columns, where, "pairs_sharegpt")
    prompt = _chat(r.get("conversations"), where, r.column("conversations"), "from", "value")
    return pair(_with_system(prompt, r.text("system", required=False), where),
                _reply(r.get("chosen"), where, r.column("chosen")),
                _reply(r.get("rejected"), where, r.column("rejected")), None, **_meta(options))


@_register("pairs_alpaca", "instruction", "input", "chosen", "rejected", "output", "system", "history")
def read_pairs_alpaca(record: dict, *, columns: dict[str, str] | None = None, where: str = "", **options) -> dict:
    """LLaMA-Factory's alpaca ranking layout: instruction (+ input, system, history) and `chosen`/`rejected`
    texts; or, as its older files have, `output: [chosen, rejected]`."""
    r = _Rec(record, columns, where, "pairs_alpaca")
    if r.get("chosen", required=False) is None and r.get("rejected", required=False) is None \
            and r.get("output", required=False) is not None:
        output = r.get("output")
        if not (isinstance(output, list) and len(output) == 2):
            raise DataError(f"{_at(where)}column {r.column('output')!r} of a pairs_alpaca record must be "
                            f"[chosen, rejected], got {output!r:.80}")
        chosen, rejected = (_reply(v, where, r.column("output")) for v in output)
    else:
        chosen = _reply(r.get("chosen"), where, r.column("chosen"))
        rejected = _reply(r.get("rejected"), where, r.column("rejected"))
    return pair(_alpaca_prompt(r, where), chosen, rejected, None, **_meta(options))


def get_reader(name: str) -> Reader:
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown data format {name!r}; known formats: {', '.join(FORMATS)}") from None


def detect(record: Any) -> tuple[str, dict[str, str] | None]:
    """Guess (format, column mapping) from a record's keys; the mapping covers known renamed layouts.
    A record with `chosen` or `rejected` is a preference pair, whatever else it holds."""
    if not isinstance(record, dict):
        raise DataError(f"cannot detect the format of a {type(record).__name__}; records must be JSON objects")
    keys = set(record)
    answer = record.get("answer")
    if keys & {"chosen", "rejected"}:  # a preference pair (a missing side is the reader's error to name)
        if "conversations" in keys:
            return "pairs_sharegpt", None
        if "messages" in keys and isinstance(record.get("chosen"), dict):  # LLaMA-Factory, openai-style tags
            return "pairs_sharegpt", {"conversations": "messages"}
        if "instruction" in keys:
            return "pairs_alpaca", None
        return "pairs", None  # TRL prompt/chosen/rejected, implicit prompt, UltraFeedback (its `messages` unread)
    if "instruction" in keys and isinstance(record.get("output"), list):  # LLaMA-Factory's [chosen, rejected]
        return "pairs_alpaca", None
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
