"""Where tunelab keeps things on disk: its home (model and data caches) and atomic output writing.

`TUNELAB_HOME` (default `~/.cache/tunelab`) holds built models and tokenized-data caches.
Every output is written to a temporary sibling and renamed into place when complete, so a crash
never leaves a half-written directory that a later command would mistake for a finished one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def home() -> Path:
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab").expanduser()


def check_writable(out: Path, overwrite: bool) -> None:
    """Refuse to replace a user's non-empty output unless told to."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block finishes without error."""
    out = Path(out)
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
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
