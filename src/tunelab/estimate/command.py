"""`tunelab estimate CONFIG [key=value ...]`: will this training fit, and how long is a step? No weights loaded.

    tunelab estimate configs/math500_qwen3_full_adamw.yaml --device H100
    tunelab estimate configs/quickstart.yaml training.batch_size=8 --device cpu --json
    tunelab estimate CONFIG --nproc 8 --strategy fsdp --device A100-80GB
    tunelab estimate configs/quickstart.yaml --data    # for the data's widest row, as train estimates
    tunelab estimate configs/quickstart.yaml --max-memory 3GB --data   # the plan `train --max-memory` picks

Prints the peak memory broken into components (MB and share), the moment of the step where the
peak happens, whether it fits the device, and the predicted step time. `--json` prints the same as
one JSON object for tools. Importing this module is cheap (argparse only): torch and transformers
are imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("estimate", help="predict peak memory and step time of a training config "
                                               "(reads the model's config only, no weights)")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda (the GPU present), or a profile: H100, H200, A100-80GB, A100-40GB, RTX-4090, "
                        "L4 (default: cuda if present, else cpu)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) the run is spread over (default 1)")
    p.add_argument("--strategy", default="ddp", choices=STRATEGIES,
                   help="with --nproc > 1: ddp replicates everything; zero2 shards gradients and optimizer "
                        "state; fsdp and zero3 also the weights")
    p.add_argument("--supervised-fraction", type=float, default=None,
                   help="share of tokens in the loss (default 1: the upper bound; `tunelab prepare` prints it)")
    p.add_argument("--data", action="store_true",
                   help="prepare the config's data (its tokenizer only, cached as by `tunelab prepare`) and "
                        "estimate for its widest row and real supervised fraction: what `tunelab train` prints")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="a budget per process (e.g. 6GB, 512MiB): show the plan `tunelab train --max-memory` picks "
                        "(micro-batch, accumulation, checkpointing) and its candidates, without training")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from .. import config as C
    from .builder import estimate_from_config
    from .devices import resolve_device

    cfg = C.load(args.config, args.overrides)
    device = resolve_device(default_device() if args.device == "auto" else args.device)
    seq_len, fraction = data_shape(cfg) if args.data else (None, None)
    budget = getattr(args, "max_memory", None) or cfg.training.max_memory
    if budget:
        return _plan(args, cfg, budget, device, seq_len, args.supervised_fraction if fraction is None else fraction)
    est = estimate_from_config(cfg, device=device, nproc=args.nproc, strategy=args.strategy, seq_len=seq_len,
                               supervised_fraction=args.supervised_fraction if fraction is None else fraction)
    if args.json:
        print(json.dumps({**est.to_dict(), "device_memory_bytes": device.memory_bytes,
                          "fits": est.peak_bytes <= device.memory_bytes}, indent=2))
        return 0
    print_estimate(est, device_memory=device.memory_bytes, title=f"estimate: {Path(args.config).name}")
    return 0


def _plan(args: argparse.Namespace, cfg: Any, budget: str, device: Any, seq_len: int | None,
          fraction: float | None) -> int:
    """`--max-memory`: the plan train would pick, its candidates, and the estimate of the plan."""
    from .builder import estimate_from_config
    from .plan import parse_budget, plan_for_budget

    held = process_baseline_mb(device)
    plan = plan_for_budget(cfg, parse_budget(budget, "--max-memory" if getattr(args, "max_memory", None)
                                             else "training.max_memory"), device=device, seq_len=seq_len,
                           supervised_fraction=fraction, nproc=args.nproc, strategy=args.strategy, baseline_mb=held)
    est = estimate_from_config(plan.apply(cfg), device=device, nproc=args.nproc, strategy=args.strategy,
                               seq_len=seq_len, supervised_fraction=fraction)
    if args.json:
        print(json.dumps({"plan": plan.to_dict(), "estimate": est.to_dict()}, indent=2))
        return 0
    print_plan(plan, budget)
    print_estimate(est, title=f"estimate of the plan: {Path(args.config).name}")
    return 0


def process_baseline_mb(device: Any) -> float:
    """What a training process holds before its model loads, counted in a budget: on a GPU 0 (as the
    estimate, `max_memory_allocated`); on CPU this process's resident memory once it has imported what
    `tunelab train` has by then (torch, transformers, accelerate; with --data also the tokenizer and the
    data). `train` measures its own, so its plan can differ from this one at a budget's edge."""
    if getattr(device, "kind", "cpu") == "cuda":
        return 0.0
    import accelerate  # noqa: F401  (train has made its Accelerator before the model loads)
    import transformers.modeling_utils  # noqa: F401

    from .check import current_rss_mb

    return current_rss_mb()


