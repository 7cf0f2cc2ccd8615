"""Budgets: estimate memory, disk and time before a stage runs, and measure them while it does.

`estimate` turns shapes into numbers without loading weights, `calibrate` measures speed on
this machine, `planner` turns estimates and limits into verdicts and options, and `measure`
records what really happened.
"""

from saelab.budget.calibrate import Calibration, calibrate_capture, machine_flops
from saelab.budget.estimate import (
    Estimate,
    ExtractWorkload,
    TokenStats,
    default_shard_size,
    estimate_extract,
)
from saelab.budget.measure import PeakSampler, dir_size, disk_free, process_peak_rss
from saelab.budget.planner import Budget, Limits, Verdict, auto_batch_size, judge, suggest_extract

__all__ = [
    "Budget",
    "Calibration",
    "Estimate",
    "ExtractWorkload",
    "Limits",
    "PeakSampler",
    "TokenStats",
    "Verdict",
    "auto_batch_size",
    "calibrate_capture",
    "default_shard_size",
    "dir_size",
    "disk_free",
    "estimate_extract",
    "judge",
    "machine_flops",
    "process_peak_rss",
    "suggest_extract",
]
