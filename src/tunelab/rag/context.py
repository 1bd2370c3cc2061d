"""Retrieval-augmented prompts for every command that asks a model: chat, serve and eval.

    rag = RagContext("kb/gsm8k", k=3, mode="hybrid", placement="system")
    messages, hits = rag.apply(messages)              # passages of the last user message, rendered in
    ids = loaded.renderer.render_prompt(messages)     # then tunelab's one renderer, as always

The query is the last user message. The passages go into the conversation through `augment.augment`
(a system message, or in front of the question), so chat, serve and eval render the same text for
the same question and index. `exclude` drops the test item itself (by id and near-duplicate text)
when evaluating; `augmented` also returns what the leakage check dropped. `encoder` (--rag-encoder)
names the encoder the index must have been built with: another one is refused, as `rag query
--encoder` does. `check` validates an index without loading any model (before a command starts its
work); `check_settings` is the one check of k, mode, placement and encoder, for the CLI flags and an
experiment's `evaluation.retrieval` alike (each message names the flag or the YAML key). A store is
an SQLite connection, which belongs to the thread that opened it: every retrieval runs on one thread
of this object's own, so a server's worker threads can share it.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

from .augment import MODES as PLACEMENTS
from .augment import augment


class RagContext:
    def __init__(self, index: str, *, k: int = 3, mode: str | None = None, placement: str = "system",
                 encoder: str | None = None):
        check_settings(k, placement, mode, encoder)
        self.index, self.k, self.placement = index, k, placement
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-rag")
        self._retriever = self._pool.submit(self._open, encoder).result()  # a missing index fails here, at start
        self.mode = self._pool.submit(self._retriever.check_mode, mode).result()  # reads the store
        self._info = self._pool.submit(self._read_info).result()
        self._pool.submit(self._retriever.search, "warm up", 1, mode=self.mode).result()  # loads the encoder now

    def _open(self, encoder: str | None) -> Any:
        from .retrieve import Retriever

        return Retriever(self.index, encoder=encoder)

    def _read_info(self) -> dict[str, Any]:
        store = self._retriever.store
        return {"encoder": store.encoder[0] if store.encoder else None, "chunks": store.count(),
                "generation": store.generation}

    def search(self, query: str, exclude: Any = None) -> Any:
        """The `retrieve.Results` for one query: the hits and what the leakage check dropped."""
        return self._pool.submit(self._retriever.search_many, [query], self.k, mode=self.mode,
                                 excludes=[exclude]).result()[0]

    def hits(self, query: str, exclude: Any = None) -> list[Any]:
        return self.search(query, exclude).hits

    def augmented(self, messages: list[dict[str, str]], exclude: Any = None) -> tuple[list[dict[str, str]], Any]:
        """(messages with the passages retrieved for the last user message, the `retrieve.Results`)."""
        from .retrieve import Results

        users = [m for m in messages if m["role"] == "user"]
        if not users:
            return [dict(m) for m in messages], Results([], [])
        found = self.search(users[-1]["content"], exclude)
        return augment(messages, found.hits, mode=self.placement), found

    def apply(self, messages: list[dict[str, str]], exclude: Any = None) -> tuple[list[dict[str, str]], list[Any]]:
        """(messages with the passages retrieved for the last user message, the hits)."""
        messages, found = self.augmented(messages, exclude)
        return messages, found.hits

    def describe(self) -> dict[str, Any]:
        """How retrieval is set up: the index (its encoder, chunks and generation), k, mode, placement."""
        return {"index": self.index, "k": self.k, "mode": self.mode, "placement": self.placement, **self._info}

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def sources(hits: list[Any]) -> list[dict[str, Any]]:
    """The hits as a reply's citations: [{"n", "citation", "doc_id", "score"}], n as in the prompt."""
    return [{"n": n, "citation": h.citation, "doc_id": h.doc_id, "score": round(float(h.score), 6)}
            for n, h in enumerate(hits, 1)]


SEARCH_MODES = ("bm25", "dense", "hybrid")  # retrieve.MODES, kept here so that building --help stays light
FLAGS = {"k": "--rag-k", "mode": "--rag-mode", "placement": "--rag-placement", "encoder": "--rag-encoder"}


def check_settings(k: Any = 3, placement: Any = "system", mode: Any = None, encoder: Any = None, *,
                   names: dict[str, str] = FLAGS) -> None:
    """The one check of the retrieval settings, for the CLI flags (chat, serve, eval --rag) and an
    experiment's `evaluation.retrieval` alike: one UserError naming the setting as the caller calls it
    (`names`: the flag, or the YAML key). The index itself is checked by `check`."""
    from ..errors import UserError

    rules = [("k", isinstance(k, int) and not isinstance(k, bool) and k >= 1, "a whole number >= 1", k),
             ("mode", mode is None or mode in SEARCH_MODES, "bm25, dense or hybrid", mode),
             ("placement", placement in PLACEMENTS, " or ".join(PLACEMENTS), placement),
             ("encoder", encoder is None or isinstance(encoder, str), "an encoder name or path", encoder)]
    for name, ok, expected, value in rules:
        if not ok:
            raise UserError(f"{names[name]} must be {expected}, got {value!r}")


def check(index: str, *, k: int = 3, mode: str | None = None, placement: str = "system",
          encoder: str | None = None) -> None:
    """Refuse, with one UserError and no model loaded, what RagContext would refuse: a missing or
    unreadable index, one built with another encoder than `encoder`, a mode it cannot run, bad k or placement."""
    from .retrieve import Retriever

    check_settings(k, placement, mode, encoder)
    retriever = Retriever(index, encoder=encoder)
    try:
        retriever.check_mode(mode)
    finally:
        retriever.close()


def add_arguments(p: Any) -> None:
    """--rag, --rag-k, --rag-mode, --rag-placement on a command's parser (chat, serve, eval)."""
    p.add_argument("--rag", metavar="INDEX", help="retrieve passages from this index (`tunelab rag index`) for "
                                                   "each question and put them in the prompt")
    p.add_argument("--rag-k", type=int, default=3, help="passages per question (default 3)")
    p.add_argument("--rag-mode", choices=list(SEARCH_MODES),
                   help="retrieval method (default: hybrid when the index has an encoder, else bm25)")
    p.add_argument("--rag-placement", default="system", choices=list(PLACEMENTS),
                   help="the passages as a system message (default) or before the question")
    p.add_argument("--rag-encoder", metavar="ENCODER",
                   help="refuse the index unless it was built with this encoder (a name, folder or hub id)")


def from_args(args: Any) -> RagContext | None:
    index = getattr(args, "rag", None)
    if not index:
        return None
    return RagContext(index, k=args.rag_k, mode=args.rag_mode, placement=args.rag_placement,
                      encoder=getattr(args, "rag_encoder", None))
