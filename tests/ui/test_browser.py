"""End to end in real headless Chromium: `tunelab ui` over a directory holding an experiment run by
`tunelab run` (two finished variants with evaluations, one failed variant), a training started by the
test that runs while the board watches, and a small model to chat with.

Checked: the statuses (finished, failed with its error, running, and interrupted once the process is
killed, never running); the live curve gains points without a reload; a reload keeps the page; Resume
and Stop; the comparison tables equal `tunelab report`'s; a chat reply streams and equals `tunelab
chat`'s greedy reply, over two turns, alone and side by side; the launch form shows the CLI's error
and command and starts a training; export from a run's page. Screenshots of every page are saved in
the test's output (the path is printed).

    .venv/bin/python -m pytest tests/ui/test_browser.py -q -s      # several minutes on 2 CPU cores
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.ui.conftest import wait_for_board

pytestmark = pytest.mark.slow

CHAT_LINES = ["What is 2+3?", "And times 4?"]
CHAT_TOKENS = 24


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def tunelab(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", *args], cwd=cwd, env=env(), **kw)


def random_qwen(out: Path) -> Path:
    """A small random Qwen3 with untied embeddings: its greedy replies are non-empty (tiny-qwen3's are
    empty after stripping; tests/serve/conftest.py explains why)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tunelab.models.builtin import ensure

    tok = AutoTokenizer.from_pretrained(ensure("tiny-qwen3"))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.pad_token_id, eos_token_id=im_end,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


STUDY = {
    "name": "study",
    "base": {"model": {"name": "tiny-qwen3"}, "method": {"lora_r": 4}, "optimizer": {"lr": 5.0e-3},
             "data": {"name": "arith_en", "n": 24, "val_size": 4, "max_length": 192},
             "training": {"batch_size": 2, "max_steps": 4, "eval_every": 2, "save_every": 0, "log_every": 1}},
    "variants": {"lora": {}, "full": {"method.name": "full", "optimizer.lr": 1.0e-3},
                 "broken": {"method.target_modules": ["no_such_module"]}},
    "evaluation": {"tasks": ["arith_en"], "limit": 4, "max_new_tokens": 16, "batch_size": 4},
    "output": "board/study",
}
LIVE = ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=40", "data.val_size=4", "data.max_length=192",
        "training.batch_size=1", "training.max_steps=400", "training.log_every=1", "training.eval_every=10",
        "training.save_every=5", "method.lora_r=4", "optimizer.lr=5e-3", "output.dir=board/live"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md_table(md: str, heading: str) -> dict[str, list[str]]:
    """Rows of the Markdown table under `## heading` in report.md, by their first cell."""
    lines = md.split(f"## {heading}\n", 1)[1].strip().splitlines()
    table = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
    return {r[0]: r for r in rows[2:]}


