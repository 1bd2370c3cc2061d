"""bench/eval_parity.py --tiny: tunelab and lm-evaluation-harness score the same MMLU-layout items and
GSM8K continuations with the same prompts and log-likelihoods equal within 1e-4 (no timing asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data


def test_eval_parity_tiny(tmp_path):
    pytest.importorskip("lm_eval", reason="the bench extra (pip install -e .[bench]) is not installed")
    shared_data("cn_middle_school_test.jsonl")
    shared_data("gsm8k_test.jsonl")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "eval_parity.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "eval_parity_tiny.json").read_text())
    mmlu, gsm = res["mmlu"], res["gsm8k"]
    assert mmlu["n"] == 6 and mmlu["same_prompts"] == 6 and mmlu["max_abs_diff"] <= 1e-4
    assert mmlu["tunelab"]["acc"] == pytest.approx(mmlu["lm_eval"]["acc"], abs=1e-4)
    assert mmlu["tunelab"]["acc_norm"] == pytest.approx(mmlu["lm_eval"]["acc_norm"], abs=1e-4)
    assert gsm["n"] == 2 and gsm["equal"] and all(x["same_request"] for x in gsm["items"])
    assert {r["runner"] for r in res["speed"]} == {"tunelab", "tunelab_no_sharing", "lm_eval"}
    assert all(r["items/s (wall)"] > 0 for r in res["speed"]) and "| lm_eval |" in proc.stdout
