"""The request body of `POST /v1/chat/completions`, as OpenAI documents it (the parts tunelab reads).

Unknown fields (`user`, `metadata`, `store`, ...) are accepted and ignored, as OpenAI-compatible
servers do, so existing clients work unchanged; fields tunelab cannot honour (`n` > 1, `logprobs`,
tools, penalties) are rejected with 400 in `server.prepare` rather than silently ignored. Ranges
follow OpenAI's: temperature 0-2, top_p in (0, 1], at least one token.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Optional[Union[str, list[Any]]] = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    n: Optional[int] = Field(default=None, ge=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    logprobs: Optional[bool] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
