"""The rollout and data-preparation benchmarks run end to end on a tiny configuration and check what
they claim: same prompts and predictions for both rollout runners, same tokens for tunelab and TRL,
a cached re-run that reads the cache (no timings are asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, shared_data


def run_bench(script: str, out) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(next(out.glob("*.json")).read_text())


def test_rollout_tiny(tmp_path):
    shared_data("gsm8k_test.jsonl")
    stdout, res = run_bench("rollout.py", tmp_path)
    assert res["benchmark"] == "rollout_cpu" and "bench/rollout.py --tiny" in res["command"]
    assert {r["runner"] for r in res["rows"]} == {"naive", "tunelab_bs16"}
    naive, tl = res["runs"]["naive"][0], res["runs"]["tunelab_bs16"][0]
    n = res["settings"]["questions"]
    assert len(naive["predictions"]) == len(tl["predictions"]) == n
    # greedy with the same prompt ids (checked by the script) and the same stop rule: same token counts
    # on a model this small, and every answer at most max_new_tokens long
    assert all(0 < c <= res["settings"]["max_new_tokens"] for c in naive["token_counts"] + tl["token_counts"])
    check = res["prediction_checks"]["tunelab_bs16"]
    assert check["n"] == n and check["identical"] + check["differing"] == n
    assert check["identical"] == sum(a == b for a, b in zip(naive["predictions"], tl["predictions"]))
    assert all(r["tok/s"] > 0 for r in res["rows"]) and "| naive |" in stdout and "answers identical" in stdout
    assert res["machine"]["versions"]["torch"]


def test_prepare_tiny(tmp_path):
    shared_data("gsm8k_train.jsonl")
    stdout, res = run_bench("prepare.py", tmp_path)
    assert res["benchmark"] == "prepare"
    rows = {r["runner"]: r for r in res["rows"]}
    assert set(rows) == {"tunelab_cold", "tunelab_cached", "trl"}
    n = res["settings"]["limit"]
    assert all(r["examples"] == n for r in rows.values())
    checks, target = res["per_source"]["gsm8k"]["checks"], res["per_source"]["gsm8k"]["target"]
    assert checks["cold_runs_all_cold"] and checks["cached_runs_all_cached"]
    # the same ids token for token; TRL supervises exactly one more token per example ("\n" after <|im_end|>)
    assert len(set(checks["tokens"].values())) == 1 and checks["ids_identical_tunelab_trl"]
    assert checks["labels_identical_but_trl_trailing_newline"]
    assert checks["trl_extra_supervised_tokens"] == checks["trl_trailing_newlines_supervised"] == n
    assert target["cached_seconds"] == rows["tunelab_cached"]["seconds"]
    assert "ids identical tunelab/TRL: True" in stdout
