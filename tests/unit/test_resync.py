# SPDX-License-Identifier: GPL-2.0-or-later
"""Resync planner (order, in-flight cap, writes during resync), token bucket (resync-rate), and
progress/ETA, all with a fake clock."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.bitmap import BLOCK_SIZE, Bitmap
from replica.resync import ProgressReport, ResyncPlanner, ResyncProgress, TokenBucket

K = BLOCK_SIZE
MiB = 1024 * 1024


def test_planner_linear_order_and_cap():
    bm = Bitmap(1000 * K)
    bm.set_bits(10, 20)
    bm.set_bits(500, 503)
    bm.set_bits(999, 1000)
    pl = ResyncPlanner(bm, max_request_bytes=4 * K, max_in_flight=2)
    assert pl.total_bytes == 14 * K
    first = pl.next_requests()
    assert first == [(10 * K, 4 * K), (14 * K, 4 * K)]
    assert pl.next_requests() == []                  # at capacity
    pl.complete(10 * K, 4 * K)
    assert pl.next_requests() == [(18 * K, 2 * K)]
    pl.complete(14 * K, 4 * K)
    pl.complete(18 * K, 2 * K)
    rest = pl.next_requests()
    assert rest == [(500 * K, 3 * K), (999 * K, K)]
    for off, length in rest:
        pl.complete(off, length)
    assert pl.is_done and bm.count() == 0 and pl.bytes_completed == 14 * K


def test_planner_last_partial_block():
    size = 10 * K + 123
    bm = Bitmap(size)
    bm.set_all()
    pl = ResyncPlanner(bm, max_request_bytes=MiB, max_in_flight=1)
    (req,) = pl.next_requests()
    assert req == (0, size)
    pl.complete(*req)
    assert pl.is_done and pl.total_bytes == size


def test_write_during_resync_keeps_block_dirty_and_resends():
    bm = Bitmap(100 * K)
    bm.set_bits(0, 8)
    pl = ResyncPlanner(bm, max_request_bytes=8 * K, max_in_flight=4)
    (req,) = pl.next_requests()
    assert pl.conflicts(3 * K, 10) and not pl.conflicts(50 * K, K)
    pl.note_write(3 * K, 10)                  # application write to a block in flight
    pl.complete(*req)
    assert bm.count() == 8                    # nothing cleared: the copy in flight was stale
    again = pl.next_requests()
    assert again == [(0, 8 * K)]              # sent again, reading the new data
    pl.complete(*again[0])
    assert pl.is_done


def test_failed_request_is_retried():
    bm = Bitmap(10 * K)
    bm.set_bits(2, 3)
    pl = ResyncPlanner(bm, max_in_flight=1)
    (req,) = pl.next_requests()
    pl.complete(*req, ok=False)
    assert not pl.is_done and pl.next_requests() == [req]
    with pytest.raises(ValueError, match="length mismatch"):
        pl.complete(req[0], req[1] + 1)
    with pytest.raises(ValueError, match="not in flight"):
        pl.complete(5 * K, K)


def test_bits_set_behind_the_cursor_get_a_second_pass():
    bm = Bitmap(100 * K)
    bm.set_bits(50, 51)
    pl = ResyncPlanner(bm, max_in_flight=1)
    (req,) = pl.next_requests()
    pl.complete(*req)
    bm.set_bits(5, 6)                          # dirtied again behind the cursor (e.g. failed write)
    assert pl.next_requests() == [(5 * K, K)]
    assert pl.passes == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 499), st.integers(1, 40)), max_size=15),
       st.integers(1, 6), st.integers(1, 64), st.lists(st.integers(0, 499), max_size=10))
def test_planner_clears_everything_exactly_once(runs, in_flight, max_blocks, writes):
    bm = Bitmap(500 * K)
    for a, n in runs:
        bm.set_bits(a, min(500, a + n))
    want = bm.count()
    pl = ResyncPlanner(bm, max_request_bytes=max_blocks * K, max_in_flight=in_flight)
    sent = 0
    writes = list(writes)
    for _ in range(10000):
        reqs = pl.next_requests()
        if not reqs and pl.in_flight == 0:
            break
        seen = set()
        for off, length in reqs:
            blocks = set(range(off // K, (off + length) // K))
            assert not blocks & seen
            seen |= blocks
            assert length <= max_blocks * K
            if writes:
                pl.note_write(writes.pop() * K, K)
        for off, length in reqs:
            sent += length
            pl.complete(off, length)
    assert pl.is_done and bm.count() == 0
    assert sent >= want * K


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
    runner = ResyncRunner(owner, engine, bm, rate_bps=0)
    runner.start()
    try:
        assert finished.wait(5.0), "the runner waited for bytes sent on a dead connection"
    finally:
        runner.stop()
    assert bm.count() == 0 and runner.bytes_sent == 3 * MiB
