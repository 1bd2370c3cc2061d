"""`tunelab serve`: an OpenAI-compatible HTTP server for one model (FastAPI + uvicorn, loopback by default).

    tunelab serve runs/quickstart --port 8000 [--api-key KEY] [--max-input-tokens N] [--max-tokens-limit N]
                                              [--max-body-bytes N]
    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "runs/quickstart", "messages": [{"role": "user", "content": "2+3?"}], "max_tokens": 64}'

Routes: `POST /v1/chat/completions` (a JSON reply, or server-sent `chat.completion.chunk` events ending
with `data: [DONE]` when `"stream": true`), `GET /v1/models`, `GET /health`. The prompt is rendered by
the training renderer with the template saved with the model, so the server asks the model exactly as
training and `tunelab eval` did; a run trained with a system prompt gets it when a request has none.
Generation goes through the one worker of `engine.py`: concurrent requests wait their turn and never
mix. Every error is OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

Limits, so that one request cannot take the server from the others: a body over `--max-body-bytes`
is a 413 before it is read (by Content-Length, or counted as a chunked body arrives); at most 4
`stop` strings of at most 256 characters, a `seed` in the signed 64-bit range and a `content` on
every user/system message, else 400, all checked before the prompt is tokenized; tokenizing runs in
a thread so a long prompt does not stall the streams of others; a client that goes away stops its
generation at the next decoding step, streaming or not (the non-streaming side is polled). `/docs`
and `/redoc` are off, because FastAPI's pages load their scripts from a CDN; `/openapi.json` stays.

Tests: `.venv/bin/python -m pytest tests/serve/test_server.py tests/serve/test_limits.py -q` (a real server
process + `openai`; the load test of 20 streaming clients is marked slow).
"""
from __future__ import annotations

import errno
import hmac
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves annotations in module globals

from ..errors import ServeError
from .schema import ChatRequest

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default when a request gives none (tunelab eval's is 0: greedy)
DEFAULT_MAX_BODY = 1 << 20  # bytes (1 MiB: ~250k tokens of text, more than any small model's context)
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 256  # per stop string; every generated token is checked against each of them
DISCONNECT_POLL_S = 0.2  # how often a waiting non-streaming request looks whether its client left


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int | None  # prompt tokens allowed (None: the model's context)
    max_tokens_limit: int  # the most completion tokens a request may ask for; also the default
    context: int | None  # the model's max_position_embeddings, when it has one


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413 in OpenAI's shape, never read whole.

    A declared Content-Length over the limit is answered before any of the body is read; a chunked
    body is counted as it arrives and refused (`BodyTooLarge` out of `request.body()`) as soon as it
    passes the limit, so at most `limit` bytes plus one chunk are ever held. uvicorn then reads and
    drops the rest of the upload, so the client still gets the 413 instead of a reset connection."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:  # the HTTP parser has checked its syntax
            from starlette.responses import JSONResponse

            e = BodyTooLarge(self.limit)
            return await JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=413)(
                scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server accepts ({limit} bytes, "
                         "--max-body-bytes)", code="request_too_large")


def bind(host: str, port: int) -> socket.socket:
    """Bind and listen before the model loads, so a port in use is reported at once and stays ours."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is not a port number (0-65535)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve --host '{host}' ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    # as uvicorn does: a connection still in TIME_WAIT from an earlier run must not block a restart
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another server?); "
                             "stop it or choose another port with --port") from None
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _content(content: Any, i: int, role: str) -> str:
    if content is None:
        if role != "assistant":  # OpenAI answers 400 too; an assistant turn may be empty (tool calls)
            raise ApiError(400, f"messages[{i}].content is missing: a {role} message needs its text",
                           param=f"messages[{i}].content")
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:  # OpenAI content parts: only text ones mean anything to a text model
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ApiError(400, f"messages[{i}].content: only text parts are supported, got '{kind}'",
                           param=f"messages[{i}].content")
        texts.append(part["text"])
    return "\n".join(texts)


def validation_message(errors: Any) -> tuple[str, str | None]:
    """pydantic's first error as (message, OpenAI `param`), e.g. ("temperature: Input should be ...", "temperature")."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    return f"{param or 'body'}: {first.get('msg', 'invalid request')}", param


def parse_request(raw: bytes) -> ChatRequest:
    """The body as JSON whatever its Content-Type (curl -d sends form-encoded), then the schema."""
    import json

    from pydantic import ValidationError

    try:
        data = json.loads(raw)
    # ValueError: bad JSON, bad UTF-8, an integer of more than 4300 digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        msg, param = validation_message(e.errors())
        raise ApiError(400, msg, param=param, code="invalid_value") from None


def conversation(req: Any, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise ApiError(400, f"messages[{i}].role '{m.role}' is not supported; use system, user or assistant",
                           param=f"messages[{i}].role")
        msgs.append({"role": ROLES[m.role], "content": _content(m.content, i, m.role)})
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})  # as the run was trained
    return msgs


