"""bench/estimate.py runs end to end: real tiny-qwen3 trainings in fresh processes, each measured
(peak resident memory over the baseline taken before the model loads) and compared with the estimate."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_estimate_bench_tiny(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "estimate.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "estimate_cpu_tiny.json").read_text())
    assert "bench/estimate.py --tiny" in doc["command"] and len(doc["rows"]) == 2
    for row in doc["rows"]:
        m = row["measured"]
        # the run trained the planned steps on full rows: batch x max_length tokens each
        assert [s["tokens"] for s in m["steps"]] == [row["batch"] * row["length"]] * doc["steps"]
        assert m["measured_mb"] == pytest.approx(m["peak_rss_mb"] - m["baseline_mb"], abs=0.2)
        assert m["measured_mb"] > 100  # tiny-qwen3's vocabulary alone: 37 MB of weights, logits chunks
        est = row["estimate"]["peak_bytes"] / 2**20
        assert abs(est - m["measured_mb"]) / m["measured_mb"] < 0.2  # the floor
    assert "| model | method | optimizer | batch x length |" in proc.stdout and "within 20%: 2" in proc.stdout
