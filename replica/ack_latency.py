# SPDX-License-Identifier: GPL-2.0-or-later
"""The peer ack latency histogram C keeps (rm_stats.peer_ack_us_log2), read as numbers.

C counts, per resource, the time from handing a DATA/TRIM/ZEROES frame to the transport to
reading its RECV_ACK/WRITE_ACK, in RM_ACK_LATENCY_BUCKETS log2 buckets of whole microseconds::

    bucket 0        under 1 us
    bucket i        [2^(i-1), 2^i) us          upper bound ("le") 2^i us
    bucket N-1      2^(N-2) us and more        upper bound +Inf

Pure functions over the bucket list (from Engine.stats()): Prometheus buckets
(replica.metrics: replica_peer_ack_latency_seconds) and quantiles by linear interpolation
inside the bucket, as Prometheus's histogram_quantile() does (status --statistics: p50/p99).
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def upper_bound_s(i: int, nbuckets: int) -> float:
    """The `le` of bucket i in seconds (+Inf for the last)."""
    return math.inf if i == nbuckets - 1 else (1 << i) / 1e6


def lower_bound_s(i: int) -> float:
    return 0.0 if i == 0 else (1 << (i - 1)) / 1e6


def cumulative_buckets(counts: Sequence[int]) -> list[tuple[float, int]]:
    """[(le seconds, count of latencies <= le)], the last with le = +Inf (the total)."""
    out, total = [], 0
    for i, n in enumerate(counts):
        total += n
        out.append((upper_bound_s(i, len(counts)), total))
    return out


def quantile_s(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) in seconds, None with no sample. Inside bucket i the samples
    are taken as spread evenly over [lower, upper); in the last (unbounded) bucket the answer
    is its lower bound, as histogram_quantile() answers the highest finite bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = lower_bound_s(i)
            if i == len(counts) - 1:
                return lo
            return lo + (upper_bound_s(i, len(counts)) - lo) * (rank - seen) / n
        seen += n
    return lower_bound_s(len(counts) - 1)


def format_duration(s: float | None) -> str:
    """12us, 1.5ms, 2.0s; '-' without samples."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1.0:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.1f}s"
