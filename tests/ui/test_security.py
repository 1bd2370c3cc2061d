"""The board reads nothing outside the directories it was given, answers only requests that name it,
takes no cross-site posts, needs its key when asked to, and sends no page that loads from elsewhere.

    .venv/bin/python -m pytest tests/ui/test_security.py -q
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ui.conftest import fake_run

SECRET = "top-secret-9f8e7d"


@pytest.fixture
def board(tmp_path):
    from starlette.testclient import TestClient

    from tunelab.ui.app import build_app
    from tunelab.ui.jobs import Jobs
    from tunelab.ui.roots import Roots

    root = tmp_path / "runs"
    fake_run(root / "a")
    outside = fake_run(tmp_path / "outside")  # a run next to the root, not under it
    (outside / "notes.txt").write_text(SECRET)
    (outside / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1, "note": "%s"}\n' % SECRET)
    (root / "link").symlink_to(outside, target_is_directory=True)  # a directory link leading out
    b = fake_run(root / "b")
    (b / "metrics.jsonl").unlink()
    (b / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")  # a file link leading out
    (outside / "samples.jsonl").write_text('{"step": 1, "prompt": "%s", "completions": []}\n' % SECRET)
    (b / "samples.jsonl").symlink_to(outside / "samples.jsonl")  # and a GRPO run's samples
    app = build_app(Roots([root]), jobs=Jobs(tmp_path / "jobs", cwd=tmp_path), cwd=tmp_path)
    return TestClient(app, base_url="http://127.0.0.1:7860"), root, outside


BAD_IDS = ["0/..", "0/../outside", "0/a/../../outside", "/etc", "0//etc", "0/link", "0/link/notes.txt", "1/a",
           "-1/a", "x", "0/a\\..\\..", "00/../outside", "0/./../outside"]


@pytest.mark.parametrize("route", ["/api/run?id=", "/api/metrics?id=", "/api/samples?id=", "/api/example?id=",
                                   "/api/predictions?id=", "/api/compare?ids=", "/api/report?ids="])
@pytest.mark.parametrize("ident", BAD_IDS)
def test_paths_outside_the_roots_are_not_found(board, route, ident):
    client, _, _ = board
    from urllib.parse import quote

    r = client.get(route + quote(ident, safe=""))
    assert r.status_code in (400, 404), (ident, r.status_code, r.text[:200])
    assert SECRET not in r.text


@pytest.mark.parametrize("raw", ["0/%2e%2e/outside", "0%2f%2e%2e%2foutside", "0/%252e%252e/outside",
                                 "0/..%2foutside", "0/%2E%2E%2Foutside%2Fnotes.txt"])
def test_url_encoded_traversal_is_refused(board, raw):
    client, _, _ = board
    for route in ("/api/run?id=", "/api/metrics?id="):
        r = client.get(route + raw)
        assert r.status_code == 404, (raw, r.status_code, r.text[:200])
        assert SECRET not in r.text


def test_a_file_link_leading_out_is_never_opened(board):
    client, root, _ = board
    r = client.get("/api/metrics?id=0/b")
    assert r.status_code == 200 and r.json()["rows"] == [] and r.json()["samples"] == 0
    assert client.get("/api/samples?id=0/b").json() == {"total": 0, "rows": []}
    assert SECRET not in client.get("/api/run?id=0/b").text
    listed = client.get("/api/board").json()
    assert sorted(r["id"] for r in listed["runs"]) == ["0/a", "0/b"]  # the linked directory is not walked into
    assert SECRET not in str(listed)


def test_the_root_itself_and_runs_inside_are_served(board):
    client, _, _ = board
    r = client.get("/api/run?id=0/a")
    assert r.status_code == 200 and r.json()["status"] == "finished"
    assert len(client.get("/api/metrics?id=0/a").json()["rows"]) == 8


def test_a_foreign_host_header_is_refused(board):
    client, _, _ = board
    assert client.get("/api/board", headers={"Host": "attacker.example:7860"}).status_code == 421
    assert client.get("/api/board", headers={"Host": "localhost:7860"}).status_code == 200


def test_posts_must_be_json_and_same_origin(board):
    client, _, _ = board
    body = '{"kind": "train", "values": {}}'
    assert client.post("/api/check", content=body, headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post("/api/check", content=body, headers={"Content-Type": "application/json",
                                                            "Origin": "http://attacker.example"}).status_code == 403
    assert client.post("/api/check", content=body, headers={"Content-Type": "application/json",
                                                            "Origin": "http://127.0.0.1:7860"}).status_code == 200


def test_launch_paths_outside_the_roots_are_refused(board, tmp_path):
    client, _, outside = board
    for values in ({"output.dir": str(tmp_path / "elsewhere")}, {"output.dir": "../escape"},
                   {"output.dir": str(tmp_path / "runs" / "new"), "data.name": str(outside / "notes.txt")}):
        r = client.post("/api/check", json={"kind": "train", "values": values}).json()
        assert r["ok"] is False and "outside the directories given to tunelab ui" in r["error"], r
    r = client.post("/api/launch", json={"kind": "train", "values": {"output.dir": str(tmp_path / "elsewhere")}})
    assert r.status_code == 400
    assert not (tmp_path / "jobs").exists()  # nothing was started


def test_chat_refuses_models_outside(board):
    client, _, _ = board
    for model in ("0/../outside", "/etc", "0/link"):
        r = client.post("/api/chat", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code in (400, 404), (model, r.status_code)


def test_api_key(tmp_path):
    from starlette.testclient import TestClient

    from tunelab.ui.app import build_app
    from tunelab.ui.jobs import Jobs
    from tunelab.ui.roots import Roots

    fake_run(tmp_path / "runs" / "a")
    app = build_app(Roots([tmp_path / "runs"]), api_key="k-123", host="0.0.0.0",
                    jobs=Jobs(tmp_path / "jobs", cwd=tmp_path), cwd=tmp_path)
    client = TestClient(app, base_url="http://203.0.113.7:7860")
    assert client.get("/api/board").status_code == 401
    page = client.get("/")
    assert page.status_code == 401 and "--api-key" in page.text and "app.js" not in page.text
    assert client.get("/api/board", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/board", headers={"Authorization": "Bearer k-123"}).status_code == 200
    assert client.get("/static/app.js").status_code == 401
    r = client.get("/?key=k-123", follow_redirects=False)
    assert r.status_code == 303 and "tunelab_ui_key" in r.headers["set-cookie"]
    assert client.get("/api/board").status_code == 200  # the cookie set above
    client.cookies.clear()
    assert client.post("/login", data={"key": "nope"}).status_code == 401
    assert client.get("/api/board").status_code == 401


def test_any_host_but_loopback_needs_a_key(tmp_path, monkeypatch):
    from tunelab.cli import main

    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    (tmp_path / "runs").mkdir()
    assert main(["ui", str(tmp_path / "runs"), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert main(["ui", str(tmp_path / "missing"), "--port", "0"]) == 2


def test_pages_load_nothing_from_elsewhere():
    static = Path(__file__).resolve().parents[2] / "src" / "tunelab" / "ui" / "static"
    for f in static.iterdir():
        text = f.read_text(encoding="utf-8")
        urls = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text)
        assert all(u == "http://www.w3.org/2000/svg" for u in urls), (f.name, urls)  # an XML namespace, not fetched
        assert not re.search(r"@import|cdn|googleapis|unpkg|jsdelivr", text, re.I), f.name


def test_help_imports_neither_torch_nor_the_web_stack():
    code = ("import sys; from tunelab.cli import build_parser; p = build_parser(); p.parse_args(['ui', 'runs']); "
            "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
