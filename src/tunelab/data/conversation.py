"""The conversation: the one data type in the middle of tunelab.

Every reader in `formats.py` turns a raw record into a `Conversation`; everything after that point
(cleaning, rendering, evaluation prompts, chat, serve) sees only this type and never where the data
came from.

A conversation is a plain dict so that it round-trips through JSON and `datasets` unchanged:

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "answer": str | None,     # exact final answer when the source has one (math data), for grading
     "meta": {...}}            # free-form provenance (source, id, subject, level, ...), never rendered

Raw text for continued pretraining is the degenerate case `{"text": str}` (see `is_text`).

A preference pair (`stage: dpo`) is a conversation whose `messages` are the PROMPT (ending with a user
turn) plus the two candidate replies' contents (see `is_pair`, `validate_pair`):

    {"messages": [system?, user, (assistant, user)*], "chosen": str, "rejected": str, "answer": ..., "meta": ...}
"""
from __future__ import annotations

from typing import Any

from ..errors import DataError

ROLES = ("system", "user", "assistant")


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conversation(messages: list[dict[str, str]], answer: str | None = None, **meta: Any) -> dict[str, Any]:
    return {"messages": messages, "answer": answer, "meta": meta}


def pair(messages: list[dict[str, str]], chosen: str, rejected: str, answer: str | None = None,
         **meta: Any) -> dict[str, Any]:
    return {"messages": messages, "chosen": chosen, "rejected": rejected, "answer": answer, "meta": meta}


def is_text(example: dict[str, Any]) -> bool:
    return "text" in example and "messages" not in example


def is_pair(example: dict[str, Any]) -> bool:
    return "chosen" in example or "rejected" in example


def drop_leading_replies(conv: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Remove assistant turns that come before the first user turn (after the optional system message).

    Such a turn answers nothing (ShareGPT dumps where the human's first message was lost, chats that
    open with a bot greeting); supervised, it would teach the model to talk unprompted. It is removed
    and counted, the rest of the conversation kept (FastChat's preprocessing does the same), because
    the turns after it are ordinary question/reply pairs. Returns (conversation, turns removed).
    """
    msgs = conv.get("messages")
    if not isinstance(msgs, list):
        return conv, 0
    start = 1 if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system" else 0
    end = start
    while end < len(msgs) and isinstance(msgs[end], dict) and msgs[end].get("role") == "assistant":
        end += 1
    if end == start:
        return conv, 0
    return {**conv, "messages": msgs[:start] + msgs[end:]}, end - start


def _check_roles(msgs: Any, where: str) -> None:
    """The rules every message list follows: known roles, text contents, system only first, then user
    and assistant alternating from a user turn."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: a conversation needs a non-empty 'messages' list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be {{role: one of {ROLES}, content: str}}, got {m!r:.200}")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{where}: a system message may only come first (message {i})")
    turns = [(i, m["role"]) for i, m in enumerate(msgs) if m["role"] != "system"]
    if turns and turns[0][1] != "user":
        raise DataError(f"{where}: message {turns[0][0]} is an assistant turn before any user turn; "
                        "the conversation must start with a user turn (after an optional system message)")
    for (_, a), (i, b) in zip(turns, turns[1:]):
        if a == b:
            raise DataError(f"{where}: roles out of order: message {i} is a second {b} turn in a row "
                            f"(messages {i - 1} and {i}); user and assistant turns must alternate")


def validate(conv: dict[str, Any], where: str = "") -> None:
    """Check the structure every later stage relies on; `where` names the file and line for errors.

    Roles must alternate user/assistant after the optional system message, starting with user: two
    turns of one role in a row have no safe repair (merge them? which reply answers which question?),
    so they are an error naming the record. (Leading assistant turns are removed before this check
    by `drop_leading_replies`.)"""
    msgs = conv.get("messages")
    _check_roles(msgs, where)
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: a training conversation needs at least one assistant message")


def validate_pair(example: dict[str, Any], where: str = "") -> None:
    """Check a preference pair: the prompt follows `validate`'s role rules and ends with a user turn
    (the turn both replies answer); `chosen` and `rejected` are non-empty texts that differ (a pair of
    equal replies carries no preference, and DPO's loss on it is a constant)."""
    for key in ("chosen", "rejected"):
        if key not in example or example[key] is None:
            raise DataError(f"{where}: a preference pair needs a '{key}' reply; keys present: {sorted(example)}")
        if not isinstance(example[key], str):
            raise DataError(f"{where}: '{key}' must be the reply's text, got {type(example[key]).__name__}")
        if not example[key].strip():
            raise DataError(f"{where}: the '{key}' reply is empty")
    if example["chosen"] == example["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same reply ({example['chosen'][:60]!r}); "
                        "a pair must prefer one reply over a different one")
    msgs = example.get("messages")
    _check_roles(msgs, f"{where}: prompt" if where else "prompt")
    if msgs[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user turn (the one both replies answer), "
                        f"but its last message is a {msgs[-1]['role']} turn")
