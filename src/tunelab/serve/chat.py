"""`tunelab chat`: multi-turn chat with a model or a run directory in the terminal, replies streamed.

    tunelab chat runs/quickstart [--system TEXT] [--max-new-tokens N] [--temperature T]
    printf 'What is 2+3?\\nAnd times 4?\\n' | tunelab chat runs/quickstart    # scripted: replies only

Commands: `/reset` (forget the conversation, keep the system prompt), `/system TEXT` (set it; `/system`
alone removes it), `/save FILE` (the conversation as JSON `{"messages": [...]}`, loadable as tunelab
data), `/exit`. A line starting with `//` is sent as a message without its first slash.

The prompt of every turn is the whole conversation rendered by the training renderer with the
template saved with the model (`Loaded(...).renderer.render_prompt`), and generation stops at the
template's end-of-turn token: the model is asked exactly as it was trained and evaluated. A run
trained with a system prompt gets it by default. Greedy by default (as `tunelab eval`).

When stdin is not a terminal, each non-empty line is one user turn (or a command) and stdout holds only
the replies, one after each turn, so it can be scripted and tested; messages go to stderr. Piped input
must be UTF-8 (a leading byte-order mark is dropped): a line that is not stops the chat with one message
naming the line and the byte offset (exit 2), after the replies to the lines before it. Replacing the
bad bytes instead would ask the model something the user did not write.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TextIO

from ..errors import ServeError

HELP = "commands: /reset, /system TEXT, /save FILE, /exit (start a message with // to send a leading slash)"


class ChatSession:
    """The conversation and what a turn does with it; no terminal code, so tests can drive it."""

    def __init__(self, loaded: Any, engine: Any, sampling: Any, system: str | None = None, rag: Any = None):
        self.loaded, self.engine, self.sampling, self.rag = loaded, engine, sampling, rag
        self.last_sources: list[Any] = []
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.context = loaded.context

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reply(self, text: str, on_delta: Callable[[str], None] = lambda d: None) -> str:
        """One turn: the user's text in, the reply streamed through `on_delta` and returned.

        Interrupted (Ctrl-C) or refused turns leave the conversation as it was."""
        msgs = self.messages() + [{"role": "user", "content": text}]
        self.last_sources, hits = [], []
        if self.rag is not None:  # passages for this question; the kept conversation stays without them
            msgs, hits = self.rag.apply(msgs)
        prompt = self.loaded.renderer.render_prompt(msgs)
        if self.context and len(prompt) + self.sampling.max_new_tokens > self.context:
            raise ValueError(f"the conversation is {len(prompt)} tokens and a reply may take "
                             f"{self.sampling.max_new_tokens}: more than the model's context of {self.context}; "
                             "/reset to start again")
        self.last_sources = hits
        final = None
        for ev in self.engine.stream(prompt, self.sampling):
            if ev.delta:
                on_delta(ev.delta)
            if ev.done:
                final = ev
        assert final is not None
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": final.text}]
        return final.text

    def command(self, line: str) -> str | None:
        """Run a command line; return a message for the user, or None to stop chatting."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/exit":
            return None
        if name == "/reset":
            self.turns = []
            return "conversation reset" + (" (system prompt kept)" if self.system else "")
        if name == "/system":
            self.system = arg or None
            return f"system prompt set: {arg}" if arg else "system prompt removed"
        if name == "/save":
            if not arg:
                return "usage: /save FILE"
            path = Path(arg).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"messages": self.messages()}, ensure_ascii=False, indent=2) + "\n",
                                encoding="utf-8")
            except OSError as e:
                return f"could not save to {path}: {e.strerror}"
            return f"saved {len(self.messages())} messages to {path}"
        return f"unknown command '{name}'; {HELP}"


def is_command(line: str) -> bool:
    return line.startswith("/") and not line.startswith("//")


def handle(session: ChatSession, line: str, on_delta: Callable[[str], None], say: Callable[[str], None]) -> str:
    """One input line, a command or a user turn; returns "exit", "command" or "turn"."""
    if is_command(line):
        msg = session.command(line)
        if msg is None:
            return "exit"
        say(msg)
        return "command"
    session.reply(line[1:] if line.startswith("//") else line, on_delta)
    return "turn"


