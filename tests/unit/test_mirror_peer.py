# SPDX-License-Identifier: GPL-2.0-or-later
"""The C peer link: two engines joined by a socketpair, driven through the NBD loop.

Primary and Secondary each get a temp file; writes enter the Primary through real NBD requests
(the Session helper) and must reach the Secondary's file per protocol; a broken link must mark
the unacknowledged blocks in the shared bitmap, and resync must clear them on both sides.
"""
import errno
import os
import select
import socket
import struct
import threading
import time

import pytest

from replica.bitmap import Bitmap
from replica.mirror import Engine
from scripts.waiting import wait_for
from tests.unit.test_mirror_engine import DISC, FLUSH, FUA, READ, REQUEST, REQUEST_MAGIC, WRITE, Session

SIZE = 8 << 20
HEADER = struct.Struct(">IHHQQII")


def make_engine(tmp_path, name, read_only=False):
    fd = os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    eng = Engine(fd, SIZE, read_only=read_only)
    bitmap = Bitmap(SIZE)
    eng.set_bitmap(bitmap)
    return eng, fd, bitmap


class Pair:
    def __init__(self, tmp_path, protocol="C"):
        self.tmp = tmp_path
        self.primary, self.pfd, self.pbm = make_engine(tmp_path, "primary")
        self.secondary, self.sfd, self.sbm = make_engine(tmp_path, "secondary", read_only=True)
        self.protocol = protocol
        self.socks = []
        self.connect()

    def connect(self):
        a, b = socket.socketpair()
        self.socks += [a, b]
        self.primary.peer_attach(a.fileno(), self.protocol)
        self.secondary.peer_attach(b.fileno(), self.protocol)

    def disconnect(self):
        self.primary.peer_detach()
        self.secondary.peer_detach()

    def close(self):
        for eng in (self.primary, self.secondary):
            eng.close()
        for s in self.socks:
            s.close()
        os.close(self.pfd)
        os.close(self.sfd)

    def disk(self, name):
        return (self.tmp / name).read_bytes()


@pytest.fixture(params=["A", "B", "C"])
def pair(tmp_path, request):
    p = Pair(tmp_path, request.param)
    yield p
    p.close()


@pytest.fixture
def pair_c(tmp_path):
    p = Pair(tmp_path, "C")
    yield p
    p.close()


def settled(pred, what: str):
    """The C threads are quick: wait up to 5 s, polling every 5 ms."""
    return wait_for(pred, what, 5.0, interval_s=0.005)


def test_writes_reach_the_secondary_under_every_protocol(pair):
    s = Session(pair.primary)
    blocks = {i: os.urandom(4096) for i in range(0, 200, 3)}
    s.sock.sendall(b"".join(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, i * 4096, 4096) + data
                            for i, data in blocks.items()))
    assert sorted(s.reply()[1] for _ in blocks) == sorted(blocks)
    s.send(FLUSH, cookie=999)
    assert s.reply()[1] == 999
    s.send(DISC)
    s.finish()
    settled(lambda: pair.secondary.stats()["peer_frames_applied"] >= len(blocks), "pair.secondary.stats()['peer_frames_applied'] >= len(blocks)")
    settled(lambda: pair.primary.stats()["peer_pending"] == 0, "pair.primary.stats()['peer_pending'] == 0")
    assert pair.disk("primary") == pair.disk("secondary")
    assert pair.pbm.count() == 0


def test_protocol_c_ack_means_written_on_the_secondary(pair_c):
    s = Session(pair_c.primary)
    for i in range(50):
        data = os.urandom(8192)
        s.send(WRITE, i * 65536, len(data), data, flags=FUA, cookie=i)
        assert s.reply() == (0, i, b"")
        # No waiting: under protocol C the answer comes only after the peer wrote it.
        assert os.pread(pair_c.sfd, len(data), i * 65536) == data
    s.send(DISC)
    s.finish()


