"""`tunelab serve` limits, against a real server process: body size (413, never read whole), stop
strings, seed range, messages without content, no external assets, a client that gives up frees the
worker, and a load test (20 streaming clients while the limits still answer fast; marked slow).

Timings appear only as generous bounds; what is asserted is behaviour: status codes, the server's peak
memory, the worker's own counts of tokens and skipped jobs (`GET /health`), and ordering (an error
answered while 20 streams are still queued)."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Server
from tests.serve.test_server import assert_error_shape

MiB = 1 << 20
STORY = [{"role": "user", "content": "Tell me a story"}]  # random_qwen never ends this one early


@pytest.fixture(scope="module")
def server(random_qwen_long, tmp_path_factory):
    s = Server(random_qwen_long, "--max-tokens-limit", "3500", log=tmp_path_factory.mktemp("limits") / "server.log")
    try:
        yield s
    finally:
        s.stop()


def post(server, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) or not isinstance(body, dict) else json.dumps(body)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json"}, timeout=kw.pop("timeout", 120), **kw)


def request(server, **kw) -> dict:
    return {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "temperature": 0, **kw}


def generation(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=30).json()["generation"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the process's peak resident memory so far
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module", autouse=True)
def _name(server, random_qwen_long):
    server.model = random_qwen_long


def test_oversized_bodies_get_413_without_being_read(server):
    # Content-Length over the limit: answered before a byte of the body is sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert assert_error_shape(json.loads(body))["code"] == "request_too_large"

    before = peak_rss_mb(server.proc.pid)
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (10 * MiB) + b'"}]}'
    r = post(server, big)  # 10 MB sent whole: the server drops it and answers 413
    assert r.status_code == 413 and "1048576 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(64):
            yield b" " * (64 * 1024)

    r = post(server, chunks())
    assert r.status_code == 413 and assert_error_shape(r.json())["code"] == "request_too_large"
    # the old server parsed and tokenized a 10 MB body: +1 GB; now at most the limit is ever held
    assert peak_rss_mb(server.proc.pid) - before < 150
    # just under the limit is read and judged on its content (a prompt far over the context)
    fits = request(server, messages=[{"role": "user", "content": "a " * (MiB // 2 - 200)}])
    r = post(server, fits)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert post(server, request(server)).status_code == 200


def test_body_limit_is_a_parameter_and_counts_chunked_bodies():
    """The same middleware in process (build_app's max_body_bytes, i.e. --max-body-bytes): bytes, not
    characters, counted over every chunk."""
    from starlette.testclient import TestClient

    from tunelab.serve.server import Limits, build_app

    class Engine:
        def stats(self):
            return {}

    app = build_app(engine=Engine(), renderer=None, model_name="m", limits=Limits(None, 16, 512), max_body_bytes=100)
    with TestClient(app) as c:
        assert c.post("/v1/chat/completions", content=b"x" * 101).status_code == 413
        assert c.post("/v1/chat/completions", content=b"x" * 100).status_code == 400  # read, then not JSON
        r = c.post("/v1/chat/completions", content=iter([b"x" * 60, b"x" * 60]))
        assert r.status_code == 413 and r.json()["error"]["param"] is None
        assert c.post("/health", content="é" * 51).status_code == 413  # 102 bytes; any route


def test_serve_refuses_a_limit_below_one():
    from argparse import Namespace

    from tunelab.errors import ServeError
    from tunelab.serve.server import serve_command

    with pytest.raises(ServeError, match="--max-body-bytes must be at least 1"):
        serve_command(Namespace(max_input_tokens=None, max_tokens_limit=16, max_body_bytes=0))


def test_stop_strings_are_capped(server):
    t = time.monotonic()
    r = post(server, json.dumps(request(server, stop=["a"] * 200_000), separators=(",", ":")))
    assert r.status_code == 400 and assert_error_shape(r.json(), "stop")
    assert "at most 4 stop strings" in r.json()["error"]["message"] and "200000" in r.json()["error"]["message"]
    assert time.monotonic() - t < 30  # was 40 s of CPU
    r = post(server, request(server, stop=["a", "b", "c", "d", "e"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = post(server, request(server, stop="x" * 257))
    assert r.status_code == 400 and "at most 256 characters" in r.json()["error"]["message"]
    assert post(server, request(server, stop=["a", "b", "c", "x" * 256])).status_code == 200


@pytest.mark.parametrize("seed", [2**70, 2**63, -(2**63) - 1])
def test_seed_out_of_range_is_400(server, seed):
    r = post(server, request(server, seed=seed, temperature=1))
    assert r.status_code == 400 and assert_error_shape(r.json(), "seed")
    assert f"from {-(2**63)} to {2**63 - 1}" in r.json()["error"]["message"]


def test_seed_range_ends_are_accepted_and_distinct(server):
    def sample(seed):
        r = post(server, request(server, seed=seed, temperature=1, max_tokens=6))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    lowest, highest = sample(-(2**63)), sample(2**63 - 1)
    assert lowest == sample(-(2**63)) and highest == sample(2**63 - 1)
    assert lowest != highest


def test_bodies_python_cannot_parse_are_400(server):
    r = post(server, b'{"model": "m", "seed": ' + b"9" * 5000 + b"}")  # > 4300 digits: ValueError
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(server, b"[" * 200_000 + b"]" * 200_000)  # RecursionError
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "system", "content": None}, {"role": "user", "content": "hi"}], "messages[0].content"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "developer"}],
     "messages[2].content"),
])
def test_a_message_without_content_is_400(server, messages, param):
    r = post(server, request(server, messages=messages))
    assert r.status_code == 400 and assert_error_shape(r.json(), param)


def test_an_assistant_turn_without_content_is_still_accepted(server):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "and?"}]
    assert post(server, request(server, messages=messages)).status_code == 200


def test_no_page_loads_anything_from_another_host(server):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # FastAPI's pages pull Swagger UI from a CDN
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and assert_error_shape(r.json())
    schema = httpx.get(f"{server.url}/openapi.json").json()  # the schema is still served
    assert "/v1/chat/completions" in schema["paths"]
    for path in ("/", "/docs", "/redoc", "/openapi.json", "/health", "/v1/models", "/v1/nothing"):
        text = httpx.get(server.url + path).text
        hosts = {h for h in re.findall(r"(?:https?:)?//([\w.-]+\.[a-z]{2,})", text, re.I)}
        assert not hosts, (path, hosts)


def test_a_non_streaming_client_that_gives_up_frees_the_worker(server):
    """The report: a client with a timeout gave up and the worker kept generating its 96 s reply. Now
    the server notices the disconnect, the running job stops at its next step and a job whose client
    left while it waited is skipped (streaming or not); the worker's own counts show it."""
    before = generation(server)
    body = json.dumps(request(server, messages=STORY, max_tokens=3500)).encode()
    a = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # A: closed by hand below
    try:
        a.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 60
        while generation(server)["running"] == 0:  # A is generating (3500 tokens take well over 10 s)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):  # B waits behind A and gives up
            post(server, request(server), timeout=httpx.Timeout(60, read=0.5))
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**request(server), "stream": True},
                          timeout=60) as c:  # C streams, gets its first event while queued, and leaves
            assert next(c.iter_lines()).startswith("data: ")
        time.sleep(1.0)  # ample for the server to poll B's connection (every 0.2 s) before A stops
    finally:
        a.close()  # A gives up too
    deadline = time.monotonic() + 120
    while True:
        now = generation(server)
        if now["finished"] == before["finished"] + 1 and now["skipped"] == before["skipped"] + 2:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert now["running"] == 0 and now["queued"] == 0
    assert now["generated_tokens"] - before["generated_tokens"] < 2500  # stopped early: 3500 otherwise
    t = time.monotonic()
    r = post(server, request(server, max_tokens=4))
    assert r.status_code == 200 and time.monotonic() - t < 30  # served at once, not after A's 3500 tokens