@pytest.fixture(scope="module")
def board(tmp_path_factory, tunelab_home):
    tmp = tmp_path_factory.mktemp("ui")
    (tmp / "board").mkdir()
    model = random_qwen(tmp / "board" / "models" / "random_qwen")
    (tmp / "study.yaml").write_text(yaml.safe_dump(STUDY))
    log = (tmp / "study.log").open("w")
    study = tunelab("run", "study.yaml", cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    chat = tunelab("chat", str(model), "--max-new-tokens", str(CHAT_TOKENS), cwd=tmp, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    reference = chat.communicate("\n".join(CHAT_LINES) + "\n", timeout=600)[0]
    study.wait(timeout=1500)
    log.close()
    status = json.loads((tmp / "board" / "study" / "status.json").read_text())
    ok = not status["lora"].startswith("failed") and not status["full"].startswith("failed")
    assert ok and status["broken"].startswith("failed"), \
        (status, (tmp / "study.log").read_text()[-3000:])
    subprocess.run([sys.executable, "-m", "tunelab", "report", "board/study", "--output", "report"], cwd=tmp,
                   env=env(), check=True, capture_output=True)
    port = free_port()
    server = tunelab("ui", "board", "--port", str(port), cwd=tmp, stdout=(tmp / "ui.log").open("w"),
                     stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_for_board(url, server, tmp / "ui.log")
    yield {"tmp": tmp, "url": url, "reference": reference, "report": (tmp / "report" / "report.md").read_text()}
    server.terminate()
    server.wait(timeout=30)
    for job in (Path(os.environ["TUNELAB_HOME"]) / "ui" / "jobs").glob("*/job.json"):  # what the board launched
        pid = json.loads(job.read_text()).get("keeper_pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 950})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def status_of(page, run_id: str) -> str:
    return page.get_attribute(f'tr[data-run-id="{run_id}"] .status .badge', "data-status")


def wait_status(page, selector: str, wanted: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = page.get_attribute(selector, "data-status") if page.query_selector(selector) else None
        if got in wanted:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{selector}: status {got!r}, waited for {wanted}")


def train_points(page) -> int:
    el = page.query_selector('[data-chart="loss"] g[data-series="train"]')
    return int(el.get_attribute("data-points")) if el else 0


def wait_points(page, at_least: int, timeout_s: float) -> int:
    deadline = time.time() + timeout_s
    while (n := train_points(page)) < at_least:
        assert time.time() < deadline, f"the live curve has {n} points, waited for {at_least}"
        time.sleep(0.5)
    return n


def test_statuses_live_curve_reload_kill_resume_stop(board, page, shots):
    tmp, url = board["tmp"], board["url"]
    (tmp / "cfg.yaml").write_text("{}\n")
    # started as from a terminal: the board learns of it only from /proc
    live = tunelab("train", "cfg.yaml", *LIVE, cwd=tmp, stdout=(tmp / "live.log").open("w"),
                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        page.goto(url + "#/")
        assert wait_status(page, 'tr[data-run-id="0/live"] .badge', ("running",), 300) == "running"
        assert status_of(page, "0/study/runs/lora") == "finished"
        assert status_of(page, "0/study/runs/full") == "finished"
        assert status_of(page, "0/study/runs/broken") == "failed"
        assert "no_such_module" in page.inner_text('tr[data-run-id="0/study/runs/broken"] .status')
        assert f"pid {live.pid}" in page.inner_text('tr[data-run-id="0/live"] .status')
        page.screenshot(path=str(shots / "board.png"), full_page=True)

        page.goto(url + "#/run/" + "0%2Flive")
        n0 = wait_points(page, 2, 120)
        n1 = wait_points(page, n0 + 3, 180)  # the curve grows while we watch, no reload
        assert page.get_attribute("h1 .badge", "data-status") == "running"
        page.screenshot(path=str(shots / "run_live.png"), full_page=True)
        page.reload()
        assert wait_points(page, n1, 60) >= n1  # a reload shows everything again
        assert page.get_attribute("h1 .badge", "data-status") == "running"
        assert "tiny-qwen3" in page.inner_text("#config")
        page.wait_for_selector("#example .sup", timeout=120_000)
        assert page.inner_text("#example .sup").strip().endswith("<|im_end|>")  # a reply, with its end of turn
        assert "<|im_start|>user" in page.inner_text("#example")

        # any complete checkpoint (step 5 itself may already be pruned by training.keep_last on a slow machine)
        ckpts = tmp / "board" / "live" / "checkpoints"
        deadline = time.time() + 300
        while not any((c / "state.json").is_file() for c in ckpts.glob("step-*")):
            assert time.time() < deadline, "no checkpoint"
            time.sleep(0.5)
        os.killpg(live.pid, signal.SIGKILL)  # the process dies without a word
        live.wait()
        assert wait_status(page, "h1 .badge", ("interrupted",), 30) == "interrupted"
        assert "resumable from checkpoint" in page.inner_text("#status-detail")

        killed_at = train_points(page)
        page.click("#resume")
        wait_status(page, "h1 .badge", ("running", "starting"), 60)
        deadline = time.time() + 300
        while not (page.get_attribute("h1 .badge", "data-status") == "running" and train_points(page) > killed_at):
            assert time.time() < deadline, "the resumed run did not log past the step it was killed at"
            time.sleep(0.5)
        page.wait_for_selector("#stop", timeout=30_000)
        page.click("#stop")
        assert wait_status(page, "h1 .badge", ("interrupted",), 90) == "interrupted"
        assert "stopped from this board" in page.inner_text("#status-detail")
        page.screenshot(path=str(shots / "run_stopped.png"), full_page=True)
        page.goto(url + "#/")
        assert wait_status(page, 'tr[data-run-id="0/live"] .badge', ("interrupted",), 30) == "interrupted"
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)
            live.wait()


def test_compare_is_tunelab_report(board, page, shots):
    page.goto(board["url"] + "#/compare/0%2Fstudy%2Fruns%2Flora,0%2Fstudy%2Fruns%2Ffull")
    page.wait_for_selector("#score-table", timeout=120_000)
    report = board["report"]

    def rows(table: str) -> dict[str, list[str]]:
        got = page.eval_on_selector_all(f"{table} tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
        return {r[0]: r for r in got}

    resources, scores = rows("#resource-table"), rows("#score-table")
    expected_resources, expected_scores = md_table(report, "Resources"), md_table(report, "Scores")
    assert set(resources) == {"lora", "full"}
    for name in ("lora", "full"):
        assert resources[name] == expected_resources[name]
    assert set(scores) == {"base", "lora", "full"}
    for name in scores:
        assert scores[name] == expected_scores[name]
    assert "[" in scores["lora"][1] and "(n=4)" in scores["lora"][1]  # the interval, as the report writes it
    page.wait_for_selector('[data-chart="compare-train"] g[data-series="lora"]')
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    href = page.get_attribute("#download-report", "href")
    body = page.request.get(board["url"].rstrip("/") + href).text()
    assert "<h2>Resources</h2>" in body and "lora" in body and "data:image/png;base64" in body

    page.goto(board["url"] + "#/run/0%2Fstudy%2Fruns%2Flora")
    page.click("text=predictions")
    page.wait_for_selector("#predictions-table")
    total = page.inner_text("#predictions h3")
    page.check("#only-wrong")
    page.wait_for_function("document.querySelector('#only-wrong') && document.querySelector('#only-wrong').checked")
    wrong = [json.loads(line) for line in (board["tmp"] / "board/study/eval/lora/arith_en/predictions.jsonl")
             .read_text().splitlines()]
    n_wrong = sum(1 for r in wrong if r["correct"] is False)
    page.wait_for_function(f"document.querySelectorAll('#predictions-table tbody tr').length === {n_wrong}")
    assert f"{n_wrong} wrong" in total


def test_chat_streams_the_cli_reply(board, page, shots):
    page.goto(board["url"] + "#/chat")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_selector("#model-a")
    page.select_option("#model-a", "0/models/random_qwen")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(CHAT_TOKENS))
    page.dispatch_event("#max-tokens", "change")
    replies = []
    for k, line in enumerate(CHAT_LINES, 1):
        page.fill("#prompt", line)
        page.click("#send")
        done = f'#conv-A .msg.assistant:nth-of-type({2 * k})[data-done="1"]'
        page.wait_for_selector(done, timeout=300_000)
        deltas = int(page.get_attribute(done, "data-deltas") or 0)
        assert deltas >= 2, "the reply arrived in one piece, not streamed"
        replies.append(page.inner_text(done))
    assert "\n".join(replies) + "\n" == board["reference"]  # tunelab chat, piped, greedy, same two turns
    page.reload()  # the conversation survives a reload
    page.wait_for_selector("#conv-A .msg.assistant")
    assert page.eval_on_selector_all("#conv-A .msg.assistant", "ms => ms.map(m => m.textContent)") == replies

    page.check("#side-by-side")
    page.dispatch_event("#side-by-side", "change")
    page.select_option("#model-b", "0/study/runs/lora")
    page.fill("#prompt", CHAT_LINES[0])
    page.click("#send")
    page.wait_for_selector('#conv-A .msg.assistant[data-done="1"]', timeout=300_000)
    page.wait_for_selector('#conv-B .msg.assistant[data-done="1"]', timeout=300_000)
    assert page.inner_text("#conv-A .msg.assistant") == replies[0]
    assert "error" not in (page.get_attribute("#conv-B .msg:last-child", "class") or "")
    page.screenshot(path=str(shots / "chat.png"), full_page=True)


def test_launch_form_and_export(board, page, shots):
    from tunelab import config as C
    from tunelab.errors import ConfigError

    tmp = board["tmp"]
    page.goto(board["url"] + "#/launch/train")
    page.wait_for_selector("input[name='training.batch_size']")
    page.fill("input[name='training.batch_size']", "abc")
    page.wait_for_selector("#check-error", timeout=30_000)
    with pytest.raises(ConfigError) as cli:
        C.load(None, ["training.batch_size=abc"])
    assert page.inner_text("#check-error") == str(cli.value)
    for key, value in {"model.name": "tiny-qwen3", "data.name": "arith_en", "data.n": "12", "data.val_size": "2",
                       "data.max_length": "192", "training.batch_size": "2", "training.max_steps": "2",
                       "method.lora_r": "4", "output.dir": "board/from-form"}.items():
        page.fill(f"input[name='{key}']", value)
    page.wait_for_function("document.querySelector('#command') && "
                           "document.querySelector('#command').textContent.includes('max_steps: 2')", timeout=30_000)
    command = page.inner_text("#command")
    assert command.endswith("tunelab train launch.yaml") and "dir: board/from-form" in command
    page.screenshot(path=str(shots / "launch.png"), full_page=True)
    page.click("#start")
    page.wait_for_url("**/#/run/0%2Ffrom-form", timeout=30_000)
    wait_status(page, "h1 .badge", ("finished",), 400)

    page.reload()
    page.wait_for_selector("#export")
    page.fill("#export-output", "board/from-form-export")
    page.click("#export")
    page.wait_for_selector("#export-msg code", timeout=30_000)
    out = tmp / "board" / "from-form-export"
    deadline = time.time() + 400
    while not (out / "tunelab.json").is_file():
        assert time.time() < deadline, "the export did not appear"
        time.sleep(1)
    assert (out / "config.json").is_file()
