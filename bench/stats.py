"""Summaries of samples: a handful of quantiles instead of the raw numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# The points of the fine distribution kept for charts: every percent, then the tail.
FINE_POINTS: tuple[float, ...] = (*range(0, 100), 99.5, 99.9, 100.0)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; ``q`` in [0, 100]."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(seconds: Sequence[float], *, fine: bool = False) -> dict[str, object]:
    """Quantiles in milliseconds of durations given in seconds."""
    values = sorted(v * 1000.0 for v in seconds)
    if not values:
        return {"n": 0}
    out: dict[str, object] = {
        "n": len(values),
        "min": values[0],
        "p50": quantile(values, 50),
        "p90": quantile(values, 90),
        "p99": quantile(values, 99),
        "p999": quantile(values, 99.9),
        "max": values[-1],
        "mean": statistics.fmean(values),
    }
    if fine:
        out["cdf"] = [[q, quantile(values, q)] for q in FINE_POINTS]
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Min, median and max over rounds (NaNs dropped)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"min": math.nan, "median": math.nan, "max": math.nan, "n": 0}
    return {
        "min": min(clean),
        "median": statistics.median(clean),
        "max": max(clean),
        "n": len(clean),
    }
