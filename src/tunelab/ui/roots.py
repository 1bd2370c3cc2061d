"""The directories `tunelab ui` was given, and the one rule for every path a request names: it must lie
inside one of them once resolved.

A path travels between the browser and the board as an id, `<root index>/<path relative to the root>`
(`0/quickstart_study/runs/lora`). `Roots.path` turns an id back into a path and refuses, with a 404,
anything that would leave the roots: `..` parts, absolute paths, NUL bytes, and symbolic links whose
target lies outside (the path is resolved before it is checked, so `runs/link -> /etc` is refused
however it is spelled; a URL-encoded `%2e%2e%2f` arrives decoded as `../` and is refused the same way).
Files are read through `Roots.file`, which checks the file itself too: a `metrics.jsonl` that is a
link to `/etc/passwd` is never opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import ServeError


class Outside(ServeError):
    """A path that is not inside the given directories (answered as 404: nothing is revealed)."""


class Roots:
    def __init__(self, dirs: Iterable[str | Path]):
        self.given = [str(d) for d in dirs]
        self.dirs: list[Path] = []
        for d in self.given:
            p = Path(d).expanduser()
            if not p.is_dir():
                raise ServeError(f"{d}: not a directory; `tunelab ui` shows the runs under the directories it is given")
            self.dirs.append(p.resolve())

    def root_of(self, path: str | Path) -> int | None:
        """The index of the root that holds `path` (resolved), or None."""
        p = Path(path).resolve()
        for i, root in enumerate(self.dirs):
            if p == root or root in p.parents:
                return i
        return None

    def contains(self, path: str | Path) -> bool:
        return self.root_of(path) is not None

    def id_of(self, path: str | Path) -> str:
        p = Path(path).resolve()
        i = self.root_of(p)
        if i is None:
            raise Outside(f"{path} is not under the directories given to tunelab ui")
        rel = p.relative_to(self.dirs[i]).as_posix()
        return str(i) if rel == "." else f"{i}/{rel}"

    def label(self, path: str | Path) -> str:
        """How a person reads the path: the root as given on the command line, then the rest."""
        p = Path(path).resolve()
        i = self.root_of(p)
        if i is None:
            return str(path)
        rel = p.relative_to(self.dirs[i]).as_posix()
        return self.given[i].rstrip("/") + ("" if rel == "." else "/" + rel)

    def path(self, ident: str) -> Path:
        """The path an id names, resolved; `Outside` unless it lies inside the roots."""
        if not isinstance(ident, str) or not ident or "\x00" in ident or "\\" in ident:
            raise Outside("not a path id")
        head, _, rel = ident.partition("/")
        if not head.isdigit() or int(head) >= len(self.dirs):
            raise Outside(f"no directory number {head!r}")
        parts = [x for x in rel.split("/") if x not in ("", ".")]
        if rel.startswith("/") or ".." in parts:
            raise Outside("'..' and absolute paths are not allowed")
        root = self.dirs[int(head)]
        p = root.joinpath(*parts).resolve()  # symbolic links followed, then checked
        if not (p == root or root in p.parents):
            raise Outside(f"{ident} leads outside the directories given to tunelab ui")
        return p

    def file(self, directory: Path, name: str) -> Path | None:
        """`directory/name` when it is a regular file inside the roots (links resolved), else None."""
        p = Path(directory) / name
        if not p.is_file():
            return None
        return p.resolve() if self.contains(p) else None

    def all_inside(self, directory: Path) -> bool:
        """True when no file or link under `directory` leads outside the roots (checked before a model
        directory is loaded, which opens every file in it)."""
        for base, dirs, files in os.walk(directory, followlinks=False):
            for name in dirs + files:
                p = Path(base) / name
                if p.is_symlink() and not self.contains(p):
                    return False
        return self.contains(directory)

    def resolve_user_path(self, value: str, cwd: Path) -> Path | None:
        """A form value that names an existing path (relative to `cwd` or absolute): that path, which must
        lie inside the roots (`Outside` otherwise). None when it names no path (a built-in name, a hub id)."""
        raw = Path(value).expanduser()
        p = raw if raw.is_absolute() else cwd / raw
        if not (p.exists() or p.is_symlink()):
            if raw.is_absolute() or value.startswith(("./", "../")):
                raise Outside(f"{value}: no such path")
            return None
        if not self.contains(p):
            raise Outside(f"{value} is outside the directories given to tunelab ui; the board only reads and "
                          f"writes under {', '.join(self.given)}")
        return p.resolve()
