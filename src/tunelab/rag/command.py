"""`tunelab rag ...`: build, update, query and evaluate a retrieval index from the command line.

    tunelab rag index SOURCES... --output INDEX [--field F] [--encoder minilm] [--chunk-tokens 256] [--overlap 32]
    tunelab rag query INDEX "question" [-k 5] [--mode bm25|dense|hybrid] [--json]
    tunelab rag eval INDEX QUESTIONS.jsonl [-k 10] [--output report.json]
    tunelab rag remove INDEX FILE...
    tunelab rag info INDEX
    python -m tunelab.rag.command index ...        # the same, before the CLI wires `rag` in

`add_parsers(subparsers)` adds the `rag` command to tunelab's parser and returns the function that
runs it; this module imports nothing heavy at the top, so `tunelab --help` stays light.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

MODES = ("bm25", "dense", "hybrid")


def add_parsers(subparsers: Any) -> Callable[[argparse.Namespace], int]:
    rag = subparsers.add_parser("rag", help="retrieval index: build, query and evaluate (BM25, dense, hybrid)",
                                description=__doc__.split("\n\n")[0])
    sub = rag.add_subparsers(dest="rag_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("index", help="build or update an index from files (incremental: changed files only)",
                       description="Build INDEX, or update it: only new and changed files are (re-)indexed. "
                                   "Settings not given keep the index's previous values.")
    p.add_argument("sources", nargs="+", help="files (.jsonl .json .csv .tsv .parquet .txt .md), folders, built-in data names")
    p.add_argument("--output", required=True, metavar="INDEX", help="index folder (created, or updated if it exists)")
    p.add_argument("--field", help="record text: a column (solution) or a template ('{question}\\n{answer}'); "
                                   "default: question/answer, problem/solution, instruction/input/output, ...")
    p.add_argument("--id-field", help="column with document ids (default: 'id' if present, else file:line)")
    p.add_argument("--encoder", help="dense encoder: built-in name (minilm), folder or hub id; none = BM25 only")
    p.add_argument("--chunk-tokens", type=int, help="tokens per chunk of text files (default 256)")
    p.add_argument("--overlap", type=int, help="tokens shared by consecutive chunks (default: chunk-tokens / 8)")
    p.add_argument("--chunk-items", action=argparse.BooleanOptionalAction,
                   help="also cut long records (default: one chunk per record)")
    p.add_argument("--prune", action="store_true", help="remove files indexed before that are not among SOURCES")
    p.add_argument("--batch-size", type=int, default=32, help="encoder batch size (default 32)")

    p = sub.add_parser("query", help="print the best passages for a question, with scores and sources")
    p.add_argument("index", help="index folder")
    p.add_argument("question")
    p.add_argument("-k", "--k", type=int, default=5, help="passages to show (default 5)")
    p.add_argument("--mode", choices=MODES, help="default: hybrid with an encoder, else bm25")
    p.add_argument("--encoder", help="must be the index's own (checked); default: the index's")
    p.add_argument("--rrf-k", type=int, default=60, help="reciprocal rank fusion constant (default 60)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit instead of a table")

    p = sub.add_parser("eval", help="recall@k and MRR of bm25, dense and hybrid on questions with known documents")
    p.add_argument("index", help="index folder")
    p.add_argument("questions", help="JSON lines: {question, relevant: [doc ids], optional id, exclude}")
    p.add_argument("-k", "--k", type=int, default=10, help="cut-off (default 10)")
    p.add_argument("--mode", action="append", choices=MODES, help="evaluate only this mode (repeatable)")
    p.add_argument("--rrf-k", type=int, default=60)
    p.add_argument("--no-leakage-check", action="store_true",
                   help="keep hits that are the question itself (by id or near-duplicate text)")
    p.add_argument("--output", help="also write the report as JSON here")

    p = sub.add_parser("remove", help="remove files from an index")
    p.add_argument("index")
    p.add_argument("files", nargs="+")

    p = sub.add_parser("info", help="files, chunks, encoder and dense index of an index")
    p.add_argument("index")
    return run


def run(args: argparse.Namespace) -> int:
    return {"index": cmd_index, "query": cmd_query, "eval": cmd_eval, "remove": cmd_remove,
            "info": cmd_info}[args.rag_command](args)


def cmd_index(args: argparse.Namespace) -> int:
    from tunelab.rag.indexing import index_sources

    # a shell passes '{question}\n{answer}' with a backslash and an n: read it as the newline it means
    field = args.field.replace("\\n", "\n").replace("\\t", "\t") if args.field else None
    s = index_sources(args.output, args.sources, field=field, id_field=args.id_field, encoder=args.encoder,
                      chunk_tokens=args.chunk_tokens, overlap=args.overlap, chunk_items=args.chunk_items,
                      prune=args.prune, batch_size=args.batch_size)
    enc = f"encoder {s['encoder'][0]} ({s['encoder'][1]}-dim)" if s["encoder"] else "BM25 only (no --encoder)"
    print(f"{s['index']}: {s['files']} file(s), {s['chunks']:,} chunks, {enc}; this run: {len(s['added'])} added, "
          f"{len(s['updated'])} re-indexed, {len(s['unchanged'])} unchanged, {len(s['removed'])} removed "
          f"in {s['seconds']} s")
    for name in s["empty"]:
        print(f"warning: {name} gave no text", file=sys.stderr)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from tunelab.rag.retrieve import Retriever

    retriever = Retriever(args.index, encoder=args.encoder)
    try:
        hits = retriever.search(args.question, args.k, mode=args.mode, rrf_k=args.rrf_k)
        mode = args.mode or retriever.default_mode
    finally:
        retriever.close()
    if args.json:
        for n, h in enumerate(hits, 1):
            print(json.dumps({"rank": n, "score": h.score, "ranks": h.ranks, "doc_id": h.doc_id, "source": h.citation,
                              "path": h.path, "text": h.text, "meta": h.meta}, ensure_ascii=False))
        return 0
    print_hits(hits, title=f"{mode} top {args.k} for: {args.question}")
    return 0


def print_hits(hits: list[Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col, kw in (("#", {"justify": "right"}), ("score", {"justify": "right"}), ("ranks", {}),
                    ("source", {"no_wrap": True}), ("text", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for n, h in enumerate(hits, 1):
        ranks = " ".join(f"{m}:{r}" for m, r in h.ranks.items())
        snippet = " ".join(h.text.split())
        table.add_row(str(n), f"{h.score:.4f}", ranks, h.citation, snippet[:160] + ("…" if len(snippet) > 160 else ""))
    Console(width=max(120, Console().width)).print(table)
    if not hits:
        print("no passage matched")


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tunelab.rag.evaluate import evaluate, load_questions
    from tunelab.rag.retrieve import Retriever

    questions = load_questions(args.questions)
    retriever = Retriever(args.index)
    try:
        report = evaluate(retriever, questions, args.k, modes=args.mode, rrf_k=args.rrf_k,
                          leakage_check=not args.no_leakage_check)
    finally:
        retriever.close()
    columns = list(next(iter(report.values())))
    print("| mode | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for mode, row in report.items():
        print(f"| {mode} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps({"index": args.index, "questions": args.questions, "k": args.k,
                                                 "rrf_k": args.rrf_k, "leakage_check": not args.no_leakage_check,
                                                 "report": report}, indent=2) + "\n")
        print(f"report written to {args.output}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from tunelab.rag.indexing import remove_files

    remove_files(args.index, args.files)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from tunelab.rag.documents import display_path
    from tunelab.rag.store import Store

    store = Store.open(args.index)
    try:
        enc = store.encoder
        print(f"index {args.index}: {store.count():,} chunks, generation {store.generation}, "
              f"encoder {f'{enc[0]} ({enc[1]}-dim)' if enc else 'none (BM25 only)'}")
        dense = store.dir / "dense.json"
        if dense.is_file():
            d = json.loads(dense.read_text())
            stale = " (stale: rebuilt on next query)" if d["generation"] != store.generation else ""
            print(f"dense index: {d['kind']}, {d['live']:,} vectors{stale}")
        for path, (_, n) in store.files().items():
            print(f"  {n:>8,}  {display_path(path)}")
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`tunelab rag ARGS` on its own (argv without the leading "rag"); user errors exit 2 as in tunelab.cli."""
    from tunelab.errors import UserError

    parser = argparse.ArgumentParser(prog="tunelab")
    handler = add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rag", *(sys.argv[1:] if argv is None else argv)])
    try:
        return handler(args)
    except UserError as e:
        print(f"tunelab rag: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
