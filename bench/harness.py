"""What every benchmark script shares: the machine description, one run per fresh subprocess, the
ratio table and the results file. Not a benchmark itself; `bench/train.py`, `bench/rollout.py` and
`bench/prepare.py` import it (they run as scripts, so `bench/` is on `sys.path`).

A child run prints exactly one line `BENCH_RESULT {json}` on stdout; everything else it prints
(progress bars, warnings) is kept only to explain a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
MARK = "BENCH_RESULT "
PACKAGES = ("tunelab", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count(), "os": platform.platform(), "load_avg_1m": os.getloadavg()[0]}
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {**info, "versions": versions()}


def peak_rss_mb() -> float:
    """This process's peak resident memory, measured as tunelab measures it (`tunelab.memory`: VmHWM on
    Linux; `ru_maxrss` there would start at the parent's size, and benches run their cases in children)."""
    from tunelab.memory import peak_memory_mb

    return round(peak_memory_mb("cpu")[0], 1)


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The parser every script starts from: its docstring's first paragraph, `--out`, and the hidden
    `--child` through which the parent hands a run to a fresh interpreter."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(RESULTS), help="directory for the results file (default bench/results)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def fill_defaults(args: argparse.Namespace, preset: dict[str, Any]) -> argparse.Namespace:
    """Options left unset (None) take the preset's value (the full run's, or --tiny's)."""
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def emit(result: dict[str, Any]) -> None:
    """The child's answer: one JSON line the parent looks for."""
    print(MARK + json.dumps(result), flush=True)


def run_child(script: Path, spec: dict[str, Any], *, timeout: float = 1800, env: dict[str, str] | None = None) -> dict:
    """Run `script --child SPEC` in a fresh interpreter and return the JSON it emitted."""
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    lines = [l[len(MARK):] for l in proc.stdout.splitlines() if l.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"child run {spec.get('run')} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table (also readable in a terminal)."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any], out_dir: str | Path | None) -> Path:
    """Write `<out_dir>/<name>.json` with the machine, the library versions and the exact command."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    argv = [os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(REPO)) else sys.executable]
    argv += [os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:]
    doc = {"benchmark": name, "command": shlex.join(argv), "cwd": str(Path.cwd()),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), **payload}
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path
