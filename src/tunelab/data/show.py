"""Show a prepared data set to a person: statistics as a table, one example with its supervised part marked."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .render import IGNORE_INDEX

OPEN, CLOSE = "⟦", "⟧"  # visible in plain logs too, where colour is stripped


def marked_example(input_ids: list[int], labels: list[int], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split an example into (text, supervised) runs, in order."""
    runs: list[tuple[list[int], bool]] = []
    for tok, lab in zip(input_ids, labels):
        sup = lab != IGNORE_INDEX
        if runs and runs[-1][1] == sup:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], sup))
    return [(tokenizer.decode(ids), sup) for ids, sup in runs]


def print_prepared(prepared: Any, tokenizer: Any, out: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    s = prepared.stats
    console = Console()
    table = Table(title=f"prepared {s['source']} ({'from cache' if prepared.cached else 'tokenized'})")
    table.add_column("what")
    table.add_column("value")
    table.add_row("examples in", str(s["examples_in"]))
    if s.get("stage") == "dpo":
        table.add_row("stage", "dpo: preference pairs (tokens count both sides, lengths the longer side)")
    table.add_row("train / validation", f"{s['examples_out']['train']} / {s['examples_out']['validation']}")
    table.add_row("dropped", ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "none")
    if s.get("turns_removed"):
        table.add_row("turns removed", ", ".join(f"{k}: {v}" for k, v in s["turns_removed"].items()))
    if "tokens_in" in s:  # stage pt: documents are cut into pieces, never shortened
        table.add_row("documents / tokens in", f"{s['documents']} / {s['tokens_in']}")
    table.add_row("tokens (supervised)", f"{s['tokens']} ({s['supervised_fraction']:.1%})")
    tl = s["token_length"]
    table.add_row("tokens per example", f"p50 {tl['p50']}, p90 {tl['p90']}, p99 {tl['p99']}, max {tl['max']}")
    table.add_row("template / end of turn", f"{s['template']} / {s['end_of_turn'] or '-'}")
    if "data_fingerprint" in s:
        table.add_row("normalize / fingerprint", f"{s.get('normalize', '-')} / {s['data_fingerprint']}")
    console.print(table)
    ex = prepared.load("train")[0]
    console.print(f"example (supervised part between {OPEN} {CLOSE}, in green):")
    sides = ["chosen_", "rejected_"] if "chosen_input_ids" in ex else [""]  # a preference pair: both sides
    for side in sides:
        text = "".join(f"[green]{OPEN}{escape(t)}{CLOSE}[/green]" if sup else escape(t)
                       for t, sup in marked_example(ex[f"{side}input_ids"], ex[f"{side}labels"], tokenizer))
        console.print(f"[bold]{side.rstrip('_')}:[/bold] " + text if side else text, highlight=False)
    console.print(f"written to {out}")
