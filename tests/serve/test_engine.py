"""The shared generation engine: the reply text rules (held-back tails, stop strings, stripping), and
engine == `tunelab eval`'s Generator (greedy and seeded sampling), queued concurrent jobs, errors."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunelab.models.generate import GenerationSettings, Generator
from tunelab.models.generation import stop_token_ids
from tunelab.models.loaded import Loaded
from tunelab.serve.engine import Engine, ReplyText, Sampling


class ByteTok:
    """A tokenizer whose tokens are byte strings: decoding a prefix can end inside a UTF-8 character."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[list[str], ReplyText]:
    r = ReplyText(ByteTok(pieces), stop)
    deltas = []
    for i in range(len(pieces)):
        deltas.append(r.push(i))
        if r.stopped:
            break
    deltas.append(r.rest())
    return deltas, r


def test_reply_text_holds_back_whitespace_and_partial_characters():
    deltas, r = feed([b"\n\n", b" Hi", b" ", b"\xe4\xbd", b"\xa0", b"\xe5", b"\xa5\xbd", b"!\n"])
    assert deltas == ["", "Hi", "", "", " 你", "", "好", "!", ""]
    assert "".join(deltas) == r.final() == "Hi 你好!" and not r.stopped


def test_reply_text_cuts_at_the_first_stop_string_even_across_tokens():
    deltas, r = feed([b"The answer", b" is 4", b".\nUs", b"er: more"], stop=("User:", "zzz"))
    # "Us" could start "User:": held back until the next token shows it does
    assert deltas == ["The answer", " is 4", ".", "", ""]
    assert r.stopped and r.final() == "The answer is 4." == "".join(deltas)
    deltas, r = feed([b"a b", b"c d"], stop=("d", "b"))  # the earliest occurrence wins
    assert r.final() == "a" and "".join(deltas) == "a"
    deltas, r = feed([b"x a", b"b"], stop=("ab",))  # text before a stop string is stripped too
    assert r.final() == "x" == "".join(deltas)


def naive_safe_end(visible: str, stop: list[str]) -> int:
    """The definition _safe_end implements: hold back U+FFFD at the end, then the longest tail that is
    a proper prefix of a stop string."""
    cut = len(visible)
    while cut and visible[cut - 1] == "\ufffd":
        cut -= 1
    head = visible[:cut]
    for s in stop:
        for k in range(min(len(s) - 1, len(head)), 0, -1):
            if head.endswith(s[:k]):
                cut = min(cut, len(head) - k)
                break
    return cut


@given(st.text("ab\ufffd ", max_size=12), st.lists(st.text("ab ", min_size=1, max_size=6), max_size=4))
def test_safe_end_equals_its_definition(visible, stop):
    assert ReplyText(ByteTok([]), stop)._safe_end(visible) == naive_safe_end(visible, stop)


def test_long_stop_strings_cost_little_per_token():
    # 4 stop strings of 256 characters (the server's caps) against a long reply: the naive definition
    # slices every prefix of every stop string at every token; this looks at a few positions
    import time

    stop = ["a" * 255 + "b", "x" * 256, "ab" * 128, "a" * 256]
    r = ReplyText(ByteTok([]), stop)
    t = time.perf_counter()
    for n in range(1, 400):
        assert r._safe_end("a" * n + "c") == n + 1
    assert time.perf_counter() - t < 5  # generous: milliseconds in fact


def test_seed_problem():
    from tunelab.serve.engine import seed_problem

    assert seed_problem(None) is None and seed_problem(-(2**63)) is None and seed_problem(2**63 - 1) is None
    assert "signed 64-bit" in seed_problem(2**63) and seed_problem(-(2**63) - 1)


@pytest.fixture(scope="module")
def rq(random_qwen):
    loaded = Loaded(random_qwen)
    engine = Engine.for_loaded(loaded)
    gen = Generator(loaded.model, loaded.tokenizer, stop_token_ids(loaded.tokenizer, loaded.renderer.eot))
    yield loaded, engine, gen
    engine.close()


QUESTIONS = ["hi", "What is 2+3?", "Tell me a story about a cat.", "你好"]


