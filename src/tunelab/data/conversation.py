"""The conversation: the one data type in the middle of tunelab.

Every reader in `formats.py` turns a raw record into a `Conversation`; everything after that point
(cleaning, rendering, evaluation prompts, chat, serve) sees only this type and never where the data
came from.

A conversation is a plain dict so that it round-trips through JSON and `datasets` unchanged:

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "answer": str | None,     # exact final answer when the source has one (math data), for grading
     "meta": {...}}            # free-form provenance (source, id, subject, level, ...), never rendered

Raw text for continued pretraining is the degenerate case `{"text": str}` (see `is_text`).
"""
from __future__ import annotations

from typing import Any

from ..errors import DataError

ROLES = ("system", "user", "assistant")


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conversation(messages: list[dict[str, str]], answer: str | None = None, **meta: Any) -> dict[str, Any]:
    return {"messages": messages, "answer": answer, "meta": meta}


def is_text(example: dict[str, Any]) -> bool:
    return "text" in example and "messages" not in example


def validate(conv: dict[str, Any], where: str = "") -> None:
    """Check the structure every later stage relies on; `where` names the file and line for errors."""
    msgs = conv.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: a conversation needs a non-empty 'messages' list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be {{role: one of {ROLES}, content: str}}, got {m!r}")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{where}: a system message may only come first (message {i})")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: a training conversation needs at least one assistant message")
