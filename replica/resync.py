# SPDX-License-Identifier: GPL-2.0-or-later
"""Resync rate limiting and progress, pure (the caller passes `now`, a monotonic clock).

Owns:
- `TokenBucket`: DRBD's fixed-rate mode (`c-plan-ahead 0`, `resync-rate`, default 250 KiB/s):
  the caller calls `consume(bytes_actually_sent, now)` after each send and waits the returned
  delay before the next one. A burst of `burst_bytes` may go out at once; over any long
  interval the rate is at most rate_bps. rate 0 = unlimited.
- `ResyncProgress`: percent done, current rate (DRBD's sync marks: the rate over the last
  SYNC_MARKS x SYNC_MARK_STEP_S seconds), average rate and ETA, for `status` (`done:`) and
  events.
"""
from dataclasses import dataclass

SYNC_MARKS = 8
SYNC_MARK_STEP_S = 3.0
RESYNC_RATE_DEFAULT_BPS = 250 * 1024


class TokenBucket:
    """Token bucket in bytes: `TokenBucket(rate_bps, burst_bytes, now)`."""

    def __init__(self, rate_bps: float, burst_bytes: int, now: float):
        if rate_bps < 0 or burst_bytes < 0:
            raise ValueError(f"token bucket: negative rate or burst: {rate_bps} {burst_bytes}")
        self.rate_bps = rate_bps
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst_bytes),
                               self._tokens + (now - self._last) * self.rate_bps)
            self._last = now

    def consume(self, n: int, now: float) -> float:
        """Account `n` bytes actually sent at `now`; return seconds to wait before sending more."""
        if not self.rate_bps:
            return 0.0
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_bps

    def delay(self, now: float) -> float:
        """Seconds until sending is allowed again (0 if now)."""
        if not self.rate_bps:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_bps

    def set_rate(self, rate_bps: float, now: float) -> None:
        """Change the rate online (`resync-rate` via adjust/disk-options)."""
        self._refill(now)
        self.rate_bps = rate_bps


@dataclass(frozen=True, slots=True)
class ProgressReport:
    total_bytes: int
    done_bytes: int
    percent: float          # 0.00 .. 100.00, `done:` in status
    rate_bps: float         # over the recent sync marks
    avg_rate_bps: float     # since the start
    eta_s: float | None     # None while the rate is unknown (nothing sent yet)

    def status_text(self) -> str:
        """`done:12.34` as drbdsetup status prints it."""
        return f"done:{self.percent:.2f}"


class ResyncProgress:
    def __init__(self, total_bytes: int, now: float):
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self._start = now
        self._marks: list[tuple[float, int]] = [(now, 0)]

    def add(self, n: int, now: float) -> None:
        self.update(self.done_bytes + n, now)

    def update(self, done_bytes: int, now: float) -> None:
        self.done_bytes = min(done_bytes, self.total_bytes)
        if now - self._marks[-1][0] >= SYNC_MARK_STEP_S:
            self._marks.append((now, self.done_bytes))
            del self._marks[:-SYNC_MARKS]

    def report(self, now: float) -> ProgressReport:
        total, done = self.total_bytes, self.done_bytes
        percent = 100.0 if total == 0 else min(100.0, 100.0 * done / total)
        t0, d0 = self._marks[0]
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        avg = done / (now - self._start) if now > self._start else 0.0
        eta = (total - done) / rate if rate > 0 else (0.0 if done >= total else None)
        return ProgressReport(total, done, percent, rate, avg, eta)
