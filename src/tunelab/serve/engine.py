"""One model, one generation worker: the core shared by `tunelab chat` and `tunelab serve`.

    engine = Engine.for_loaded(Loaded("runs/quickstart"))
    ids = loaded.renderer.render_prompt(messages)          # the training renderer, always
    for ev in engine.stream(ids, Sampling(max_new_tokens=64, stop=("\\n\\n",))):
        print(ev.delta, end="")                              # the last event has ev.done, ev.text,
                                                             # ev.finish_reason, ev.completion_tokens

Why one worker thread: a model must not run two generations at once from several threads, and one
request's KV cache must never see another's tokens. Jobs queue up and run one at a time in arrival
order; each caller reads the tokens of its own job from its own queue, so outputs cannot mix. The
worker also lets a caller stop a generation between two decoding steps (a stop string seen, an HTTP
client gone, Ctrl-C in chat) without killing anything.

Why the reply equals `tunelab eval`'s: the tokens come from eval's decoding loop (`models.generate.decode`,
each token handed over as it is drawn; `model.generate` with `models.generation.generate_kwargs` for a
model the loop cannot run, as eval does then): greedy at temperature 0, the same seeded draws otherwise,
stop at the template's end-of-turn token and eos; and the reply is the decoded tokens without special tokens,
stripped (`models.generation.decode_reply`'s definition, built up token by token here); sampling is seeded with `torch.manual_seed(seed)` as Generator seeds sample 0. Tests
check served == evaluated for greedy and for seeded sampling.

Run its tests: `.venv/bin/python -m pytest tests/serve/test_engine.py -q`.
"""
from __future__ import annotations

import queue
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..models.generate import can_decode, decode
from ..models.generation import generate_kwargs, pad_token_id


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # cut the reply before the first of these, finish_reason "stop"


@dataclass
class Event:
    delta: str = ""
    done: bool = False
    text: str = ""  # the whole reply (only on the last event)
    finish_reason: str | None = None  # "stop" (end-of-turn token or stop string) | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated tokens, the end-of-turn token included (as Generator counts)


class ReplyText:
    """The reply as the user sees it, one token at a time: what may be shown now, and the final text.

    The final text is `decode(ids, skip_special_tokens=True).strip()`, cut before the first stop
    string. A delta is only released when no later token can change it: trailing whitespace (the
    final text is stripped), an unfinished UTF-8 character (decoded as U+FFFD) and a tail that could
    be the start of a stop string are held back. So the deltas always add up to the final text.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False
        self._visible = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        # decoding the whole reply each time (not token by token) keeps multi-byte characters and
        # tokenizers that merge spaces right; replies are short enough for this to cost nothing
        visible = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        hits = [i for i in (visible.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self._visible = visible[: min(hits)]
            return ""  # the rest, if any, comes with final()
        self._visible = visible
        safe = visible[: self._safe_end(visible)].rstrip()
        if not safe.startswith(self.emitted):  # a tokenizer that rewrote earlier text: wait for the end
            return ""
        delta, self.emitted = safe[len(self.emitted):], safe
        return delta

    def _safe_end(self, visible: str) -> int:
        cut = len(visible)
        while cut and visible[cut - 1] == "\ufffd":
            cut -= 1
        head = visible[:cut]
        for s in self.stop:
            # the longest tail of `head` that is a proper prefix of `s` starts at the leftmost j (within
            # len(s) - 1 of the end) where head[j:] starts s; only positions holding s[0] can, so this
            # looks at a few positions per token instead of slicing every prefix of s
            j = head.find(s[0], max(0, len(head) - len(s) + 1))
            while j != -1:
                if s.startswith(head[j:]):
                    cut = min(cut, j)
                    break
                j = head.find(s[0], j + 1)
        return cut

    def final(self) -> str:
        return self._visible.rstrip()

    def rest(self) -> str:
        """What was not shown yet, for the last event."""
        text = self.final()
        return text[len(self.emitted):] if text.startswith(self.emitted) else ""


# A seed is a signed 64-bit integer, the range OpenAI's API documents. torch.manual_seed takes
# -2**63 .. 2**64 - 1 and maps a negative seed s to 2**64 + s, so the signed range is exactly the one
# in which two different seeds never sample alike; anything outside it makes torch raise.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def seed_problem(seed: int | None) -> str | None:
    """Why `seed` cannot be used (None when it can): shared by `chat --seed` and the server's `seed`."""
    if seed is None or SEED_MIN <= seed <= SEED_MAX:
        return None
    return f"must be an integer from {SEED_MIN} to {SEED_MAX} (a signed 64-bit integer), got {seed}"


_END = object()


