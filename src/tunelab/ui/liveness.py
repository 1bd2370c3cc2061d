"""Is a process working on a run right now? Read from /proc on this machine, never guessed from clocks.

Two signs, either enough:
- the board's own launcher recorded the process (pid, host and the process's start time, so a pid
  reused by another program is not mistaken for it): `process_alive(pid, start)`;
- a tunelab process on this machine names the run in its command line: `tunelab train CONFIG
  [key=value ...]` (also under torchrun or `accelerate launch`) trains into the `output.dir` that
  CONFIG and the overrides resolve to, read from /proc/PID/cmdline and resolved in /proc/PID/cwd with
  `config.load`, as the command itself resolved it; `tunelab run EXP --worker NAME` trains the
  experiment's variant NAME; `tunelab run EXP` and `tunelab sweep SWEEP` keep their experiment or
  sweep alive. This finds trainings started from a terminal, by `tunelab run` or by a sweep as well
  as those the board started.
A run with neither, and no summary.json, is not running: it was interrupted (a checkpoint to resume
from) or is dead. A zombie (exited, not yet reaped) counts as gone. Runs trained on another machine
that shares the file system cannot be seen from here (docs/board.md says so).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

HOST = socket.gethostname()
_PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces
    if fields[0] in ("Z", "X"):  # zombie or dead: exited
        return None
    return int(fields[19])


def process_alive(pid: int | None, start: int | None = None, host: str | None = None) -> bool:
    if not pid or (host and host != HOST):
        return False
    now = start_time(int(pid))
    return now is not None and (start is None or now == start)


TRAIN_FLAGS_WITH_VALUE = {"--nproc", "--strategy"}


def _tunelab_args(argv: list[str]) -> list[str] | None:
    """The arguments after `tunelab` in a command line (`python -m tunelab ...`, the console script,
    `accelerate launch ... -m tunelab ...`), or None when it is not a tunelab command."""
    for i, a in enumerate(argv):
        if a == "tunelab" and i and argv[i - 1] == "-m" or a.endswith("/tunelab") and i <= 1:
            return argv[i + 1:]
    return None


def _output_of(args: list[str], cwd: Path) -> tuple[str, Path] | None:
    """(kind, directory) a tunelab command line works on: ("run", output.dir) for train and for a
    worker of `tunelab run`, ("experiment", output) for `tunelab run`, ("sweep", output) for a sweep."""
    import yaml

    from .. import config as C

    if not args:
        return None
    cmd, rest = args[0], args[1:]
    if cmd == "train":
        positional, skip = [], False
        for a in rest:
            if skip:
                skip = False
            elif a in TRAIN_FLAGS_WITH_VALUE:
                skip = True
            elif not a.startswith("-"):
                positional.append(a)
        if not positional:
            return None
        cfg = C.load(cwd / positional[0], [a for a in positional[1:] if "=" in a])
        return "run", cwd / cfg.output.dir
    if cmd in ("run", "sweep") and rest and not rest[0].startswith("-"):
        path = cwd / rest[0]
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out = cwd / str(spec.get("output") or f"runs/{path.stem}")
        if cmd == "sweep":
            return "sweep", out
        if "--worker" in rest and rest.index("--worker") + 1 < len(rest):
            return "run", out / "runs" / rest[rest.index("--worker") + 1]
        return "experiment", out
    return None


class Processes:
    """What the tunelab processes on this machine work on: {(kind, resolved directory): pid}, from one
    scan of /proc (reused for `ttl` seconds; each process's command line is parsed once)."""

    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._at = 0.0
        self._targets: dict[tuple[str, str], int] = {}
        self._parsed: dict[tuple[int, int], tuple[str, Path] | None] = {}

    def _scan(self) -> None:
        me, targets, parsed = os.getpid(), {}, {}
        for entry in os.scandir(_PROC):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                raw = (_PROC / entry.name / "cmdline").read_bytes()
            except OSError:
                continue
            if b"tunelab" not in raw:
                continue
            start = start_time(pid)
            if start is None:
                continue
            key = (pid, start)
            if key in self._parsed:
                found = self._parsed[key]
            else:
                args = _tunelab_args(raw.decode("utf-8", "replace").rstrip("\0").split("\0"))
                try:
                    found = _output_of(args, Path(os.readlink(f"/proc/{pid}/cwd"))) if args else None
                except Exception:  # a config that no longer loads, a process gone: not ours to judge
                    found = None
            parsed[key] = found
            if found is not None:
                targets.setdefault((found[0], str(found[1].resolve())), pid)
        self._targets, self._parsed, self._at = targets, parsed, time.monotonic()

    def pid_for(self, kind: str, directory: Path) -> int | None:
        """A live tunelab process (not this one) working on `directory` as a run, experiment or sweep."""
        if time.monotonic() - self._at > self.ttl:
            self._scan()
        pid = self._targets.get((kind, str(Path(directory).resolve())))
        return pid if pid and start_time(pid) is not None else None
