"""Chat in the browser through the code of `tunelab chat`: the same reply for the same conversation.

Each turn builds a `serve.chat.ChatSession` over the conversation the browser holds and calls its
`reply`: the prompt is `Loaded.renderer.render_prompt` of the whole conversation (the template saved
with the model), generation runs on the model's one `serve.engine.Engine` worker and stops at the
template's end-of-turn token, and a run trained with a system prompt gets it unless the page sets
another. Greedy decoding (temperature 0) therefore gives `tunelab chat`'s reply, token for token.
The deltas stream to the page as server-sent events; a page that goes away stops the generation at
the next token.

Loaded models are kept (at most `max_models`, least recently used dropped) so a conversation does not
reload its model at every turn; two models side by side each have their own worker.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from typing import Any, AsyncIterator

from ..errors import ServeError


class ModelPool:
    def __init__(self, max_models: int = 3):
        self.max_models = max_models
        self._models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        # one load at a time: two threads importing transformers' lazy modules at once can fail
        # ("cannot import name 'AutoTokenizer'"), and loading is bound by the CPU and the disk anyway
        self._loading = threading.Lock()

    def get(self, ref: str) -> tuple[Any, Any]:
        """(Loaded, Engine) for a model reference, loaded once."""
        with self._lock:
            if ref in self._models:
                self._models.move_to_end(ref)
                return self._models[ref]
        with self._loading:  # one load per model, even when two pages ask at once
            with self._lock:
                if ref in self._models:
                    return self._models[ref]
            from ..models.loaded import Loaded
            from ..models.loaded import pick_device
            from ..serve.engine import Engine

            loaded = Loaded(ref, device=pick_device(None))
            engine = Engine.for_loaded(loaded)
            with self._lock:
                self._models[ref] = (loaded, engine)
                while len(self._models) > self.max_models:
                    _, (_, old) = self._models.popitem(last=False)
                    old.close()
            return loaded, engine

    def close(self) -> None:
        with self._lock:
            for _, engine in self._models.values():
                engine.close()
            self._models.clear()


class _PageGone(Exception):
    pass


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The conversation from the page: user/assistant turns alternating, ending with the user's."""
    if not isinstance(messages, list) or not messages:
        raise ServeError("messages: a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ServeError(f"messages[{i}]: expected {{role, content}} with text content")
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            raise ServeError(f"messages[{i}]: expected a {want} turn (turns alternate, starting with the user)")
        out.append({"role": want, "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ServeError("the last message must be the user's")
    return out


async def stream_reply(pool: ModelPool, ref: str, messages: list[dict[str, str]], *, system: str | None,
                       temperature: float, top_p: float, max_tokens: int, seed: int | None) -> AsyncIterator[str]:
    """Server-sent events: {"model": ...} first, then {"delta": text} as the reply grows, then
    {"done": true, "text": reply} (or {"error": message})."""
    from starlette.concurrency import run_in_threadpool

    from ..serve.chat import ChatSession
    from ..serve.engine import Sampling, seed_problem

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or seed_problem(seed):
        yield event({"error": "max tokens must be at least 1, temperature 0 or more, top_p in (0, 1], and a seed "
                              "a signed 64-bit integer"})
        return
    try:
        loaded, engine = await run_in_threadpool(pool.get, ref)
    except Exception as e:  # a model that does not load: the page shows why
        yield event({"error": f"{type(e).__name__}: {e}"})
        return
    sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    system = loaded.system_prompt if system is None else system
    session = ChatSession(loaded, engine, sampling, system=system or None)
    session.turns = messages[:-1]
    yield event({"model": ref, "template": loaded.renderer.template, "end_of_turn": loaded.renderer.eot,
                 "system": system or None})
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    gone = threading.Event()

    def on_delta(delta: str) -> None:
        if gone.is_set():
            raise _PageGone  # leaves the engine's stream: the worker stops at its next step
        loop.call_soon_threadsafe(out.put_nowait, {"delta": delta})

    def work() -> None:
        try:
            text = session.reply(messages[-1]["content"], on_delta)
            loop.call_soon_threadsafe(out.put_nowait, {"done": True, "text": text})
        except _PageGone:
            pass
        except Exception as e:  # the context is full, ...: the page shows it
            loop.call_soon_threadsafe(out.put_nowait, {"error": str(e)})

    threading.Thread(target=work, name="tunelab-ui-chat", daemon=True).start()
    try:
        while True:
            item = await out.get()
            yield event(item)
            if "done" in item or "error" in item:
                return
    finally:
        gone.set()
