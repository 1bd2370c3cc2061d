"""Where tunelab keeps things on disk, and the rules that keep it from destroying anything it did not write.

`TUNELAB_HOME` (default `~/.cache/tunelab`) holds built models and tokenized-data caches.

Every output directory a command creates (a run, a prepared data set, an export, an evaluation, an
experiment, a sweep) carries a marker file `.tunelab` naming its kind. `--overwrite` and every
cleanup remove a directory only when it is tunelab's own output of the same kind, and never the
working directory, a directory that contains it, one that holds an input of the command, or a
file (an output is a directory: a file at its path is refused, never turned into a directory). An
empty directory is simply used. Outputs are written to a temporary sibling and renamed into place
when complete, so a crash never leaves a half-written directory a later command would mistake for a
finished one; leftovers of an interrupted write (`.NAME.tmp-*`) are removed by the next start.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputExistsError, UserError

MARKER = ".tunelab"


def home() -> Path:
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab").expanduser()


def mark(directory: Path, kind: str) -> None:
    """Record that tunelab wrote `directory` as an output of `kind` (run, data, export, eval, ...)."""
    from . import __version__

    (Path(directory) / MARKER).write_text(json.dumps({"kind": kind, "tunelab": __version__,
                                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def marker_kind(directory: Path) -> str | None:
    """The kind of tunelab output `directory` is, or None when tunelab did not write it."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    text = ""
    for _ in range(40):  # empty: another process is between the open and the write of `mark` (two
        try:             # workers starting one sweep at once saw it and refused the other's output)
            text = path.read_text()
        except OSError:
            return None
        if text.strip():
            break
        time.sleep(0.025)
    try:
        return str(json.loads(text).get("kind"))
    except (ValueError, AttributeError):
        return None


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_removable(path: Path, kind: str, inputs: Iterable[str | Path] = ()) -> None:
    """Raise unless `path` may be deleted to be replaced by a new output of `kind`."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        raise OutputExistsError(f"{path} is the working directory or contains it; tunelab never deletes it. "
                                "Choose an output directory of its own")
    if p == Path.home().resolve() or p == Path(p.anchor):
        raise OutputExistsError(f"{path} is your home or the root directory; choose an output directory of its own")
    for item in inputs:
        q = Path(item).expanduser().resolve()
        if q == p or p in q.parents:
            raise OutputExistsError(f"{path} holds {item}, an input of this command; choose another output directory")
    have = marker_kind(p)
    if have is None:
        raise OutputExistsError(f"{path} holds files tunelab did not write (no {MARKER} marker), so --overwrite will "
                                "not delete it; delete it yourself or choose another output directory")
    if have != kind:
        raise OutputExistsError(f"{path} is a tunelab {have} directory, not a {kind}; --overwrite replaces only "
                                f"an output of the same kind. Choose another directory")


def check_writable(out: Path, overwrite: bool, *, kind: str, inputs: Iterable[str | Path] = ()) -> None:
    """Before any work: may `out` be written (absent, empty, or tunelab's own output with --overwrite)?"""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a directory; tunelab writes a directory there and never "
                                "replaces a file. Choose another path")
    if not out.exists() or _is_empty_dir(out):
        return
    if not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    check_removable(out, kind, inputs)


def remove_output(path: Path, kind: str, inputs: Iterable[str | Path] = ()) -> None:
    """Delete tunelab's own output `path` (checked by `check_removable`); an empty directory stays."""
    path = Path(path)
    if not path.exists() or _is_empty_dir(path):
        return
    check_removable(path, kind, inputs)
    shutil.rmtree(path)


def clean_leftovers(directory: Path) -> list[Path]:
    """Remove what interrupted atomic writes left in `directory` (`.NAME.tmp-*`, `.NAME.old-*`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    gone = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(".") and
            (".tmp-" in p.name or ".old-" in p.name)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


@contextlib.contextmanager
def no_space_message(what: Path) -> Iterator[None]:
    """Turn "No space left on device" into one message naming what was being written."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device while writing {what}: free some space (or choose "
                            "another output directory) and run the command again; nothing already saved was "
                            "lost") from None
        raise


@contextlib.contextmanager
def atomic_dir(out: Path, *, kind: str | None = None, overwrite: bool = False, owned: bool = False,
               inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block finishes without error.

    `kind` marks the result as a tunelab output of that kind. A user's output (`owned=False`) is
    checked with `check_writable`; `owned=True` is for places tunelab alone manages (a checkpoint
    inside a run, a run's model/), replaced without checks, as is anything under TUNELAB_HOME (caches).
    """
    out = Path(out)
    owned = owned or home().resolve() in out.resolve().parents  # caches: tunelab's alone
    if not owned:
        check_writable(out, overwrite, kind=kind or "output", inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with no_space_message(out):
            tmp.mkdir()
            yield tmp
            if kind:
                mark(tmp, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
