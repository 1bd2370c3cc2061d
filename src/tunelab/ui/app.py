"""The board's HTTP routes (FastAPI): one page (`static/`), and a JSON API over the run directories.

    GET  /api/board                       runs, experiments, sweeps, evaluations, jobs, with status
    GET  /api/run?id=                     a run's page: config, summary, data stats, evals, job log
    GET  /api/metrics?id=&after=N         metrics.jsonl rows from the N-th on, the charts to draw of them
                                          (by stage), the number of samples (live curves poll this)
    GET  /api/samples?id=&limit=N         a GRPO run's newest samples.jsonl rows, newest first
    GET  /api/example?id=                 the first training example, supervised part marked
    GET  /api/predictions?id=&wrong=1     an evaluation's predictions, optionally the wrong ones only
    GET  /api/compare?ids=a,b             the report's tables and the loss curves of several runs
    GET  /api/report?ids=a,b              report.html of those runs (a download)
    GET  /api/form                        the config fields, tasks, models and roots for the forms
    POST /api/check, /api/launch          check a train/experiment/eval form; start it
    POST /api/stop, /api/resume, /api/export
    POST /api/chat                        a streamed reply (server-sent events)

Security: paths arrive as ids checked by `roots.Roots` (404 outside the roots). Requests must name
this server in their Host header (a web page cannot reach it through DNS rebinding), and every POST
must be JSON with no foreign Origin (a page on another site cannot post to it: no CSRF). With an API
key, every request needs it: `Authorization: Bearer KEY`, or the cookie that `/?key=KEY` or the login
form sets.
"""
from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request  # module level: FastAPI resolves annotations in module globals

from ..errors import UserError
from . import launch as L
from .jobs import Jobs
from .roots import Outside, Roots
from .scan import Scanner

STATIC = Path(__file__).with_name("static")
PAGES = {"app.js": "text/javascript", "style.css": "text/css"}
COOKIE = "tunelab_ui_key"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _host_name(value: str) -> str:
    return (urlsplit("//" + value).hostname or "").lower()