def print_plan(plan: Any, budget: str) -> None:
    """The plan and every candidate with its estimate (what `tunelab estimate --max-memory` prints)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]plan for --max-memory {budget}[/bold] ({plan.budget_mb:,.0f} MB; a candidate fits when "
                  f"its estimate + {plan.margin:.0%} margin"
                  + (f" + {plan.baseline_mb:,.0f} MB held before the model loads" if plan.baseline_mb else "")
                  + " is within it)", soft_wrap=True)
    table = Table()
    for col, justify in (("batch", "right"), ("accum", "right"), ("ckpt", "left"), ("estimate MB", "right"),
                         ("needs MB", "right"), ("s/step", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    chosen = plan.tried - 1
    for i, c in enumerate(plan.candidates):
        mark = "<- plan" if i == chosen else ("fits" if c.needs_mb <= plan.budget_mb else "too big")
        table.add_row(str(c.batch_size), str(c.grad_accum), "on" if c.gradient_checkpointing else "off",
                      f"{c.estimate_mb:,.0f}", f"{c.needs_mb:,.0f}", f"{c.step_time_s:,.2f}", mark,
                      style="bold" if i == chosen else None)
    console.print(table)
    for text in (plan.line(budget), f"why: {plan.why}", *(f"note: {n}" for n in plan.notes)):
        console.print(text, soft_wrap=True)  # one line each, for grep and for the docs


def data_shape(cfg: Any) -> tuple[int | None, float | None]:
    """(widest row, supervised fraction) of the config's training data, as `tunelab train` computes them."""
    from ..data.batching import widest_row
    from ..data.prepare import prepare_from_config
    from ..models.load import config_tokenizer

    tokenizer = config_tokenizer(cfg)
    prepared = prepare_from_config(cfg, tokenizer)
    lengths = [len(x) for x in prepared.load("train")["input_ids"]]
    widest = widest_row(lengths, packing=cfg.data.packing, max_length=cfg.data.max_length, seed=cfg.training.seed)
    return widest or None, prepared.stats.get("supervised_fraction")


def print_estimate(est: Any, *, device_memory: float | None = None, title: str = "tunelab estimate") -> None:
    """The table `tunelab estimate` prints (also for `tunelab train` to print before training)."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col, justify in (("component", "left"), ("MB", "right"), ("share", "right")):
        table.add_column(col, justify=justify)
    for name, value in est.components.items():
        if value:
            table.add_row(name, f"{value / 2**20:,.0f}", f"{value / est.peak_bytes:.0%}")
    table.add_row("peak", f"{est.peak_mb:,.0f}", "100%", style="bold")
    console = Console()
    console.print(f"[bold]{title}[/bold]")
    console.print(table)
    i = est.inputs
    console.print(f"{i['method']} / {i['optimizer']}, {i['batch_size']} x {i['seq_len']} tokens per micro-batch "
                  f"({est.supervised_tokens_per_step:,} in the loss), precision {i['precision']}, "
                  f"checkpointing {'on' if i['grad_checkpointing'] else 'off'}; peak during the {est.peak_phase}")
    if device_memory:
        fits = "fits" if est.peak_bytes <= device_memory else "does NOT fit"
        console.print(f"device {est.device}: {device_memory / 2**30:,.1f} GiB -> {fits} "
                      f"({est.peak_bytes / device_memory:.0%} of it)")
    console.print(f"step time: {est.step_time_s:,.2f} s per micro-batch ({est.flops_per_step / 1e12:,.2f} TFLOP at "
                  f"{est.device_flops / 1e12:,.2f} TFLOP/s achievable)")
    for note in est.notes:
        console.print(f"note: {note}")
