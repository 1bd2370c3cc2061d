r"""The pictures of the board in docs/board.md, taken from the quickstart study that `make demo` leaves in runs/.

    make demo && .venv/bin/python docs/ui/shoot.py            # writes docs/ui/{board,compare,chat}.png
    .venv/bin/python docs/ui/shoot.py --pages grpo            # writes docs/ui/grpo.png from runs/grpo_arith:

    printf 'model:\n  name: smollm2-135m-instruct\n' > grpo.yaml
    tunelab train grpo.yaml stage=grpo data.name=arith_en data.n=64 method.name=lora \
        'objective.rewards=[correct,boxed]' 'objective.reward_weights=[1.0,0.2]' objective.num_generations=4 \
        objective.max_new_tokens=96 objective.sample_every=1 training.batch_size=2 training.max_steps=10 \
        training.log_every=1 optimizer.lr=2e-4 output.dir=runs/grpo_arith

Starts `tunelab ui runs/` on a free port, opens it in headless Debian Chromium (Playwright with
/usr/bin/chromium, as tests/ui does), and saves the runs page, the comparison of the LoRA and full
AdamW variants, a side-by-side chat (base model vs the LoRA run, greedy), and a GRPO run's page (its
reward curves and its latest samples; `--grpo` names the run under --runs). Needs the test extra
(playwright) and `apt-get install chromium`.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUESTION = "A pen costs 3 yuan. How much do 4 pens cost?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="the directory `make demo` wrote (default runs)")
    p.add_argument("--study", default="quickstart_study")
    p.add_argument("--out", default=str(REPO / "docs" / "ui"))
    p.add_argument("--pages", default="board,compare,chat", help="which pictures: board, compare, chat, grpo")
    p.add_argument("--grpo", default="grpo_arith", help="a GRPO run under --runs, for the grpo picture")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    port, out, pages = free_port(), Path(a.out), a.pages.split(",")
    board = subprocess.Popen([sys.executable, "-m", "tunelab", "ui", a.runs, "--port", str(port)], cwd=Path.cwd(),
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        root = Path(a.runs).name  # run ids are <root index>/<path under the root>
        runs = f"0%2F{a.study}%2Fruns%2F"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
            if "board" in pages:
                page.goto(url + "#/")
                page.wait_for_selector("#runs-table tbody tr")
                time.sleep(1)
                page.screenshot(path=str(out / "board.png"), full_page=True)
            if "compare" in pages:
                page.goto(url + f"#/compare/{runs}lora,{runs}full_adamw")
                page.wait_for_selector("#score-table", timeout=120_000)
                page.wait_for_selector('[data-chart="compare-train"] g[data-series="lora"]')
                page.screenshot(path=str(out / "compare.png"), full_page=True)
            if "grpo" in pages:
                page.set_viewport_size({"width": 1400, "height": 900})  # three charts a row
                page.goto(url + f"#/run/0%2F{a.grpo}")
                page.wait_for_selector('[data-chart="reward"] g[data-series="mean reward"]')
                page.wait_for_selector("#samples .sample")
                cards = page.query_selector_all("#samples .sample")
                box = cards[min(1, len(cards) - 1)].bounding_box()  # the curves and the two newest samples
                page.screenshot(path=str(out / "grpo.png"), full_page=True,
                                clip={"x": 0, "y": 0, "width": 1400, "height": box["y"] + box["height"] + 12})
            if "chat" in pages:
                page.goto(url + "#/chat")
                page.evaluate("localStorage.clear()")
                page.reload()
                page.wait_for_selector("#model-a")
                page.select_option("#model-a", "smollm2-135m-instruct")
                page.check("#side-by-side")
                page.dispatch_event("#side-by-side", "change")
                page.select_option("#model-b", f"0/{a.study}/runs/lora")
                page.fill("#temperature", "0")
                page.fill("#max-tokens", "96")
                page.dispatch_event("#max-tokens", "change")
                page.fill("#prompt", QUESTION)
                page.click("#send")
                for side in "AB":
                    page.wait_for_selector(f'#conv-{side} .msg.assistant[data-done="1"]', timeout=600_000)
                page.screenshot(path=str(out / "chat.png"))
            browser.close()
        print(f"screenshots of {root} in {out}")
    finally:
        board.terminate()
        board.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
