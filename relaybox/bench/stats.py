"""Percentiles, latency summaries and stalls: the numbers every bench part reports."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any


def percentile(ordered: list[int], q: float) -> int:
    """The value at quantile ``q`` of an ascending, non-empty list (p50: the middle one;
    p99: the one 1 % of the values are above)."""
    if q == 0.5:
        return ordered[len(ordered) // 2]
    return ordered[max(0, int(len(ordered) * q) - 1)]



def ms_summary(values_ns: Iterable[int], prefix: str, *, mean: bool = False
               ) -> dict[str, float]:
    """``<prefix>_p50``, ``_p99``, ``_max`` (and ``_mean``) in milliseconds of durations
    in nanoseconds; all 0 when there are none."""
    ordered = sorted(values_ns) or [0]
    out = {f"{prefix}_p50": percentile(ordered, 0.5) / 1e6,
           f"{prefix}_p99": percentile(ordered, 0.99) / 1e6,
           f"{prefix}_max": ordered[-1] / 1e6}
    if mean:
        out[f"{prefix}_mean"] = statistics.fmean(ordered) / 1e6
    return out


STALL_NS = 10_000_000  # an event delivered more than 10 ms after it was sent


def stalls(sent_ns: list[int], lat_ns: list[int], t0_ns: int) -> list[dict[str, Any]]:
    """Runs of events delivered late (> 10 ms), in the order they were sent: when each
    run began (seconds into the run), how many events it held and the worst latency.
    Telling one long stall from many short ones is what the p99 alone cannot do."""
    runs: list[dict[str, Any]] = []
    prev_late = False
    for t, lat in sorted(zip(sent_ns, lat_ns, strict=True)):
        late = lat > STALL_NS
        if late and not prev_late:
            runs.append({"at_s": round((t - t0_ns) / 1e9, 3), "events": 0, "worst_ms": 0.0})
        if late:
            runs[-1]["events"] += 1
            runs[-1]["worst_ms"] = round(max(runs[-1]["worst_ms"], lat / 1e6), 2)
        prev_late = late
    return runs