def test_large_writes_and_trim_zero_are_mirrored(pair_c):
    s = Session(pair_c.primary)
    big = os.urandom(3 << 20)
    s.send(WRITE, 1 << 20, len(big), big, cookie=1)
    assert s.reply() == (0, 1, b"")
    s.send(6, 1 << 20, 65536, cookie=2)           # WRITE_ZEROES
    assert s.reply() == (0, 2, b"")
    s.send(4, (2 << 20), 65536, cookie=3)         # TRIM
    assert s.reply() == (0, 3, b"")
    s.send(DISC)
    s.finish()
    assert os.pread(pair_c.sfd, 65536, 1 << 20) == bytes(65536)
    assert pair_c.disk("primary") == pair_c.disk("secondary")


def test_secondary_refuses_frontend_writes(pair_c):
    s = Session(pair_c.secondary)
    s.send(WRITE, 0, 4, b"nope", cookie=1)
    assert s.reply()[0] == 1  # EPERM
    s.send(READ, 0, 4, cookie=2)
    assert s.reply(4)[0] == 0
    s.send(DISC)
    s.finish()


def test_lost_link_marks_dirty_and_resync_clears_both_sides(pair_c):
    s = Session(pair_c.primary)
    s.send(WRITE, 0, 4096, b"a" * 4096, cookie=1)
    assert s.reply()[0] == 0
    pair_c.disconnect()
    events = pair_c.primary.next_events()
    assert any(e.type == "peer_lost" for e in events)
    # Disconnected Primary keeps serving; the blocks it changes are out of sync.
    s.send(WRITE, 5 * 4096, 3 * 4096, b"b" * 3 * 4096, cookie=2)
    assert s.reply()[0] == 0
    s.send(WRITE, 1 << 20, 100, b"c" * 100, cookie=3)
    assert s.reply()[0] == 0
    assert pair_c.pbm.count() == 4
    assert list(pair_c.pbm.iter_dirty_extents(1 << 20)) == [(5 * 4096, 3 * 4096), (1 << 20, 4096)]
    assert pair_c.disk("primary") != pair_c.disk("secondary")
    pair_c.connect()
    pair_c.sbm.merge(pair_c.pbm)   # the handshake's bitmap exchange, done by hand here
    for offset, length in pair_c.pbm.iter_dirty_extents(1 << 20):
        pair_c.primary.resync_send(offset, length)
    settled(lambda: pair_c.pbm.count() == 0 and pair_c.sbm.count() == 0, "pair_c.pbm.count() == 0 and pair_c.sbm.count() == 0")
    st = pair_c.primary.stats()
    assert st["resync_bytes_sent"] == st["resync_bytes_acked"] == 4 * 4096
    assert pair_c.secondary.stats()["resync_bytes_received"] == 4 * 4096
    assert pair_c.disk("primary") == pair_c.disk("secondary")
    s.send(DISC)
    s.finish()


def test_pending_writes_are_marked_dirty_when_the_peer_vanishes(tmp_path):
    primary, pfd, pbm = make_engine(tmp_path, "p")
    a, b = socket.socketpair()
    primary.peer_attach(a.fileno(), "C")
    try:
        s = Session(primary)
        s.send(WRITE, 8192, 4096, b"x" * 4096, cookie=7)
        # Nobody on the other end acks: the request waits for the peer...
        assert select.select([s.sock], [], [], 0.3)[0] == []
        assert primary.stats()["peer_pending"] == 1
        b.close()  # ...until the peer is gone: then it completes locally, marked out of sync
        assert s.reply() == (0, 7, b"")
        assert pbm.test_bit(2) and pbm.count() == 1
        s.send(DISC)
        s.finish()
    finally:
        primary.close()
        a.close()
        os.close(pfd)


def test_garbage_from_peer_is_a_protocol_event_not_a_crash(tmp_path):
    primary, pfd, _ = make_engine(tmp_path, "p")
    a, b = socket.socketpair()
    primary.peer_attach(a.fileno(), "C")
    try:
        b.sendall(b"\x00" * 64)
        settled(lambda: primary.stats()["peer_connected"] == 0, "primary.stats()['peer_connected'] == 0")
        events = primary.next_events()
        assert [e.type for e in events] == ["peer_protocol"]
        primary.pwrite(b"still fine", 0)
    finally:
        primary.close()
        a.close()
        b.close()
        os.close(pfd)


