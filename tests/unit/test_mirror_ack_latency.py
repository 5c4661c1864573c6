# SPDX-License-Identifier: GPL-2.0-or-later
"""The peer ack latency histogram C counts at ack time (rm_stats.peer_ack_us_log2), over the
C engine pair and over a peer played by the test that holds an ack for a known time; and the
in-flight counters status --statistics shows (upper-pending, lower-pending, unacked)."""
import os
import time

import pytest

from replica.ack_latency import cumulative_buckets, lower_bound_s, quantile_s, upper_bound_s
from replica.mirror import ACK_LATENCY_BUCKETS
from tests.unit.test_mirror_engine import DISC, FLUSH, REQUEST, REQUEST_MAGIC, WRITE, Session
from tests.unit.test_mirror_peer import HEADER, Pair, primary_hand_peer, read_frame, settled

__all__ = ["primary_hand_peer"]     # the fixture, used by name below


@pytest.mark.parametrize("protocol", ["A", "B", "C"])
def test_every_acked_write_is_counted_once_and_flushes_are_not(tmp_path, protocol):
    pair = Pair(tmp_path, protocol)
    try:
        s = Session(pair.primary)
        n = 120
        s.sock.sendall(b"".join(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, i * 4096, 4096) + os.urandom(4096)
                                for i in range(n)))
        assert sorted(s.reply()[1] for _ in range(n)) == list(range(n))
        s.send(FLUSH, cookie=999)
        assert s.reply()[1] == 999
        s.send(DISC)
        s.finish()
        settled(lambda: pair.primary.stats()["peer_pending"] == 0, "no write pending")
        stats = pair.primary.stats()
        buckets = stats["peer_ack_us_log2"]
        assert len(buckets) == ACK_LATENCY_BUCKETS
        assert stats["peer_acks"] == sum(buckets) == n              # the flush is not a write
        # every ack took some time, and less than the 5 s this test could have waited
        assert 0 < stats["peer_ack_ns_sum"] < n * 5_000_000_000
        assert sum(buckets[i] for i in range(ACK_LATENCY_BUCKETS) if upper_bound_s(i, ACK_LATENCY_BUCKETS) > 5) == 0
        # the secondary counts what it received: every frame's header and payload
        assert pair.secondary.stats()["peer_bytes_received"] >= n * (32 + 4096)
        assert pair.secondary.stats()["peer_acks"] == 0            # it sent no write
        # nothing is in flight once every request is answered
        settled(lambda: pair.secondary.stats()["peer_unacked"] == 0, "the secondary acked all")
        for eng in (pair.primary, pair.secondary):
            assert (eng.stats()["upper_pending"], eng.stats()["lower_pending"]) == (0, 0)
    finally:
        pair.close()


def test_an_ack_held_50ms_lands_in_the_50ms_bucket(primary_hand_peer):
    eng, _, peer = primary_hand_peer
    eng.al_set_hot(0)
    s = Session(eng)
    s.send(WRITE, 4096, 4096, os.urandom(4096), cookie=7)
    (magic, _, _, frame_id, offset, _, _), _ = read_frame(peer)
    held_from = time.monotonic()
    assert eng.stats()["upper_pending"] == 1        # written here, waiting for the peer
    time.sleep(0.05)
    peer.sendall(HEADER.pack(magic, 0x11, 0, frame_id, offset, 0, 0))   # WRITE_ACK
    assert s.reply()[1] == 7
    held_s = time.monotonic() - held_from
    assert eng.stats()["upper_pending"] == 0      # at least 50 ms; more on a loaded machine
    stats = eng.stats()
    buckets = stats["peer_ack_us_log2"]
    assert stats["peer_acks"] == 1 and sum(buckets) == 1
    i = buckets.index(1)
    # 50 ms = 50000 us has bit length 16: [32.8 ms, 65.5 ms); the bucket holds the latency
    # C measured, which lies between the hold and the hold plus the reply's trip back
    assert lower_bound_s(i) <= stats["peer_ack_ns_sum"] / 1e9 < upper_bound_s(i, ACK_LATENCY_BUCKETS)
    assert 0.05 <= stats["peer_ack_ns_sum"] / 1e9 <= held_s + 0.05
    assert i >= 16
    s.send(DISC)
    s.finish()


def test_quantiles_interpolate_inside_the_bucket():
    counts = [0] * ACK_LATENCY_BUCKETS
    assert quantile_s(counts, 0.5) is None
    counts[5] = 100                            # 100 samples in [16, 32) us
    assert quantile_s(counts, 0.5) == 24e-6
    assert quantile_s(counts, 0.99) == pytest.approx((16 + 16 * 0.99) * 1e-6)
    counts[10] = 1                             # one in [512, 1024) us: p99 still in bucket 5
    assert quantile_s(counts, 0.99) < 32e-6
    assert quantile_s(counts, 0.999) > 512e-6
    counts[-1] = 1000                          # mostly beyond the last bound: its lower bound
    assert quantile_s(counts, 0.99) == lower_bound_s(ACK_LATENCY_BUCKETS - 1)
    cum = cumulative_buckets(counts)
    assert cum[-1] == (float("inf"), 1101) and cum[4] == (16e-6, 0) and cum[5] == (32e-6, 100)