def check(req: Any, system_prompt: str | None) -> tuple[list[dict[str, str]], tuple[str, ...]]:
    """The checks that need no tokenizer, cheap enough for the event loop: (conversation, stop strings),
    or an ApiError naming the parameter at fault."""
    from .engine import seed_problem

    if req.n not in (None, 1):
        raise ApiError(400, "n > 1 is not supported; send the request n times with different seeds", param="n")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    for key in ("tools", "functions"):
        if getattr(req, key, None):
            raise ApiError(400, f"'{key}' (tool calling) is not supported by this server", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        if getattr(req, key, None):
            raise ApiError(400, f"'{key}' is not supported by this server (leave it 0)", param=key)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} stop strings are allowed, got {len(stop)}", param="stop")
    for s in stop:
        if len(s) > MAX_STOP_CHARS:
            raise ApiError(400, f"stop: a stop string may have at most {MAX_STOP_CHARS} characters, got one of "
                           f"{len(s)}", param="stop")
    problem = seed_problem(req.seed)
    if problem:
        raise ApiError(400, f"seed {problem}", param="seed")
    return conversation(req, system_prompt), tuple(stop)


def prepare(req: Any, renderer: Any, system_prompt: str | None, limits: Limits,
            rag: Any = None) -> tuple[list[int], Any, list[Any]]:
    """Request -> (prompt ids, Sampling, retrieved passages), or an ApiError naming the parameter at fault.
    With `rag`, the passages retrieved for the last user message are put into the conversation
    (rag/context.py) before it is rendered, exactly as `tunelab chat --rag` does."""
    from .engine import Sampling

    messages, stop = check(req, system_prompt)
    hits: list[Any] = []
    if rag is not None:
        messages, hits = rag.apply(messages)
    try:
        prompt = renderer.render_prompt(messages)
    except Exception as e:  # a template that refuses the conversation (roles out of order, ...)
        raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None
    window = limits.max_input_tokens or limits.context
    if window is not None and len(prompt) > window:
        why = "--max-input-tokens" if limits.max_input_tokens else "the model's context"
        raise ApiError(400, f"the prompt is {len(prompt)} tokens; this server accepts at most {window} ({why})",
                       param="messages", code="context_length_exceeded")
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if asked is not None and asked > limits.max_tokens_limit:
        raise ApiError(400, f"{param} is {asked}; this server allows at most {limits.max_tokens_limit} "
                       "(--max-tokens-limit)", param=param)
    room = limits.context - len(prompt) if limits.context else None
    if asked is not None and room is not None and asked > room:
        raise ApiError(400, f"the prompt ({len(prompt)} tokens) plus {param} ({asked}) exceeds the model's "
                       f"context of {limits.context} tokens", param=param, code="context_length_exceeded")
    if asked is None:
        asked = min(limits.max_tokens_limit, room) if room is not None else limits.max_tokens_limit
        if asked < 1:
            raise ApiError(400, f"the prompt ({len(prompt)} tokens) fills the model's context of "
                           f"{limits.context} tokens", param="messages", code="context_length_exceeded")
    temperature = DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
    sampling = Sampling(max_new_tokens=asked, temperature=temperature,
                        top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=stop)
    return prompt, sampling, hits