def test_data_frame_to_a_primary_is_refused(tmp_path):
    primary, pfd, _ = make_engine(tmp_path, "p")
    a, b = socket.socketpair()
    primary.peer_attach(a.fileno(), "C")
    try:
        b.sendall(HEADER.pack(0x52504C31, 0x01, 0, 1, 0, 4, 0) + b"evil")
        settled(lambda: primary.stats()["peer_connected"] == 0, "primary.stats()['peer_connected'] == 0")
        assert primary.next_events()[0].type == "peer_protocol"
        assert primary.pread(4, 0) == bytes(4)
    finally:
        primary.close()
        a.close()
        b.close()
        os.close(pfd)


def test_control_frames_pass_through_in_order(pair_c):
    frames = [HEADER.pack(0x52504C31, 0x45, 0, i, 0, 5, 0) + b"hello" for i in range(3)]
    for f in frames:
        pair_c.primary.send_control(f)
    seen = []
    settled(lambda: seen.extend(e for e in pair_c.secondary.next_events() if e.type == "peer_control")
            or len(seen) == 3, "3 peer_control events")
    assert [(e.offset, e.length) for e in seen] == [(0x45, 5)] * 3
    assert [pair_c.secondary.recv_control() for _ in frames] == frames
    assert pair_c.secondary.recv_control() is None
    with pytest.raises(OSError):
        pair_c.primary.send_control(b"short")


def test_activity_log_gates_writes_to_cold_extents(pair_c):
    pair_c.primary.enable_al()
    pair_c.primary.al_set_hot(0)
    s = Session(pair_c.primary)
    s.send(WRITE, 4096, 4, b"warm", cookie=1)
    assert s.reply()[1] == 1  # extent 0 is hot: no wait
    s.send(WRITE, (4 << 20) + 4096, 4, b"cold", cookie=2)
    settled(lambda: any(e.type == "al_miss" and e.offset == 1 for e in pair_c.primary.next_events()), "any(e.type == 'al_miss' and e.offset == 1 for e in pair_c.primary.next_events())")
    assert select.select([s.sock], [], [], 0.2)[0] == []  # still waiting for the AL transaction
    assert os.pread(pair_c.pfd, 4, (4 << 20) + 4096) == bytes(4)
    pair_c.primary.al_set_hot(1)
    assert s.reply()[1] == 2
    assert pair_c.primary.stats()["al_misses"] == 1
    s.send(DISC)
    s.finish()


def test_ping_refreshes_last_rx(pair_c):
    before = pair_c.primary.stats()["peer_last_rx_ns"]
    time.sleep(0.01)
    pair_c.primary.peer_ping()
    settled(lambda: pair_c.primary.stats()["peer_last_rx_ns"] > before, "pair_c.primary.stats()['peer_last_rx_ns'] > before")