def sources_line(session: ChatSession) -> str | None:
    """The passages the last reply was given (--rag), as the numbers it may cite: "[1] file:line; ..."."""
    if not session.last_sources:
        return None
    return "sources: " + "; ".join(f"[{n}] {h.citation}" for n, h in enumerate(session.last_sources, 1))


def utf8_lines(stream: BinaryIO, name: str = "stdin") -> Iterator[str]:
    """The lines of a byte stream as text, read one at a time (a script may still be writing the next).
    Strict UTF-8: the first byte that is not raises a ServeError naming the line and the byte offset."""
    import codecs

    offset = 0
    for n, raw in enumerate(stream, 1):
        skip = len(codecs.BOM_UTF8) if n == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            yield raw[skip:].decode("utf-8")
        except UnicodeDecodeError as e:
            at = skip + e.start
            raise ServeError(f"{name} line {n}, byte {at + 1}: 0x{raw[at]:02x} is not UTF-8 (offset {offset + at} "
                             "of the input); tunelab chat reads UTF-8, so convert the input first, e.g. "
                             "`iconv -f LATIN1 -t UTF-8`") from None
        offset += len(raw)


def run_piped(session: ChatSession, lines: BinaryIO, out: TextIO, err: TextIO) -> int:
    for raw in utf8_lines(lines):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        try:
            kind = handle(session, line, lambda d: print(d, end="", file=out, flush=True),
                          lambda m: print(m, file=err, flush=True))
        except ValueError as e:
            print(f"tunelab chat: {e}", file=err, flush=True)
            kind = "turn"
        if kind == "exit":
            return 0
        if kind == "turn":
            print(file=out, flush=True)  # one reply per turn, each ending with a newline
            if (cited := sources_line(session)):
                print(cited, file=err, flush=True)  # stderr: stdout holds the replies only
    return 0


def run_terminal(session: ChatSession, banner: str) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    print(banner)
    print(HELP)
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        except UnicodeDecodeError as e:  # a terminal whose encoding is not the locale's
            print(f"that line is not valid {e.encoding} (byte {e.start + 1}); it was not sent: check the "
                  "terminal's encoding")
            continue
        if not line.isascii():
            try:  # stdin may decode with surrogateescape (C locale, UTF-8 mode): undecodable bytes survive
                line.encode("utf-8")
            except UnicodeEncodeError as e:
                print(f"that line is not valid UTF-8 (character {e.start + 1}); it was not sent: check the "
                      "terminal's encoding")
                continue
        if not line.strip():
            continue
        try:
            kind = handle(session, line, lambda d: print(d, end="", flush=True), print)
            if kind == "exit":
                return 0
            if kind == "turn":
                print()
                if (cited := sources_line(session)):
                    print(cited)
        except KeyboardInterrupt:  # the engine stops generating at its next step; the turn is dropped
            print("\n[interrupted; this turn is not kept]")
        except ValueError as e:
            print(f"\n{e}")


def chat_command(args: Any) -> int:
    from ..models.loaded import Loaded
    from ..models.loaded import pick_device
    from .engine import Engine, Sampling, seed_problem

    if args.max_new_tokens < 1:
        raise ServeError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    problem = seed_problem(args.seed)
    if problem:
        raise ServeError(f"--seed {problem}")
    interactive = sys.stdin.isatty()
    # piped: stdout carries replies only, so anything printed while loading goes to stderr
    with contextlib.redirect_stdout(sys.stdout if interactive else sys.stderr):
        loaded = Loaded(args.model, device=pick_device(args.device))
    engine = Engine.for_loaded(loaded)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed)
    system = args.system if args.system is not None else loaded.system_prompt
    from ..rag.context import from_args

    rag = from_args(args)
    session = ChatSession(loaded, engine, sampling, system=system or None, rag=rag)
    try:
        if not interactive:
            return run_piped(session, sys.stdin.buffer, sys.stdout, sys.stderr)
        mode = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top_p {args.top_p}"
        banner = (f"tunelab chat: {args.model} (template {loaded.renderer.template}, stops at "
                  f"{loaded.renderer.eot or 'eos'}, {mode}, up to {args.max_new_tokens} tokens a reply)"
                  + (f"\nsystem: {system}" if system else "")
                  + (f"\nretrieval: {rag.describe()}" if rag else ""))
        return run_terminal(session, banner)
    finally:
        engine.close()
