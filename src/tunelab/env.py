"""The environment a result was produced in: tunelab's version and commit, library versions, device,
date. Recorded in every run's summary.json and in every report, so a study can be reproduced (or its
differences explained) from its report alone."""
from __future__ import annotations

import functools
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")


@functools.lru_cache(maxsize=1)
def _commit() -> str | None:
    """The git commit of the tunelab source, when it runs from a checkout (with '+dirty' if changed)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if sha and dirty else (sha or None)


def environment(device: str | None = None) -> dict[str, Any]:
    from . import __version__

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"tunelab": __version__, "commit": _commit(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": versions, "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
