"""bench/rag.py runs end to end at tiny sizes and reports what it claims (no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_rag_bench_tiny(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rag.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "rag_cpu.json").read_text())
    assert res["benchmark"] == "rag_cpu" and "bench/rag.py --tiny" in res["command"]
    sizes = res["settings"]["sizes"]
    methods = ["numpy", "numpy_1t", "faiss_flat"] + [f"hnsw_ef{e}" for e in res["settings"]["ef_search"]]
    assert [(r["n"], r["method"]) for r in res["rows"]] == [(n, m) for n in sizes for m in methods]
    for r in res["rows"]:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and 0 <= r["recall@10"] <= 1
        if r["method"].startswith(("numpy", "faiss_flat")):
            assert r["recall@10"] == 1.0  # exact search agrees with numpy
    ef = {r["method"]: r["recall@10"] for r in res["rows"] if r["n"] == sizes[-1]}
    assert ef["hnsw_ef128"] >= ef["hnsw_ef32"] >= 0.8  # a wider search finds at least as many true neighbours
    assert res["target"]["n"] == sizes[-1] and res["target"]["met"] is False  # no 1M run: never claims the target
    assert "| n | method | build_s | p50_ms |" in proc.stdout