async def _stop_when_gone(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` once the client of a non-streaming request has disconnected (polled: nothing is
    sent to it before the reply, so nothing else would notice)."""
    import anyio

    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await anyio.sleep(DISCONNECT_POLL_S)


class _Threads:
    """Separate thread quotas (anyio limiters, made on first use: they need a running loop). A request
    waiting for the generation worker holds a thread all along; with one shared quota, enough waiting
    requests would leave no thread to tokenize a new prompt, not even to refuse it as too long."""

    def __init__(self) -> None:
        self._limiters: dict[str, Any] = {}

    def limiter(self, name: str) -> Any:
        import anyio

        if name not in self._limiters:
            self._limiters[name] = anyio.CapacityLimiter({"render": 2, "wait": 256}[name])
        return self._limiters[name]


def build_app(*, engine: Any, renderer: Any, model_name: str, system_prompt: str | None = None,
              api_key: str | None = None, limits: Limits, max_body_bytes: int = DEFAULT_MAX_BODY,
              rag: Any = None) -> Any:
    import json

    from ..rag.context import sources

    import anyio
    from fastapi import APIRouter, Depends, FastAPI, Header
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    # no /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN (a server that may have no
    # network, and third-party code in the browser); the schema is still at /openapi.json
    app = FastAPI(title="tunelab", description=f"OpenAI-compatible server for {model_name}", docs_url=None,
                  redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    created = int(time.time())
    threads = _Threads()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # OpenAI answers a malformed request with 400 naming the parameter; FastAPI's default is a 422
        # with its own body shape, which OpenAI clients cannot read
        msg, param = validation_message(e.errors())
        return JSONResponse(error_body(msg, "invalid_request_error", param, "invalid_value"), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, code),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"{type(e).__name__}: {e}", "server_error"), status_code=500)

    def auth(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guessed key was right
        if scheme != "Bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                           "key given to `tunelab serve --api-key`", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "tunelab"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "generation": engine.stats()}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise ApiError(404, f"model '{model_id}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        return model_card

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = parse_request(await request.body())  # at most max_body_bytes (BodyLimit)
        if req.model != model_name:
            raise ApiError(404, f"model '{req.model}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        check(req, system_prompt)  # fails fast, in the loop; tokenizing (up to ~1 s for 1 MiB) is threaded
        prompt, sampling, hits = await anyio.to_thread.run_sync(prepare, req, renderer, system_prompt, limits, rag,
                                                                limiter=threads.limiter("render"))
        extra = {"sources": sources(hits)} if rag is not None else {}  # what the reply may cite as [n]
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": now, "model": model_name, "system_fingerprint": None}
        if not req.stream:
            cancel = threading.Event()  # set when the client goes away: the worker stops generating
            failed: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_when_gone, request, cancel)
                try:
                    ev = await anyio.to_thread.run_sync(engine.complete, prompt, sampling, cancel,
                                                        limiter=threads.limiter("wait"))
                except Exception as e:  # raised below, not out of the task group (an ExceptionGroup)
                    failed = e
                tg.cancel_scope.cancel()
            if failed is not None:
                raise failed
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": ev.text},
                                 "logprobs": None, "finish_reason": ev.finish_reason}],
                    "usage": _usage(ev), **extra}
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None, more: dict[str, Any] | None = None) -> str:
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **(more or {})}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events() -> Any:
            cancel = threading.Event()  # set when the client goes away: the worker stops generating
            tokens = engine.stream(prompt, sampling, cancel)
            try:
                yield chunk({"role": "assistant", "content": ""}, None, extra)  # the sources come first
                while True:
                    # abandon_on_cancel: a client that leaves while its job still waits in the queue is let
                    # go at once; `finally` sets cancel, so the worker skips the job and the thread returns
                    ev = await anyio.to_thread.run_sync(next, tokens, None, abandon_on_cancel=True,
                                                        limiter=threads.limiter("wait"))
                    if ev is None:
                        break
                    if ev.delta:
                        yield chunk({"content": ev.delta}, None)
                    if ev.done:
                        yield chunk({}, ev.finish_reason)
                        if include_usage:
                            body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(ev)}
                            yield f"data: {json.dumps(body)}\n\n"
            except Exception as e:  # headers are sent: the error goes into the stream, as OpenAI does
                yield f"data: {json.dumps(error_body(f'{type(e).__name__}: {e}', 'server_error'))}\n\n"
            finally:
                cancel.set()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(v1)
    return app


def _usage(ev: Any) -> dict[str, int]:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


def serve_command(args: Any) -> int:
    max_body = getattr(args, "max_body_bytes", None) or DEFAULT_MAX_BODY  # flag added in cli.py
    for flag, value in (("--max-input-tokens", args.max_input_tokens), ("--max-tokens-limit", args.max_tokens_limit),
                        ("--max-body-bytes", getattr(args, "max_body_bytes", None))):
        if value is not None and value < 1:
            raise ServeError(f"{flag} must be at least 1, got {value}")
    sock = bind(args.host, args.port)
    engine = None
    try:
        import uvicorn

        from ..models.loaded import Loaded
        from ..models.loaded import pick_device
        from .engine import Engine

        loaded = Loaded(args.model, device=pick_device(args.device))  # an unknown model fails here, before serving
        context = loaded.context
        if args.max_input_tokens and context and args.max_input_tokens >= context:
            raise ServeError(f"--max-input-tokens {args.max_input_tokens} leaves no room for a reply in the "
                             f"model's context of {context} tokens")
        limits = Limits(args.max_input_tokens, args.max_tokens_limit, context)
        engine = Engine.for_loaded(loaded)
        from ..rag.context import from_args

        rag = from_args(args)  # a missing or unreadable index fails here, before serving
        app = build_app(engine=engine, renderer=loaded.renderer, model_name=args.model,
                        system_prompt=loaded.system_prompt, api_key=args.api_key, limits=limits,
                        max_body_bytes=max_body, rag=rag)
        host, port = sock.getsockname()[:2]
        if args.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"[tunelab] WARNING: listening on {args.host} without --api-key: anyone who can reach it "
                  "can use it", flush=True)
        print(f"[tunelab] serving '{args.model}' (template {loaded.renderer.template}, end of turn "
              f"{loaded.renderer.eot or 'eos'}) at http://{host}:{port}/v1; max input {limits.max_input_tokens or context}"
              f" tokens, max_tokens <= {limits.max_tokens_limit}, bodies <= {max_body} bytes", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    finally:
        sock.close()
        if engine is not None:
            engine.close()
    return 0