def test_engine_equals_eval_generator_greedy_and_sampled(rq):
    loaded, engine, gen = rq
    prompts = [loaded.renderer.render_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    greedy = gen.generate(prompts, GenerationSettings(max_new_tokens=8, batch_size=1), progress=False)
    sampled = gen.generate(prompts, GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=11,
                                                       batch_size=1), progress=False)
    for i, p in enumerate(prompts):
        ev = engine.complete(p, Sampling(max_new_tokens=8))
        assert (ev.text, ev.completion_tokens) == greedy[(i, 0)] and ev.text  # non-empty, same tokens
        assert ev.prompt_tokens == len(p) and ev.finish_reason == "length"
        deltas = [e.delta for e in engine.stream(p, Sampling(max_new_tokens=8))]
        assert "".join(deltas) == ev.text and len([d for d in deltas if d]) > 1  # really streamed
        s = engine.complete(p, Sampling(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=11))
        assert (s.text, s.completion_tokens) == sampled[(i, 0)]
    assert len({greedy[(i, 0)][0] for i in range(len(prompts))}) == len(prompts)


def test_stop_string_ends_generation_early(rq):
    loaded, engine, _ = rq
    p = loaded.renderer.render_prompt([{"role": "user", "content": "hi"}])
    full = engine.complete(p, Sampling(max_new_tokens=8))
    word = full.text.split()[2]  # a word in the middle of the reply
    ev = engine.complete(p, Sampling(max_new_tokens=8, stop=(word,)))
    assert ev.finish_reason == "stop" and ev.text == full.text[: full.text.index(word)].rstrip()
    assert ev.completion_tokens < full.completion_tokens


def test_concurrent_jobs_are_queued_and_never_mix(rq):
    loaded, engine, _ = rq
    prompts = [loaded.renderer.render_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    alone = [engine.complete(p, Sampling(max_new_tokens=8)).text for p in prompts]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = "".join(e.delta for e in engine.stream(prompts[i % 4], Sampling(max_new_tokens=8)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(8)] == alone + alone


def test_a_failed_job_raises_for_its_caller_and_the_worker_lives_on(rq):
    loaded, engine, _ = rq
    with pytest.raises(IndexError):
        engine.complete([10**7], Sampling(max_new_tokens=2))  # a token id beyond the embedding
    p = loaded.renderer.render_prompt([{"role": "user", "content": "hi"}])
    assert engine.complete(p, Sampling(max_new_tokens=2)).completion_tokens == 2


def test_cancel_from_another_thread_stops_the_generation(rq):
    loaded, engine, _ = rq
    p = loaded.renderer.render_prompt([{"role": "user", "content": "hi"}])
    cancel = threading.Event()
    events = engine.stream(p, Sampling(max_new_tokens=400), cancel)
    assert next(events).delta  # generating
    cancel.set()  # what the server does when a client disconnects
    last = list(events)[-1]
    assert last.done and last.completion_tokens < 40  # stopped within a few steps, not after 400


def test_stats_count_tokens_and_skip_jobs_whose_caller_left(rq):
    loaded, engine, _ = rq
    p = loaded.renderer.render_prompt([{"role": "user", "content": "hi"}])
    before = engine.stats()
    assert engine.complete(p, Sampling(max_new_tokens=3)).completion_tokens == 3
    gone = threading.Event()
    gone.set()  # a caller that left before its job started
    assert engine.complete(p, Sampling(max_new_tokens=3), gone).completion_tokens == 0
    now = engine.stats()
    assert now["finished"] - before["finished"] == 1 and now["skipped"] - before["skipped"] == 1
    assert now["generated_tokens"] - before["generated_tokens"] == 3
    assert (now["running"], now["queued"]) == (0, 0)


def test_a_stream_never_read_is_queued_and_skipped_once_its_caller_leaves(rq):
    """The CI failure: a streaming client left after its first chunk, before the server's thread asked
    the stream for a token; the job was queued only at the first `next`, so it was never queued and the
    worker's counts depended on that race. Now `stream()` queues at once and a job whose caller left is
    skipped, counted."""
    loaded, engine, _ = rq
    p = loaded.renderer.render_prompt([{"role": "user", "content": "hi"}])
    before = engine.stats()
    gone = threading.Event()
    events = engine.stream(p, Sampling(max_new_tokens=3), gone)  # queued here, never read
    gone.set()
    del events
    assert engine.complete(p, Sampling(max_new_tokens=3)).completion_tokens == 3  # runs after the skipped one
    now = engine.stats()
    assert now["skipped"] - before["skipped"] == 1 and now["finished"] - before["finished"] == 1