def build_app(roots: Roots, *, api_key: str | None = None, host: str = "127.0.0.1", jobs: Jobs | None = None,
              cwd: Path | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    from . import views
    from .chat import ModelPool, check_messages, stream_reply

    cwd = Path(cwd or Path.cwd()).resolve()
    jobs = jobs or Jobs(cwd=cwd)
    scanner = Scanner(roots, jobs)
    pool = ModelPool()
    allowed_hosts = LOOPBACK | {host.lower().strip("[]")}
    any_host = host in ("0.0.0.0", "::", "")
    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), api_key.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        name = _host_name(request.headers.get("host", ""))
        if not any_host and name not in allowed_hosts:
            return JSONResponse({"error": f"unexpected Host header {name!r}"}, status_code=421)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"error": "cross-site requests are refused"}, status_code=403)
            if request.url.path != "/login" and \
                    not request.headers.get("content-type", "").startswith("application/json"):
                return JSONResponse({"error": "POST bodies must be JSON"}, status_code=415)
        if request.url.path == "/login" or authorized(request):
            return await call_next(request)
        key = request.query_params.get("key")
        if key is not None and api_key and hmac.compare_digest(key.encode(), api_key.encode()):
            resp = RedirectResponse(request.url.path, status_code=303)
            resp.set_cookie(COOKIE, key, httponly=True, samesite="strict")
            return resp
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "this board needs its API key (Authorization: Bearer KEY)"}, status_code=401)
        return HTMLResponse(LOGIN, status_code=401)

    @app.exception_handler(Outside)
    async def _outside(request: Request, e: Outside) -> Any:
        return JSONResponse({"error": f"not found: {e}"}, status_code=404)

    @app.exception_handler(UserError)
    async def _user(request: Request, e: UserError) -> Any:
        return JSONResponse({"ok": False, "error": str(e)}, status_code=400)

    @app.post("/login")
    async def login(request: Request) -> Any:
        form = (await request.body()).decode("utf-8", "replace")
        from urllib.parse import parse_qs

        key = (parse_qs(form).get("key") or [""])[0]
        if api_key and hmac.compare_digest(key.encode(), api_key.encode()):
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, key, httponly=True, samesite="strict")
            return resp
        return HTMLResponse(LOGIN.replace("<!--msg-->", "<p>wrong key</p>"), status_code=401)

    @app.get("/")
    async def index() -> Any:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}")
    async def static(name: str) -> Any:
        if name not in PAGES:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=PAGES[name])

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "roots": roots.given}

    def job_for(path: Path) -> dict[str, Any] | None:
        for job in jobs.all():
            if job["target"] == str(path):
                return jobs.get(job["id"])
        return None

    def existing(ident: str) -> tuple[Path, dict[str, Any] | None]:
        """The path an id names and the board's job for it; 404 unless it exists or a job will write it."""
        path = roots.path(ident)
        job = job_for(path)
        if not path.exists() and job is None:
            raise Outside(f"{ident}: no such directory")
        return path, job

    @app.get("/api/board")
    async def board() -> Any:
        return await run_in_threadpool(scanner.scan)

    @app.get("/api/run")
    async def run_page(id: str) -> Any:
        path, job = existing(id)
        return await run_in_threadpool(views.run_page, scanner, path, job)

    @app.get("/api/metrics")
    async def metrics(id: str, after: int = 0) -> Any:
        path, job = existing(id)

        def read() -> dict[str, Any]:
            rows = scanner.metrics(path)
            rec = scanner.run_record(path, None, job)
            return {"rows": rows[max(0, after):], "total": len(rows), "status": rec["status"], "detail": rec["detail"],
                    "stage": rec["stage"], "charts": views.charts(rec["stage"], scanner.metric_keys(path)),
                    "samples": len(scanner.samples(path))}

        return await run_in_threadpool(read)

    @app.get("/api/samples")
    async def samples(id: str, limit: int = 20) -> Any:
        path, _ = existing(id)
        return await run_in_threadpool(views.samples, scanner, path, limit=min(max(1, limit), 200))

    @app.get("/api/example")
    async def example(id: str) -> Any:
        return await run_in_threadpool(views.data_example, scanner, roots.path(id))

    @app.get("/api/predictions")
    async def predictions(id: str, wrong: int = 0, offset: int = 0, limit: int = 50) -> Any:
        return await run_in_threadpool(views.predictions, roots, roots.path(id), wrong_only=bool(wrong),
                                       offset=max(0, offset), limit=min(max(1, limit), 500))

    def run_paths(ids: str) -> list[Path]:
        paths = [existing(i)[0] for i in ids.split(",") if i]
        if not paths:
            raise UserError("pick at least one run")
        return paths

    @app.get("/api/compare")
    async def compare(ids: str) -> Any:
        return await run_in_threadpool(views.compare, scanner, run_paths(ids))

    @app.get("/api/report")
    async def report(ids: str) -> Any:
        body = await run_in_threadpool(views.report_html, scanner, run_paths(ids))
        return Response(body, media_type="text/html",
                        headers={"Content-Disposition": 'attachment; filename="report.html"'})

    @app.get("/api/form")
    async def form() -> Any:
        from ..models.builtin import BUILTINS

        board = await run_in_threadpool(scanner.scan)
        models = [{"value": name, "label": f"{name} (built-in)"} for name in BUILTINS]
        models += [{"value": r["id"], "label": r["label"]} for r in board["runs"] if r["has_model"]]
        found = scanner.walk()
        models += [{"value": roots.id_of(d), "label": roots.label(d) + (" (export)" if kind == "export" else "")}
                   for kind in ("export", "model") for d in found[kind]]
        return {"fields": L.fields(), "tasks": L.tasks(), "models": models, "roots": roots.given,
                "cwd": str(cwd), "root_paths": [L.shown_path(d, cwd) for d in roots.dirs],
                "configs": [{"value": r["id"], "label": r["label"]} for r in board["runs"]
                            if roots.file(roots.path(r["id"]), "config.yaml")]}

    def check(body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("kind")
        if kind == "train":
            return L.check_train(roots, cwd, body.get("base"), body.get("values") or {})
        if kind == "experiment":
            return L.check_experiment(roots, cwd, body.get("base"), body.get("values") or {},
                                      body.get("variants") or "", body.get("evaluation") or {},
                                      body.get("output") or "", body.get("name"))
        if kind == "eval":
            return L.check_eval(roots, cwd, body.get("model") or "", body.get("task") or "", body.get("limit"),
                                body.get("max_new_tokens"), body.get("output") or "")
        raise UserError(f"unknown launch kind {kind!r}: train, experiment or eval")

    @app.post("/api/check")
    async def check_route(request: Request) -> Any:
        body = await request.json()
        try:
            return await run_in_threadpool(check, body)
        except UserError as e:  # the CLI's message, shown under the form
            return {"ok": False, "error": str(e)}

    @app.post("/api/launch")
    async def launch_route(request: Request) -> Any:
        body = await request.json()
        c = await run_in_threadpool(check, body)
        files = {}
        if c.get("launch_yaml") is not None:
            files["launch.yaml"] = c["launch_yaml"]
        if c.get("spec_yaml") is not None:
            files["experiment.yaml"] = c["spec_yaml"]
        job = jobs.start({"train": "train", "experiment": "run", "eval": "eval"}[body["kind"]], c["argv"],
                         Path(c["target"]), files=files, shown=c["command"])
        return {"ok": True, "job": job["id"], "target": roots.id_of(c["target"]), "command": c["command"]}

    @app.post("/api/stop")
    async def stop(request: Request) -> Any:
        body = await request.json()
        return {"ok": jobs.stop(str(body.get("job") or ""))}

    @app.post("/api/resume")
    async def resume(request: Request) -> Any:
        run = roots.path(str((await request.json()).get("id") or ""))
        rec = await run_in_threadpool(scanner.run_record, run, None, job_for(run))
        if not rec["resumable"] or rec["status"] in ("running", "starting"):
            raise UserError(f"{roots.label(run)} is {rec['status']}: only an interrupted run with a checkpoint resumes")
        job = jobs.start("train", L.resume_argv(run, cwd), run)
        return {"ok": True, "job": job["id"], "command": job["shown"]}

    @app.post("/api/export")
    async def export(request: Request) -> Any:
        body = await request.json()
        run = roots.path(str(body.get("id") or ""))
        if not roots.all_inside(run / "model"):
            raise Outside(f"{roots.label(run)}/model has links outside the roots")
        argv, out = L.export_argv(roots, run, str(body.get("output") or ""), str(body.get("dtype") or "auto"), cwd)
        job = jobs.start("export", argv, out)
        return {"ok": True, "job": job["id"], "command": job["shown"]}

    @app.get("/api/job")
    async def job(id: str) -> Any:
        j = jobs.get(id)
        if j is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        return j

    @app.post("/api/chat")
    async def chat(request: Request) -> Any:
        body = await request.json()
        from ..models.builtin import BUILTINS

        value = str(body.get("model") or "")
        if value in BUILTINS:
            ref = value
        else:  # a run or model directory under the roots, every file of it inside them
            path = roots.path(value)
            if not path.is_dir() or not roots.all_inside(path):
                raise Outside(f"{value}: not a model directory inside the roots")
            ref = str(path)
        messages = check_messages(body.get("messages"))

        def num(name: str, default: Any, cast: Any) -> Any:
            v = body.get(name)
            try:
                return default if v in (None, "") else cast(v)
            except (TypeError, ValueError):
                raise UserError(f"{name}: expected a number, got {v!r}") from None

        system = body.get("system")
        events = stream_reply(pool, ref, messages, system=system if isinstance(system, str) else None,
                              temperature=num("temperature", 0.0, float), top_p=num("top_p", 1.0, float),
                              max_tokens=num("max_tokens", 256, int), seed=num("seed", None, int))
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>tunelab ui</title></head>
<body style="font-family:system-ui,sans-serif;max-width:30em;margin:4em auto">
<h1>tunelab ui</h1><p>This board was started with <code>--api-key</code>. Enter the key:</p><!--msg-->
<form method="post" action="/login"><input type="password" name="key" autofocus> <button>Open</button></form>
</body></html>"""
