"""Every run checks the estimate: what `tunelab train` records next to its measured peak.

    base = baseline_mb(device)                     # just before the model loads
    est = estimate_from_config(cfg, device=..., supervised_fraction=prepared.stats["supervised_fraction"])
    ... train ...
    summary["estimate"] = summary_entry(est, peak_mb=peak, baseline_mb=base, kind=peak_kind)

On CPU the measured number is peak resident memory minus the resident memory just before the model
loads (imports, tokenizer and data are the baseline); on a GPU it is `torch.cuda.max_memory_allocated`,
whose baseline before the model is 0. The error is (estimate - measured) / measured.
"""
from __future__ import annotations

import os
from typing import Any


def current_rss_mb() -> float:
    """This process's resident memory now (not its peak), MB. Linux /proc; elsewhere the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if sys.platform == "darwin" else 2**10)


def baseline_mb(device: Any) -> float:
    """What the measured peak is counted from: resident memory now on CPU, 0 on a GPU."""
    return 0.0 if str(getattr(device, "type", device)).startswith("cuda") else current_rss_mb()


def summary_entry(est: Any, *, peak_mb: float, baseline_mb: float, kind: str,
                  peak_before_mb: float | None = None) -> dict[str, Any]:
    """The `estimate` object of summary.json: estimate, measured, their relative error, the breakdown.

    `peak_before_mb`: the process's peak when the baseline was taken. A CPU peak never goes down, so if
    the run never exceeded it (tokenizing a large data set in-process can peak higher than training a
    small model), the training's own peak is unknown and `measured_mb` is None."""
    unknown = peak_before_mb is not None and peak_mb <= peak_before_mb + 0.5
    measured = None if unknown else peak_mb - baseline_mb
    return {
        "estimate_mb": round(est.peak_mb, 1), "measured_mb": None if measured is None else round(measured, 1),
        "baseline_mb": round(baseline_mb, 1), "kind": kind,
        "error": round((est.peak_mb - measured) / measured, 4) if measured else None,
        "peak_phase": est.peak_phase, "components_mb": {k: round(v / 2**20, 1) for k, v in est.components.items()},
        "step_time_s_estimate": round(est.step_time_s, 3), "device": est.device,
    }
