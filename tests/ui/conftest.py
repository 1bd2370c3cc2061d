"""Fixtures for the board's tests: run directories written as `tunelab train` writes them (for the fast
tests of status and security), and the browser for the end-to-end tests (Debian's Chromium driven by
Playwright; never a downloaded browser)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# as the machine notes say: no sandbox as root, no GPU, and no background connections on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def fake_run(run: Path, *, steps: int = 6, finished: bool = True, checkpoint: int | None = None,
             error: str | None = None) -> Path:
    """A run directory with the files `tunelab train` writes (config, metrics, summary, marker)."""
    from tunelab import config as C
    from tunelab.paths import mark

    run.mkdir(parents=True)
    mark(run, "run")
    C.save(C.load(None, ["model.name=tiny-qwen3", f"output.dir={run}", f"training.max_steps={steps}"]),
           run / "config.yaml")
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "epoch": s / steps, "split": "train", "loss": 3.0 - 0.1 * s, "lr": 1e-3,
                     "grad_norm": 1.0, "tokens": 100, "supervised_tokens": 50, "tokens_per_s": 10.0,
                     "supervised_tokens_per_s": 5.0, "peak_mem_mb": 100.0 + s, "elapsed_s": float(s)})
        if s % 3 == 0:
            rows.append({"step": s, "epoch": s / steps, "split": "val", "loss": 3.1 - 0.1 * s,
                         "peak_mem_mb": 100.0 + s, "elapsed_s": float(s)})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run / "summary.json").write_text(json.dumps({"method": "lora", "optimizer": "adamw", "steps": steps,
                                                      "best_val_loss": 2.5, "peak_mem_mb": 106.0,
                                                      "train_time_s": 6.0}))
    if checkpoint is not None:
        (run / "checkpoints" / f"step-{checkpoint:06d}").mkdir(parents=True)
    if error:
        (run / "error.txt").write_text(error + "\n\nTraceback ...\n")
    return run


@pytest.fixture(scope="session")
def chromium():
    """A headless Debian Chromium under Playwright, or a skip that says why."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: `apt-get install -y chromium` (CI's .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(request, tmp_path_factory) -> Path:
    """Where a test saves its screenshots: the test's own output directory, or $TUNELAB_UI_SCREENSHOTS."""
    import os

    out = Path(os.environ["TUNELAB_UI_SCREENSHOTS"]) if os.environ.get("TUNELAB_UI_SCREENSHOTS") else \
        tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    yield out
    print(f"\nscreenshots of {request.node.name}: {out}")

