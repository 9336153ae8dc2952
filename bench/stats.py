"""Summaries of latency samples: percentiles by linear interpolation, as NumPy's default."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, interpolating between closest ranks.

    NaN when there are no samples, so an empty run shows as missing rather than as zero.
    """
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(samples_us: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max and mean of microsecond samples, in milliseconds."""
    if not samples_us:
        nan = math.nan
        return {"n": 0, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    return {
        "n": len(samples_us),
        "p50": percentile(samples_us, 50) / 1000,
        "p90": percentile(samples_us, 90) / 1000,
        "p99": percentile(samples_us, 99) / 1000,
        "max": max(samples_us) / 1000,
        "mean": sum(samples_us) / len(samples_us) / 1000,
    }
