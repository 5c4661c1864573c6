# SPDX-License-Identifier: GPL-2.0-or-later
"""Resync planning, rate limiting and progress, pure (the caller passes `now`, a monotonic clock).

Owns:
- `ResyncPlanner`: turns the dirty bitmap into resync requests in linear on-disk order (as DRBD
  does), at most `max_in_flight` at a time, each at most `max_request_bytes`; clears bits only
  when a request completes, and keeps a block dirty if an application write touched it while
  its resync request was in flight (the stale copy in flight may land after the new data, so
  the block is sent again in a later pass: never lost, never left stale).
- `TokenBucket`: DRBD's fixed-rate mode (`c-plan-ahead 0`, `resync-rate`, default 250 KiB/s):
  the caller calls `consume(bytes_actually_sent, now)` after each send and waits the returned
  delay before the next one. A burst of `burst_bytes` may go out at once; over any long
  interval the rate is at most rate_bps. rate 0 = unlimited.
- `ResyncProgress`: percent done, current rate (DRBD's sync marks: the rate over the last
  SYNC_MARKS x SYNC_MARK_STEP_S seconds), average rate and ETA, for `status` (`done:`) and
  events.

Request lifecycle::

    bitmap dirty ──next_requests()──> in flight ──complete(ok)──> bits cleared
                                          │ note_write() overlaps ──> complete() leaves bits set
                                          └ complete(ok=False) ─────> bits stay set, retried
    cursor reaches the device end with bits still set ──> next pass from offset 0
"""
from dataclasses import dataclass

from replica.bitmap import BLOCK_SIZE, Bitmap

SYNC_MARKS = 8
SYNC_MARK_STEP_S = 3.0
RESYNC_RATE_DEFAULT_BPS = 250 * 1024


class ResyncPlanner:
    def __init__(self, bitmap: Bitmap, *, max_request_bytes: int = 1024 * 1024,
                 max_in_flight: int = 8):
        if max_request_bytes < BLOCK_SIZE or max_in_flight < 1:
            raise ValueError(f"resync: bad limits: max_request_bytes={max_request_bytes} "
                             f"max_in_flight={max_in_flight}")
        self.bitmap = bitmap
        self.max_bits = max_request_bytes // BLOCK_SIZE
        self.max_in_flight = max_in_flight
        self._cursor = 0                                  # next bit to look at
        self._in_flight: dict[int, tuple[int, bool]] = {} # first bit -> (end bit, tainted)
        self.passes = 1
        self.bytes_requested = 0
        self.bytes_completed = 0
        self.total_bytes = bitmap.dirty_bytes()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def is_done(self) -> bool:
        return not self._in_flight and self.bitmap.next_set(0) >= self.bitmap.nbits

    def _busy_until(self, bit: int) -> int | None:
        for a, (b, _t) in self._in_flight.items():
            if a <= bit < b:
                return b
        return None

    def _next_in_flight_start(self, bit: int) -> int:
        return min((a for a in self._in_flight if a > bit), default=self.bitmap.nbits)

    def next_requests(self) -> list[tuple[int, int]]:
        """New (offset, length) requests to issue now, ascending; [] when at capacity/done."""
        out = []
        bm, n = self.bitmap, self.bitmap.nbits
        wrapped = False
        while len(self._in_flight) < self.max_in_flight:
            a = bm.next_set(self._cursor)
            if a >= n:
                if wrapped or self._cursor == 0:
                    break
                self._cursor, wrapped = 0, True      # bits left behind: start another pass
                self.passes += 1
                continue
            busy = self._busy_until(a)
            if busy is not None:
                self._cursor = busy
                continue
            b = min(bm.next_clear(a), a + self.max_bits, self._next_in_flight_start(a))
            self._in_flight[a] = (b, False)
            self._cursor = b
            off = a * BLOCK_SIZE
            length = min(b * BLOCK_SIZE, bm.data_size) - off
            self.bytes_requested += length
            out.append((off, length))
        return out

    def note_write(self, offset: int, length: int) -> None:
        """An application write hit [offset, offset+length): taint overlapping requests."""
        if length <= 0:
            return
        first, end = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1
        for a, (b, _t) in list(self._in_flight.items()):
            if a < end and first < b:
                self._in_flight[a] = (b, True)

    def conflicts(self, offset: int, length: int) -> bool:
        """Does [offset, offset+length) overlap a request in flight?"""
        if length <= 0:
            return False
        first, end = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1
        return any(a < end and first < b for a, (b, _t) in self._in_flight.items())

    def complete(self, offset: int, length: int, ok: bool = True) -> None:
        """A request finished (target wrote it). Clears its bits unless tainted or failed."""
        a = offset // BLOCK_SIZE
        entry = self._in_flight.pop(a, None)
        if entry is None:
            raise ValueError(f"resync: completion of a request not in flight: offset={offset} "
                             f"length={length}")
        b, tainted = entry
        end_off = min(b * BLOCK_SIZE, self.bitmap.data_size)
        if end_off - offset != length:
            raise ValueError(f"resync: completion length mismatch: offset={offset} "
                             f"length={length}, requested {end_off - offset}")
        if ok and not tainted:
            self.bitmap.clear_bits(a, b)
            self.bytes_completed += length
        else:
            self._cursor = min(self._cursor, a)    # still dirty: send it again, soon


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
