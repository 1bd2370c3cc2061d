"""Fit a memory budget: choose micro-batch, accumulation and gradient checkpointing with the estimator.

    plan = plan_for_budget(cfg, parse_budget("6GB"), device="cpu", seq_len=widest_row, baseline_mb=rss)
    cfg = plan.apply(cfg)            # training.batch_size, grad_accum, gradient_checkpointing
    print(plan.line("6GB")); plan.to_dict()   # what train prints and records in summary.json

The effective batch per process (batch_size x grad_accum) is the config's and stays so: the candidates
are the micro-batch sizes that divide it, each without and with gradient checkpointing, in the order
they are expected to run fastest: checkpointing off first (it recomputes every layer's forward, about a
third more FLOPs), then the largest micro-batch first (the same FLOPs in fewer, fuller calls; the
estimator's FLOP count cannot tell them apart, so this order is a rule, not a prediction). The plan is
the first candidate whose estimate x (1 + margin), plus what the process holds before the model loads
(`baseline_mb`: resident memory on CPU, 0 on a GPU), is within the budget. A larger budget therefore
never picks a later (slower) candidate. Selective checkpointing (only some layers) does not exist in
tunelab yet: checkpointing is off or every decoder layer.

Pure over `estimate_from_config`: no weights, no torch. Importing this module imports neither.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import MEMORY_EXAMPLE, memory_mb
from ..errors import ConfigError

MARGIN = 0.10  # the estimator's measured error on CPU (2026-12-07): mean 3.3%, 22 of 23 rows within 10%, QLoRA with
# checkpointing -16.7% (docs/estimate.md); with training.trim_heap all 23 within 10%
PLANNED = ("batch_size", "grad_accum", "gradient_checkpointing")
SELECTIVE = ("selective checkpointing (only some layers) is not in tunelab yet: checkpointing is off or every "
             "decoder layer")


def parse_budget(text: Any, what: str = "training.max_memory") -> float:
    """"6GB", "6GiB", "6000MB", "512MiB" -> MB (binary units: 6GB = 6,144 MB); else a ConfigError naming `what`."""
    mb = memory_mb(text) if text is not None else None
    if mb is None:
        raise ConfigError(f"{what}: expected {MEMORY_EXAMPLE}, got {text!r}")
    return mb


@dataclass
class Candidate:
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    estimate_mb: float
    needs_mb: float  # estimate x (1 + margin) + baseline: what the budget must hold
    step_time_s: float  # the estimator's time of one optimizer step (micro-batch time x accumulation)

    def label(self) -> str:
        return f"{self.batch_size} x {self.grad_accum}{' ckpt' if self.gradient_checkpointing else ''}"


@dataclass
class Plan:
    budget_mb: float
    margin: float
    baseline_mb: float
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    estimate_mb: float
    why: str
    candidates: list[Candidate]  # every candidate, in the order tried
    tried: int  # how many were tried before this one fitted (the chosen one included)
    given: tuple[int, int, bool]  # the config's own batch_size, grad_accum, gradient_checkpointing
    notes: list[str] = field(default_factory=list)

    def apply(self, cfg: Any) -> Any:
        """`cfg` with this plan's micro-batch, accumulation and checkpointing."""
        t = dataclasses.replace(cfg.training, batch_size=self.batch_size, grad_accum=self.grad_accum,
                                gradient_checkpointing=self.gradient_checkpointing)
        return dataclasses.replace(cfg, training=t)

    def line(self, budget_text: str) -> str:
        """One line for the log: the plan, its numbers and the candidates tried before it."""
        base = f" + {self.baseline_mb:,.0f} MB resident before the model" if self.baseline_mb else ""
        tried = ", ".join(f"{c.label()} {c.estimate_mb:,.0f} MB" for c in self.candidates[: self.tried - 1])
        return (f"--max-memory {budget_text}: micro-batch {self.batch_size} x {self.grad_accum} accumulation, "
                f"checkpointing {'on' if self.gradient_checkpointing else 'off'}; estimate {self.estimate_mb:,.0f} MB "
                f"+ {self.margin:.0%} margin{base} = {self.needs_mb:,.0f} MB under {self.budget_mb:,.0f} MB"
                + (f"; tried first: {tried}" if tried else ""))

    @property
    def needs_mb(self) -> float:
        return self.estimate_mb * (1 + self.margin) + self.baseline_mb

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["given"] = dict(zip(PLANNED, self.given))
        d["needs_mb"] = round(self.needs_mb, 1)
        for c in d["candidates"]:
            for k in ("estimate_mb", "needs_mb"):
                c[k] = round(c[k], 1)
            c["step_time_s"] = round(c["step_time_s"], 3)
        d["estimate_mb"], d["baseline_mb"] = round(d["estimate_mb"], 1), round(d["baseline_mb"], 1)
        return d


