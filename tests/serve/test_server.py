"""`tunelab serve` as a real process on loopback, driven by the official `openai` client: served ==
evaluated, streaming == non-streaming, concurrent requests, seeds, stop strings, usage, auth, errors
in OpenAI's shape, and the start-up errors (port in use, unknown model)."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.serve.conftest import Server, env, free_port
from tunelab.models.generate import GenerationSettings, Generator
from tunelab.models.generation import stop_token_ids
from tunelab.models.loaded import Loaded

KEY = "test-key"
MAX_INPUT, MAX_TOKENS = 200, 16


@pytest.fixture(scope="module")
def server(random_qwen, tmp_path_factory):
    s = Server(random_qwen, "--api-key", KEY, "--max-input-tokens", str(MAX_INPUT),
               "--max-tokens-limit", str(MAX_TOKENS), log=tmp_path_factory.mktemp("serve") / "server.log")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def evaluated(random_qwen):
    """What `tunelab eval` would answer: Loaded + Generator, in this process."""
    loaded = Loaded(random_qwen)
    gen = Generator(loaded.model, loaded.tokenizer, stop_token_ids(loaded.tokenizer, loaded.renderer.eot))

    def answer(messages, **settings):
        prompt = loaded.renderer.render_prompt(messages)
        text, n = gen.generate([prompt], GenerationSettings(batch_size=1, **settings), progress=False)[(0, 0)]
        return text, n, len(prompt)

    return answer


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+3?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": "你好"}],
]


def ask(client, model, messages, **kw):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, **kw)


def test_models_and_health(server, client, random_qwen):
    assert [m.id for m in client.models.list().data] == [random_qwen]
    health = httpx.get(f"{server.url}/health").json()  # no key needed
    assert (health["status"], health["model"]) == ("ok", random_qwen)
    assert set(health["generation"]) == {"queued", "running", "finished", "skipped", "generated_tokens"}


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
def test_served_equals_evaluated_with_usage(client, random_qwen, evaluated, k):
    msgs = CONVERSATIONS[k]
    r = ask(client, random_qwen, msgs)
    text, n_tokens, prompt_tokens = evaluated(msgs, max_new_tokens=8)
    assert r.choices[0].message.content == text and text  # same non-empty reply as eval
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, n_tokens)
    assert r.usage.total_tokens == prompt_tokens + n_tokens and r.object == "chat.completion"


def test_streaming_equals_non_streaming(client, random_qwen):
    for msgs in CONVERSATIONS:
        whole = ask(client, random_qwen, msgs)
        chunks = list(ask(client, random_qwen, msgs, stream=True, stream_options={"include_usage": True}))
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(deltas) == whole.choices[0].message.content and sum(bool(d) for d in deltas) > 1
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    with httpx.stream("POST", f"{client.base_url}chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": random_qwen, "messages": CONVERSATIONS[0], "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_concurrent_requests_each_get_their_own_answer(client, random_qwen):
    sequential = [ask(client, random_qwen, m).choices[0].message.content for m in CONVERSATIONS]

    def one(i):
        msgs = CONVERSATIONS[i % len(CONVERSATIONS)]
        if i % 2:  # streaming and non-streaming requests interleaved
            return "".join(c.choices[0].delta.content or "" for c in ask(client, random_qwen, msgs, stream=True)
                           if c.choices)
        return ask(client, random_qwen, msgs).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(12)))
    assert answers == [sequential[i % len(CONVERSATIONS)] for i in range(12)]


def test_seeded_sampling_is_reproducible(client, random_qwen, evaluated):
    msgs = CONVERSATIONS[1]

    def sample(seed):
        return client.chat.completions.create(model=random_qwen, messages=msgs, max_tokens=8, temperature=1.0,
                                              seed=seed).choices[0].message.content

    a, b, c = sample(42), sample(42), sample(43)
    assert a == b != c
    assert a == evaluated(msgs, max_new_tokens=8, temperature=1.0, seed=42)[0]  # as eval seeds a sample


def test_stop_strings(client, random_qwen):
    msgs = CONVERSATIONS[0]
    full = ask(client, random_qwen, msgs)
    text = full.choices[0].message.content
    words = text.split()
    r = ask(client, random_qwen, msgs, stop=words[2])
    assert r.choices[0].message.content == text[: text.index(words[2])].rstrip()
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < full.usage.completion_tokens
    r = ask(client, random_qwen, msgs, stop=["no such text", words[1]])  # a list; the earliest match cuts
    assert r.choices[0].message.content == text[: text.index(words[1])].rstrip()
    chunks = list(ask(client, random_qwen, msgs, stop=[words[2]], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.index(words[2])].rstrip()
    assert chunks[-1].choices[0].finish_reason == "stop"


def assert_error_shape(body: dict, status_param: str | None = None) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if status_param is not None:
        assert err["param"] == status_param
    return err


def test_auth(server, random_qwen):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):  # the last: no "Bearer"
        r = httpx.post(f"{server.url}/v1/chat/completions", headers=headers,
                       json={"model": random_qwen, "messages": CONVERSATIONS[0]})
        assert r.status_code == 401
        assert assert_error_shape(r.json())["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_errors_have_openai_shape(server, client, random_qwen):
    long = [{"role": "user", "content": "word " * MAX_INPUT}]
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, random_qwen, long)
    assert e.value.status_code == 400
    assert assert_error_shape(e.value.body if "error" in e.value.body else {"error": e.value.body},
                              "messages")["code"] == "context_length_exceeded"
    for kw in ({"max_tokens": MAX_TOKENS + 1}, {"max_completion_tokens": MAX_TOKENS + 1}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=random_qwen, messages=CONVERSATIONS[0], **kw)
        assert str(MAX_TOKENS) in e.value.message
    h = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    cases = [
        (b"{not json", 400, None),
        (b'{"model": "%s"}' % random_qwen.encode(), 400, "messages"),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}'
         % random_qwen.encode(), 400, "temperature"),
        (b'{"model": "%s", "messages": [{"role": "robot", "content": "hi"}]}' % random_qwen.encode(), 400,
         "messages[0].role"),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "n": 2}' % random_qwen.encode(), 400, "n"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    ]
    for body, status, param in cases:
        r = httpx.post(url, headers={**h, "Content-Type": "application/json"}, content=body)
        assert r.status_code == status, (body, r.text)
        assert_error_shape(r.json(), param)
    r = httpx.get(f"{server.url}/v1/nothing-here", headers=h)
    assert r.status_code == 404 and assert_error_shape(r.json())
    # the server is still healthy and answers after all that
    assert ask(client, random_qwen, CONVERSATIONS[0]).choices[0].message.content


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=timeout)


def test_port_in_use_and_unknown_model_exit_2(server, random_qwen):
    r = run_cli("serve", random_qwen, "--port", str(server.port))
    assert r.returncode == 2 and f"port {server.port} on 127.0.0.1 is already in use" in r.stderr
    r = run_cli("serve", "no-such-model", "--port", str(free_port()))
    assert r.returncode == 2 and "model 'no-such-model' not found" in r.stderr
    r = run_cli("serve", "tiny-qwen3", "--port", str(free_port()), "--max-input-tokens", "100000")
    assert r.returncode == 2 and "leaves no room for a reply" in r.stderr


class _Renderer:
    def render_prompt(self, messages):
        return [0] * sum(len(m["content"].split()) for m in messages)  # one token a word


@pytest.mark.parametrize("body, expected", [
    ({"max_tokens": None}, ("ok", 16)),  # default: the limit, when the context has room
    ({"max_tokens": None, "words": 500}, ("ok", 10)),  # default: what the 512-token context leaves
    ({"max_tokens": 13, "words": 500}, ("context_length_exceeded", "max_tokens")),
    ({"max_tokens": None, "words": 513}, ("context_length_exceeded", "messages")),
])
def test_prepare_limits(body, expected):
    from tunelab.serve.schema import ChatRequest
    from tunelab.serve.server import ApiError, Limits, prepare

    req = ChatRequest(model="m", messages=[{"role": "user", "content": "w " * body.get("words", 10)}],
                      max_tokens=body["max_tokens"], stop="END", temperature=0.5, seed=3)
    limits = Limits(max_input_tokens=None, max_tokens_limit=16, context=512)
    try:
        prompt, sampling, _ = prepare(req, _Renderer(), "sys prompt", limits)
    except ApiError as e:
        assert (e.status, e.code, e.param) == (400, *expected)
        return
    assert expected[0] == "ok" and sampling.max_new_tokens == expected[1]
    assert len(prompt) == body.get("words", 10) + 2  # the run's system prompt was added (2 words)
    assert (sampling.stop, sampling.temperature, sampling.seed, sampling.top_p) == (("END",), 0.5, 3, 1.0)
