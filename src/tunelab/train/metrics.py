"""Metrics of a run: `metrics.jsonl` (the contract read by reports), TensorBoard, optional W&B/SwanLab.

Each line of `metrics.jsonl` is one JSON object with at least `step`, `epoch`, `split`
(`train`/`val`), `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`, `peak_mem_mb`, `elapsed_s`.
Peak memory comes from `tunelab.memory` (one measurement for every command).

On resume the rows logged after the restored checkpoint are dropped (the resumed run logs those
steps again), a last line cut short by a kill is tolerated, and W&B/SwanLab continue the run they
started: its id is kept in the run directory (`external.json`).
"""
from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import ConfigError
from ..paths import no_space_message

EXTERNAL = ("wandb", "swanlab")


def check_external(report_to: list[str]) -> None:
    """Before anything loads: every package named in output.report_to is installed."""
    for name in report_to:
        if name not in EXTERNAL:
            raise ConfigError(f"config key 'output.report_to': unknown '{name}'; known: {', '.join(EXTERNAL)} "
                              "(TensorBoard is always written)")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"config key 'output.report_to' has '{name}', which is not installed: "
                              f"`pip install {name}`, or remove it")


class MetricsLogger:
    """Writes metrics on the main process only; other processes get a logger that does nothing."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, report_to: list[str] = (), config: dict | None = None,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / rundir.METRICS
        self.tb = None
        self.extra: list[Any] = []
        if not enabled:
            return
        if resume_step is not None:
            # drop what was logged after the checkpoint (all of it when no checkpoint was reached):
            # the resumed run logs those steps again
            rundir.trim_rows(self.path, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / rundir.TENSORBOARD))
        except ImportError:  # tensorboard is optional
            self.tb = None
        ids = rundir.read_json(Path(run_dir) / rundir.EXTERNAL) or {}
        for name in report_to:
            ids.setdefault(name, uuid.uuid4().hex[:12])
            self.extra.append(_external(name, Path(run_dir), config or {}, ids[name]))
        if report_to:
            (Path(run_dir) / rundir.EXTERNAL).write_text(json.dumps(ids, indent=2))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with no_space_message(self.path), self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        split = row.get("split", "train")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{split}/{k}", v, row["step"])
        for ext in self.extra:
            ext.log({f"{split}/{k}": v for k, v in scalars.items()}, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for ext in self.extra:
            ext.finish()


def _external(name: str, run_dir: Path, config: dict, run_id: str) -> Any:
    """W&B or SwanLab, continuing the run with this id when it exists (a resumed tunelab run)."""
    mod = __import__(name)
    if name == "wandb":
        mod.init(project="tunelab", name=run_dir.name, config=config, dir=str(run_dir), id=run_id, resume="allow")
    else:
        mod.init(project="tunelab", experiment_name=run_dir.name, config=config, logdir=str(run_dir), id=run_id,
                 resume="allow")
    return mod