def stream(server, messages, max_tokens, started: threading.Event | None = None) -> tuple[str, list[str], float]:
    """One streaming request read raw: (text, the lines, when it ended)."""
    lines, text = [], []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=300,
                      json={"model": server.model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            if started is not None:
                started.set()
            if line != "data: [DONE]":
                choices = json.loads(line[len("data: "):])["choices"]
                text.append(choices[0]["delta"].get("content") or "")
    return "".join(text), lines, time.monotonic()


@pytest.mark.slow
def test_twenty_streams_complete_unmixed_while_limits_answer_fast(server):
    prompts = [[{"role": "user", "content": f"Request {i}: say something."}] for i in range(20)]
    alone = []
    for p in prompts:
        r = post(server, {"model": server.model, "messages": p, "max_tokens": 16, "temperature": 0})
        alone.append(r.json()["choices"][0]["message"]["content"])
    assert len(set(alone)) > 10  # distinct replies, so a mix-up would show
    started = [threading.Event() for _ in prompts]
    with ThreadPoolExecutor(20) as pool:
        streams = [pool.submit(stream, server, p, 16, started[i]) for i, p in enumerate(prompts)]
        for e in started:  # every client has its first event: all 20 are in (19 of them queued)
            assert e.wait(120)
        assert generation(server)["queued"] >= 5
        t0 = time.monotonic()
        with ThreadPoolExecutor(6) as side:  # all at once, while 20 streams wait for the worker
            checks = [side.submit(post, server, b'{"pad": "' + b"a" * (10 * MiB) + b'"}'),
                      side.submit(post, server, (b" " * 65536 for _ in range(32))),
                      side.submit(post, server, request(server, seed=2**70)),
                      side.submit(post, server, json.dumps(request(server, stop=["a"] * 200_000))),
                      side.submit(post, server, request(server, messages=[{"role": "user"}])),
                      side.submit(httpx.get, f"{server.url}/health", timeout=30)]
            big, chunked, seed, stops, empty, health = [c.result() for c in checks]
        errors_done = time.monotonic()
        results = [s.result() for s in streams]
    assert [r.status_code for r in (big, chunked, seed, stops, empty, health)] == [413, 413, 400, 400, 400, 200]
    assert (seed.json()["error"]["param"], stops.json()["error"]["param"]) == ("seed", "stop")
    assert errors_done - t0 < 30  # generous; and answered while streams were still waiting:
    assert errors_done < max(end for _, _, end in results)
    for (text, lines, _), expected in zip(results, alone):
        assert lines[-1] == "data: [DONE]" and text == expected
        assert json.loads(lines[-2][len("data: "):])["choices"][0]["finish_reason"] in ("stop", "length")


def _wired(flag: str) -> bool:
    from tunelab.cli import build_parser

    try:
        build_parser().parse_args(["serve", "m", flag, "1000"])
    except SystemExit:
        return False
    return True


@pytest.mark.skipif(not _wired("--max-body-bytes"), reason="--max-body-bytes not yet added to cli.py")
def test_max_body_bytes_flag(random_qwen, tmp_path):
    s = Server(random_qwen, "--max-body-bytes", "1000", log=tmp_path / "server.log")
    try:
        s.model = random_qwen
        assert post(s, request(s, messages=[{"role": "user", "content": "a" * 1000}])).status_code == 413
        r = post(s, request(s))
        assert r.status_code == 200, r.text
    finally:
        s.stop()
