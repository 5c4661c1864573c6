# SPDX-License-Identifier: GPL-2.0-or-later
"""Resync pacing: the token bucket (resync-rate), progress/ETA with a fake clock, and the
ResyncRunner's acknowledgement accounting."""
import pytest

from replica.bitmap import BLOCK_SIZE, Bitmap
from replica.rate_control import ControllerSettings
from replica.resync import ProgressReport, ResyncProgress, TokenBucket

K = BLOCK_SIZE
MiB = 1024 * 1024


def test_token_bucket_rate_and_burst():
    tb = TokenBucket(rate_bps=20 * MiB, burst_bytes=MiB, now=0.0)
    assert tb.consume(MiB, 0.0) == 0.0                 # the burst goes out at once
    d = tb.consume(MiB, 0.0)
    assert d == pytest.approx(1 / 20)
    now, sent = 0.0, 2 * MiB
    for _ in range(200):                               # a sender that obeys the delays
        now += tb.delay(now)
        d = tb.consume(256 * 1024, now)
        sent += 256 * 1024
    now += d
    assert sent / now == pytest.approx(20 * MiB, rel=0.06)
    tb.set_rate(0, now)
    assert tb.consume(10 * MiB, now) == 0.0            # 0 = unlimited
    with pytest.raises(ValueError):
        TokenBucket(-1, 0, 0.0)


def test_token_bucket_idle_time_does_not_exceed_burst():
    tb = TokenBucket(rate_bps=MiB, burst_bytes=64 * 1024, now=0.0)
    assert tb.consume(64 * 1024, 100.0) == 0.0          # idle 100 s: still only one burst
    assert tb.consume(64 * 1024, 100.0) == pytest.approx(64 * 1024 / MiB)


def test_progress_percent_rate_eta():
    pr = ResyncProgress(total_bytes=100 * MiB, now=0.0)
    r0 = pr.report(0.0)
    assert r0.percent == 0.0 and r0.eta_s is None
    for t in range(1, 11):
        pr.add(5 * MiB, float(t))
    r = pr.report(10.0)
    assert r.percent == pytest.approx(50.0)
    assert r.rate_bps == pytest.approx(5 * MiB)
    assert r.avg_rate_bps == pytest.approx(5 * MiB)
    assert r.eta_s == pytest.approx(10.0)
    assert r.status_text() == "done:50.00"
    for t in range(11, 41):                              # slows down: the recent rate follows
        pr.add(MiB // 3, float(t))
    slow = pr.report(40.0)
    assert slow.rate_bps < 0.6 * MiB and slow.avg_rate_bps > slow.rate_bps
    done = ResyncProgress(0, 0.0).report(1.0)
    assert done == ProgressReport(0, 0, 100.0, 0.0, 0.0, 0.0)


class _FakeEngine:
    """C's resync counters, cumulative since the engine started: `lost` bytes went out on a
    connection that died and will never be acknowledged. The peer acknowledges every RS_DATA of
    this connection at once (C clears the bits on RS_DONE)."""

    def __init__(self, bitmap: Bitmap, lost: int):
        self.bitmap = bitmap
        self.sent, self.acked = lost, 0

    def stats(self) -> dict:
        return {"resync_bytes_sent": self.sent, "resync_bytes_acked": self.acked,
                "peer_connected": 1}

    def resync_send(self, offset: int, length: int) -> None:
        self.sent += length
        self.bitmap.clear_range(offset, length)
        self.acked += length


def test_resync_runner_waits_only_for_its_own_connection_s_acknowledgements():
    import threading

    from replica.peer_link import ResyncRunner
    bm = Bitmap(8 * MiB)
    bm.set_range(MiB, 3 * MiB)
    finished = threading.Event()
    owner = type("Owner", (), {"name": "r0", "resync_finished": lambda self, r: finished.set()})()
    engine = _FakeEngine(bm, lost=2 * MiB)
    runner = ResyncRunner(owner, engine, bm, ControllerSettings(plan_ahead_s=0, resync_rate_bps=100 * MiB))
    runner.start()
    try:
        assert finished.wait(5.0), "the runner waited for bytes sent on a dead connection"
    finally:
        runner.stop()
    assert bm.count() == 0 and runner.bytes_sent == 3 * MiB