def candidates_of(batch_size: int, grad_accum: int) -> list[tuple[int, int, bool]]:
    """(micro-batch, accumulation, checkpointing) keeping batch_size x grad_accum, fastest expected first."""
    total = batch_size * grad_accum
    sizes = [b for b in range(total, 0, -1) if total % b == 0]
    return [(b, total // b, ckpt) for ckpt in (False, True) for b in sizes]


def plan_for_budget(cfg: Any, budget_mb: float, *, device: Any = "cpu", seq_len: int | None = None,
                    supervised_fraction: float | None = None, nproc: int = 1, strategy: str = "ddp",
                    margin: float = MARGIN, baseline_mb: float = 0.0,
                    keep: tuple[int, int, bool] | None = None) -> Plan:
    """The fastest expected (batch_size, grad_accum, gradient_checkpointing) of `cfg` whose estimated
    peak x (1 + `margin`) + `baseline_mb` is within `budget_mb` (MB). `seq_len`, `supervised_fraction`,
    `nproc`, `strategy` as for `estimate_from_config`. `keep`: a resumed run's plan, kept when it
    still fits (a plan chosen again could differ by a baseline's few MB); else a ConfigError.
    No candidate fits: a ConfigError naming the smallest estimate and what to change."""
    from .builder import estimate_from_config

    t = cfg.training
    cands = []
    for b, a, ckpt in candidates_of(t.batch_size, t.grad_accum):
        c = dataclasses.replace(cfg, training=dataclasses.replace(t, batch_size=b, grad_accum=a,
                                                                  gradient_checkpointing=ckpt))
        est = estimate_from_config(c, device=device, seq_len=seq_len, supervised_fraction=supervised_fraction,
                                   nproc=nproc, strategy=strategy)
        cands.append(Candidate(b, a, ckpt, est.peak_mb, est.peak_mb * (1 + margin) + baseline_mb,
                               est.step_time_s * a))
    given = (t.batch_size, t.grad_accum, t.gradient_checkpointing)
    if keep is not None:
        keep = tuple(keep)
        i = next((i for i, c in enumerate(cands) if (c.batch_size, c.grad_accum, c.gradient_checkpointing) == keep), None)
        if i is None:
            raise ConfigError(f"--resume: the run's plan {keep[0]} x {keep[1]} does not keep this config's "
                              f"batch_size x grad_accum ({t.batch_size} x {t.grad_accum})")
        if cands[i].needs_mb > budget_mb:
            raise ConfigError(f"--resume: the run was trained with the plan {cands[i].label()}, which no longer fits "
                              f"training.max_memory ({cands[i].estimate_mb:,.0f} MB + {margin:.0%} margin + "
                              f"{baseline_mb:,.0f} MB resident = {cands[i].needs_mb:,.0f} MB > {budget_mb:,.0f} MB); "
                              "resuming with another plan would change the run's saved config. Start a new run, or "
                              "free memory and resume again")
        fit = i
    else:
        fit = next((i for i, c in enumerate(cands) if c.needs_mb <= budget_mb), None)
    if fit is None:
        raise ConfigError(impossible(cfg, cands, budget_mb, margin=margin, baseline_mb=baseline_mb))
    c = cands[fit]
    plan = Plan(budget_mb=budget_mb, margin=margin, baseline_mb=baseline_mb, batch_size=c.batch_size,
                grad_accum=c.grad_accum, gradient_checkpointing=c.gradient_checkpointing, estimate_mb=c.estimate_mb,
                why="", candidates=cands, tried=fit + 1, given=given, notes=[SELECTIVE])
    plan.why = _why(plan, keep is not None)
    return plan


def _why(plan: Plan, kept: bool) -> str:
    c = plan.candidates[plan.tried - 1]
    if kept:
        return f"the resumed run's plan {c.label()}, which still fits"
    if plan.tried == 1:
        return ("the fastest candidate (largest micro-batch, no checkpointing) fits"
                + ("" if plan.given == (c.batch_size, c.grad_accum, c.gradient_checkpointing) else
                   f"; the config's {plan.given[0]} x {plan.given[1]} becomes {c.label()}"))
    first = plan.candidates[0]
    return (f"the fastest candidate {first.label()} needs {first.needs_mb:,.0f} MB; {c.label()} is the first of "
            f"{len(plan.candidates)} (no checkpointing first, then the largest micro-batch) within "
            f"{plan.budget_mb:,.0f} MB")


def impossible(cfg: Any, cands: list[Candidate], budget_mb: float, *, margin: float, baseline_mb: float) -> str:
    """The message of a budget no candidate fits: the smallest plan's numbers and what would shrink them."""
    small = min(cands, key=lambda c: c.needs_mb)
    base = f" + {baseline_mb:,.0f} MB resident before the model" if baseline_mb else ""
    hints = [f"a shorter data.max_length (now {cfg.data.max_length})"]
    method = cfg.method.name
    if method == "full":
        hints.append("method.name=lora (frozen base weights: no gradients or optimizer state for them)")
    if method in ("full", "lora", "lora_plus", "dora") and not cfg.model.from_scratch:
        hints.append("method.name=qlora (4-bit base weights)")
    if cfg.optimizer.name in ("adamw",):
        hints.append("optimizer.name=adamw_8bit or adafactor (smaller optimizer state)")
    if cfg.stage == "grpo":
        hints.append(f"fewer objective.num_generations (now {cfg.objective.num_generations})")
    return (f"training.max_memory (--max-memory): {budget_mb:,.0f} MB cannot hold this training: the smallest plan, micro-batch "
            f"{small.batch_size} x {small.grad_accum} accumulation with checkpointing "
            f"{'on' if small.gradient_checkpointing else 'off'}, is estimated at {small.estimate_mb:,.0f} MB "
            f"(+ {margin:.0%} margin{base} = {small.needs_mb:,.0f} MB). Raise the budget, or try "
            + "; ".join(hints) + " (tunelab estimate CONFIG --max-memory SIZE shows the plan)")


def as_planned(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """What `--resume` compares a planned run's saved config with: its planned keys taken from `current`
    when both ask for the same budget and the same batch_size x grad_accum (a resume may give the
    config before planning, or the run's own config.yaml). The plan itself is then checked again
    (`plan_for_budget(..., keep=...)`). Plain dicts, as `config.to_dict` writes them."""
    s, c = saved.get("training", {}), current.get("training", {})
    same = s.get("max_memory") and s.get("max_memory") == c.get("max_memory")
    if not same or s.get("batch_size", 0) * s.get("grad_accum", 0) != c.get("batch_size", 0) * c.get("grad_accum", 0):
        return saved
    return {**saved, "training": {**s, **{k: c[k] for k in PLANNED}}}