@dataclass
class _Job:
    prompt: list[int]
    sampling: Sampling
    out: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


class Engine:
    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int]):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, list(stop_ids)
        self.pad_id = pad_token_id(tokenizer, stop_ids)
        self._jobs: "queue.Queue[_Job | None]" = queue.Queue()
        # written by the worker only, read by anyone (`stats`): how busy it is and what it did
        self._running = False
        self._finished = self._skipped = self._tokens = 0
        self._worker = threading.Thread(target=self._work, name="tunelab-generate", daemon=True)
        self._worker.start()

    @classmethod
    def for_loaded(cls, loaded: Any) -> "Engine":
        return cls(loaded.model, loaded.tokenizer, loaded.stop_ids)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the jobs already queued, and wait for it: a thread still inside torch
        while the interpreter shuts down can abort the process."""
        self._jobs.put(None)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def stats(self) -> dict[str, int]:
        """Jobs waiting and running, jobs finished (stopped early ones included), jobs skipped because
        their caller left while they waited, and tokens generated so far (`GET /health` shows these)."""
        return {"queued": self._jobs.qsize(), "running": int(self._running), "finished": self._finished,
                "skipped": self._skipped, "generated_tokens": self._tokens}

    # -- the worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.cancel.is_set():  # its caller left while it waited in the queue
                    self._skipped += 1
                else:
                    self._running = True
                    self._generate(job)
            except BaseException as e:  # handed to the caller, who raises it; the worker lives on
                job.out.put(e)
            finally:
                if self._running:
                    self._running = False
                    self._finished += 1
                job.out.put(_END)

    def _generate(self, job: _Job) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        engine = self

        class Tokens(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first hands over the prompt itself
                    self.prompt_seen = True
                    return
                for t in value.reshape(-1).tolist():
                    engine._tokens += 1
                    job.out.put(t)

            def end(self) -> None:
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), job.cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        s = job.sampling
        device = next(self.model.parameters()).device
        ids = torch.tensor([job.prompt], device=device)
        # the worker is the only thread that samples, so seeding the global generator is safe
        torch.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        if can_decode(self.model):  # eval's decoding loop (models/generate.py), as eval runs it: served == evaluated
            def on_token(token: Any) -> bool:
                engine._tokens += 1
                job.out.put(int(token[0]))
                return job.cancel.is_set()

            decode(self.model, ids, torch.ones_like(ids), max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                   top_p=s.top_p, stop_ids=self.stop_ids, pad_id=self.pad_id, on_token=on_token)
            return
        # the same keyword arguments as eval's rollouts (models/generation.py): served == evaluated
        kwargs = generate_kwargs(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 stop_ids=self.stop_ids, pad_id=self.pad_id)
        with torch.no_grad():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=Tokens(),
                                stopping_criteria=StoppingCriteriaList([Cancelled()]), **kwargs)

    # -- the caller's side ------------------------------------------------------------------
    def stream(self, prompt: list[int], sampling: Sampling, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Queue one generation and yield its text deltas; the last event carries the totals.

        Leaving the loop early, closing the iterator or setting `cancel` (from another thread, e.g. when
        an HTTP client disconnects) stops the generation at its next decoding step.

        The job is queued by this call, not at the first `next`: its place in the queue is the caller's
        arrival, and a caller that leaves before reading anything (a server whose client disconnected
        before the first token was asked for) still has its job skipped by the worker, counted."""
        job = _Job(list(prompt), sampling, cancel=cancel or threading.Event())
        self._jobs.put(job)
        return self._replies(job, prompt, sampling)

    def _replies(self, job: _Job, prompt: list[int], sampling: Sampling) -> Iterator[Event]:
        reply = ReplyText(self.tokenizer, sampling.stop)
        tokens, finish = 0, "length"
        try:
            while True:
                item = job.out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                tokens += 1
                if item in self.stop_ids:
                    finish = "stop"
                    break
                delta = reply.push(item)
                if reply.stopped:
                    finish = "stop"
                    break
                if delta:
                    yield Event(delta=delta)
        finally:
            job.cancel.set()  # a stop string, a consumer gone: the worker stops at its next step
        yield Event(delta=reply.rest(), done=True, text=reply.final(), finish_reason=finish,
                    prompt_tokens=len(prompt), completion_tokens=tokens)

    def complete(self, prompt: list[int], sampling: Sampling, cancel: threading.Event | None = None) -> Event:
        """The whole reply at once (the last event of `stream`); `cancel` as for `stream` (the reply is
        then what was generated so far)."""
        for ev in self.stream(prompt, sampling, cancel):
            if ev.done:
                return ev
        raise AssertionError("stream ended without a final event")
