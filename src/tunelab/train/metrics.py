"""Metrics of a run: `metrics.jsonl` (the contract read by reports), TensorBoard, optional W&B/SwanLab.

Each line of `metrics.jsonl` is one JSON object with at least `step`, `epoch`, `split`
(`train`/`val`), `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`, `peak_mem_mb`, `elapsed_s`.
Peak memory comes from `tunelab.memory` (one measurement for every command).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import rundir


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
        if resume_step is not None and self.path.exists():
            # drop what was logged after the checkpoint: the resumed run logs those steps again
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None
        for name in report_to:
            self.extra.append(_external(name, run_dir, config or {}))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
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


def _external(name: str, run_dir: Path, config: dict) -> Any:
    """W&B or SwanLab when asked for and installed; never required."""
    if name not in ("wandb", "swanlab"):
        raise ValueError(f"unknown report_to '{name}'; known: wandb, swanlab (TensorBoard is always written)")
    try:
        mod = __import__(name)
    except ImportError:
        raise ValueError(f"output.report_to has '{name}' but it is not installed: pip install {name}") from None
    mod.init(project="tunelab", name=Path(run_dir).name, config=config, dir=str(run_dir))
    return mod
