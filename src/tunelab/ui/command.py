"""`tunelab ui [DIR ...]`: the web board over the run directories under DIR (default `runs`).

    tunelab ui runs/                          # http://127.0.0.1:7860
    tunelab ui runs/ other_runs/ --port 8080
    tunelab ui runs/ --host 0.0.0.0 --api-key KEY   # reachable from the network: a key is required

The port is bound before anything else, so a port in use is one message (exit 2). Listening beyond
this machine (any host but loopback) without `--api-key` is refused: the board can start processes.

Tests: `.venv/bin/python -m pytest tests/ui -q` (real headless Chromium; skipped without /usr/bin/chromium).
"""
from __future__ import annotations

from typing import Any

from ..errors import ServeError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ui_command(args: Any) -> int:
    from ..serve.server import bind
    from .roots import Roots

    if args.host not in LOOPBACK and not args.api_key:
        raise ServeError(f"--host {args.host} makes the board reachable from other machines, and the board can "
                         "start processes: give --api-key KEY (or $TUNELAB_API_KEY) as well")
    roots = Roots(args.dirs or ["runs"])
    sock = bind(args.host, args.port)
    app = None
    try:
        import uvicorn

        from .app import build_app

        app = build_app(roots, api_key=args.api_key, host=args.host)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"[tunelab] ui over {', '.join(roots.given)} at http://{shown}:{port}/"
              + (" (API key required: open /?key=KEY once)" if args.api_key else ""), flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    finally:
        sock.close()
        if app is not None:
            app.state.pool.close()  # the chat models' generation workers
    return 0