def test_concurrent_connections_and_resync_keep_disks_identical(pair_c):
    """Application writes race with resync of the same blocks: the newest version must win."""
    pair_c.disconnect()
    pair_c.primary.next_events()
    pair_c.primary.pwrite(os.urandom(SIZE), 0)
    pair_c.pbm.set_range(0, SIZE)
    pair_c.connect()
    pair_c.sbm.merge(pair_c.pbm)
    stop = threading.Event()

    def writer(seed):
        s = Session(pair_c.primary)
        i = 0
        while not stop.is_set():
            off = ((seed * 7919 + i * 104729) % (SIZE // 4096)) * 4096
            s.send(WRITE, off, 4096, os.urandom(4096), cookie=i)
            assert s.reply()[0] == 0
            i += 1
        s.send(DISC)
        s.finish()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for offset, length in list(pair_c.pbm.iter_dirty_extents(256 * 1024)):
        pair_c.primary.resync_send(offset, length)
    stop.set()
    for t in threads:
        t.join()
    settled(lambda: pair_c.pbm.count() == 0 and pair_c.primary.stats()["peer_pending"] == 0, "pair_c.pbm.count() == 0 and pair_c.primary.stats()['peer_pending'] == 0")
    assert pair_c.disk("primary") == pair_c.disk("secondary")


def test_large_writes_while_disconnected_are_marked_dirty(pair_c):
    pair_c.disconnect()
    s = Session(pair_c.primary)
    data = os.urandom(1 << 20)
    s.send(WRITE, 2 << 20, len(data), data, cookie=1)  # spliced straight to the disk
    assert s.reply() == (0, 1, b"")
    s.send(DISC)
    s.finish()
    assert os.pread(pair_c.pfd, len(data), 2 << 20) == data
    assert list(pair_c.pbm.iter_dirty_extents(4 << 20)) == [(2 << 20, 1 << 20)]


def read_frame(sock):
    """One frame from the Primary, read by hand: (header fields, payload)."""
    head = b""
    while len(head) < HEADER.size:
        head += sock.recv(HEADER.size - len(head))
    fields = HEADER.unpack(head)
    payload = b""
    while len(payload) < fields[5]:
        payload += sock.recv(fields[5] - len(payload))
    return fields, payload


@pytest.fixture
def primary_hand_peer(tmp_path):
    """A Primary under protocol C whose peer is this test: nothing is acked until we say so."""
    eng, fd, bitmap = make_engine(tmp_path, "primary")
    a, b = socket.socketpair()
    eng.peer_attach(a.fileno(), "C")
    eng.enable_al()
    yield eng, bitmap, b
    eng.close()
    a.close()
    b.close()
    os.close(fd)


def test_al_eviction_waits_for_the_writes_in_flight_to_its_extent(primary_hand_peer):
    """DRBD keeps an extent in the AL while writes to it are in flight: were it dropped first,
    a crash of this Primary could leave a block written here, never acked by the peer, outside
    both the AL and the bitmap."""
    eng, _, peer = primary_hand_peer
    eng.al_set_hot(0)
    s = Session(eng)
    s.send(WRITE, 4096, 4, b"late", cookie=7)
    (magic, ptype, _, frame_id, offset, length, _), payload = read_frame(peer)
    assert (ptype, offset, payload) == (0x01, 4096, b"late")

    assert eng.al_evict(0, timeout_s=0.1) is False           # the write is still in flight
    evicted = []
    waiter = threading.Thread(target=lambda: evicted.append(eng.al_evict(0, timeout_s=5)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()
    peer.sendall(HEADER.pack(magic, 0x11, 0, frame_id, offset, 0, 0))   # WRITE_ACK
    waiter.join(5)
    assert evicted == [True]
    assert s.reply()[1] == 7

    # Cold now: the next write to extent 0 waits for a new AL transaction.
    s.send(WRITE, 8192, 4, b"next", cookie=8)
    settled(lambda: any(e.type == "al_miss" and e.offset == 0 for e in eng.next_events()), "any(e.type == 'al_miss' and e.offset == 0 for e in eng.next_events())")
    assert select.select([s.sock], [], [], 0.1)[0] == []
    eng.al_set_hot(0)
    (_, _, _, frame_id, offset, _, _), _ = read_frame(peer)
    peer.sendall(HEADER.pack(magic, 0x11, 0, frame_id, offset, 0, 0))
    assert s.reply()[1] == 8
    s.send(DISC)
    s.finish()


def test_al_eviction_after_link_loss_finds_the_write_marked_out_of_sync(primary_hand_peer):
    eng, bitmap, peer = primary_hand_peer
    eng.al_set_hot(1)
    s = Session(eng)
    s.send(WRITE, (4 << 20) + 512, 3, b"abc", cookie=9)
    read_frame(peer)
    assert eng.al_evict(1, timeout_s=0.1) is False
    peer.shutdown(socket.SHUT_RDWR)                            # the link dies: the sweep ends it
    assert eng.al_evict(1, timeout_s=5) is True
    assert s.reply()[1] == 9
    settled(lambda: eng.stats()["peer_connected"] == 0, "eng.stats()['peer_connected'] == 0")
    assert bitmap.count() == 1                                # its block, before the AL lets go
    s.send(DISC)
    s.finish()


def test_overlapping_writes_from_several_connections_reach_the_peer_in_disk_order(pair_c):
    """Four connections keep rewriting the same four blocks with pipelined small writes, trims
    and zeroes: the Secondary ends with exactly the Primary's bytes. (engine_submit does each
    local write and queues its frame under one lock so that the wire order is the disk order;
    the race this closes lasts well under a microsecond, so this stress test guards the path
    rather than catching the old code in the act.)"""
    from tests.unit.test_mirror_engine import TRIM, WRITE_ZEROES
    stop = threading.Event()
    errors = []

    def client(n):
        s = Session(pair_c.primary)
        payloads = [os.urandom(4096) for _ in range(16)]
        i = 0
        try:
            while not stop.is_set():
                for k in range(64):            # pipelined: the C loop runs them back to back
                    off = (i + k + n) % 4 * 4096
                    kind = (i + k * 7 + n) % 10
                    if kind == 0:
                        s.send(TRIM, off, 4096, cookie=k)
                    elif kind == 1:
                        s.send(WRITE_ZEROES, off, 4096, cookie=k)
                    else:
                        s.send(WRITE, off, 4096, payloads[(i + k) % 16], cookie=k)
                for _ in range(64):
                    if s.reply()[0] != 0:
                        errors.append((n, i))
                i += 64
        finally:
            s.send(DISC)
            s.finish()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    settled(lambda: pair_c.primary.stats()["peer_pending"] == 0, "pair_c.primary.stats()['peer_pending'] == 0")
    assert pair_c.pbm.count() == 0
    assert pair_c.disk("primary")[:4 * 4096] == pair_c.disk("secondary")[:4 * 4096]


def send_slowly(sock, data, piece=16384, pause_s=0.002):
    """A sender slower than the receiver: the receiver's spin before sleeping finds nothing."""
    for at in range(0, len(data), piece):
        sock.sendall(data[at:at + piece])
        time.sleep(pause_s)


def test_large_payloads_that_trickle_in_are_applied_whole_on_both_sides(pair_c):
    """Large payloads are spliced from the socket while they arrive; a slow client (here 16 KiB
    every 2 ms, so every wait outlasts the receiver's spin) must change nothing but the speed."""
    s = Session(pair_c.primary)
    for cookie, offset in enumerate((0, 3 << 20, 5 << 20)):
        data = os.urandom(512 << 10)
        send_slowly(s.sock, REQUEST.pack(REQUEST_MAGIC, 0, WRITE, cookie, offset, len(data)) + data)
        assert s.reply() == (0, cookie, b"")
        assert os.pread(pair_c.sfd, len(data), offset) == data   # protocol C: on the peer now
    fast = os.urandom(2 << 20)
    s.send(WRITE, 1 << 20, len(fast), fast, cookie=9)
    assert s.reply() == (0, 9, b"")
    s.send(DISC)
    s.finish()
    assert pair_c.disk("primary") == pair_c.disk("secondary")


def test_secondary_applies_a_data_frame_that_trickles_in(tmp_path):
    """The Secondary's receiver splices a large DATA payload to its disk while it arrives."""
    eng, fd, _ = make_engine(tmp_path, "secondary", read_only=True)
    a, b = socket.socketpair()
    eng.peer_attach(a.fileno(), "C")
    try:
        data = os.urandom(768 << 10)
        send_slowly(b, HEADER.pack(0x52504C31, 0x01, 0, 7, 1 << 20, len(data), 0) + data)
        b.settimeout(10)
        fields, _ = read_frame(b)
        assert (fields[1], fields[3]) == (0x11, 7)          # WRITE_ACK for id 7
        assert os.pread(fd, len(data), 1 << 20) == data
    finally:
        eng.close()
        a.close()
        b.close()
        os.close(fd)


def test_a_client_vanishing_mid_payload_leaves_both_disks_equal(pair_c):
    """What of a torn large write reached the Primary's disk is sent to the peer too."""
    s = Session(pair_c.primary)
    s.sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 1, 1 << 20, 1 << 20) + b"z" * 1000)
    time.sleep(0.05)   # the Primary splices what has arrived to its disk
    s.sock.sendall(b"z" * 300_000)
    s.sock.shutdown(socket.SHUT_WR)
    assert s.finish().reason == "protocol error"
    settled(lambda: pair_c.primary.stats()["peer_pending"] == 0, "pair_c.primary.stats()['peer_pending'] == 0")
    assert os.pread(pair_c.sfd, 301_000, 1 << 20) == b"z" * 301_000
    assert pair_c.disk("primary") == pair_c.disk("secondary")
    assert pair_c.pbm.count() == 0


def test_ping_never_waits_behind_a_send_blocked_on_a_dead_peer(primary_hand_peer):
    """A resync chunk to a peer that stopped reading blocks in sendmsg with the send lock held.
    The ping must not queue behind it: the monitor that calls it has to stay free to notice the
    silence (ping-timeout) and detach, which is what unblocks the send (issue 9: a link cut
    mid-resync froze the SyncSource's monitor and `status` until TCP gave up)."""
    eng, _, peer = primary_hand_peer
    failures: list[OSError] = []

    def send_chunks():
        try:
            for _ in range(2):
                eng.resync_send(0, 8 << 20)
        except OSError as exc:
            failures.append(exc)
    sender = threading.Thread(target=send_chunks, daemon=True)
    sender.start()
    settled(lambda: eng.stats()["peer_bytes_sent"] > 0, "eng.stats()['peer_bytes_sent'] > 0")
    time.sleep(0.2)   # the socket buffers are full: the sender is blocked in sendmsg
    assert sender.is_alive()
    result = []
    pinger = threading.Thread(target=lambda: result.append(eng.peer_ping()), daemon=True)
    pinger.start()
    pinger.join(2)
    assert not pinger.is_alive(), "peer_ping waited behind the blocked send"
    assert result == [False]
    eng.peer_detach()   # what the monitor does after ping-timeout: the send fails at once
    sender.join(5)
    assert not sender.is_alive()
    assert failures, "the send on the detached link should have failed"


def test_max_buffers_bounds_requests_in_flight_and_is_set_between_links(tmp_path):
    """net { max-buffers }: the ring of pending requests is resized before a link, refused
    while one is attached, and out-of-range values are refused."""
    p = Pair(tmp_path, "C")
    try:
        with pytest.raises(OSError) as busy:
            p.primary.peer_attach(-1, "C", max_buffers=64)
        assert busy.value.errno == errno.EBUSY
        p.disconnect()
        for bad in (31, 131073):
            a, b = socket.socketpair()
            p.socks += [a, b]
            with pytest.raises(OSError) as inval:
                p.primary.peer_attach(a.fileno(), "C", max_buffers=bad)
            assert inval.value.errno == errno.EINVAL
        a, b = socket.socketpair()
        p.socks += [a, b]
        p.primary.peer_attach(a.fileno(), "C", max_buffers=32)
        p.secondary.peer_attach(b.fileno(), "C")
        # more writes than buffers, from several threads: all complete, none lost
        data = {i: os.urandom(4096) for i in range(200)}
        threads = [threading.Thread(target=lambda k=k: [p.primary.pwrite(data[i], i * 4096)
                                                          for i in range(k, 200, 8)]) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert p.primary.stats()["peer_pending"] <= 32
        wait_for(lambda: p.primary.stats()["peer_pending"] == 0, "acks", 10)
        assert p.disk("secondary")[:200 * 4096] == b"".join(data[i] for i in range(200))
    finally:
        p.close()
