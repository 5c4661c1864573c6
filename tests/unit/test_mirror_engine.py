# SPDX-License-Identifier: GPL-2.0-or-later
"""The C data path (replica._mirror through replica.mirror) on temporary files and socketpairs.

The transmission loop is driven with requests built here with struct from proto.md, not with our
own codec, so a misreading of the spec on one side cannot hide one on the other.
"""
import errno
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.mirror import MAX_REQUEST, Engine

REQUEST = struct.Struct(">IHHQQI")   # magic, flags, type, cookie, offset, length
REPLY = struct.Struct(">IIQ")        # magic, error, cookie
REQUEST_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES = 0, 1, 2, 3, 4, 6
FUA, NO_HOLE = 1, 2
SIZE = 1 << 20


@pytest.fixture
def engine(tmp_path):
    fd = os.open(tmp_path / "disk", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    eng = Engine(fd, SIZE)
    yield eng
    eng.close()
    os.close(fd)


class Session:
    """A client end of a socketpair whose server end runs engine.serve_nbd in a thread."""

    def __init__(self, engine, initial=b""):
        self.sock, server = socket.socketpair()
        self.sock.settimeout(10)
        self.result = None

        def run():
            self.result = engine.serve_nbd(server.fileno(), initial)
            server.close()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self, cmd, offset=0, length=0, payload=b"", flags=0, cookie=1, magic=REQUEST_MAGIC):
        self.sock.sendall(REQUEST.pack(magic, flags, cmd, cookie, offset, length) + payload)

    def reply(self, data_len=0):
        raw = self.sock.recv(REPLY.size, socket.MSG_WAITALL)
        assert len(raw) == REPLY.size, f"short reply: {raw!r}"
        magic, error, cookie = REPLY.unpack(raw)
        assert magic == REPLY_MAGIC
        data = b""
        while error == 0 and len(data) < data_len:
            chunk = self.sock.recv(data_len - len(data))
            assert chunk, "server hung up in the middle of read data"
            data += chunk
        return error, cookie, data

    def finish(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.sock.close()
        return self.result


def test_engine_direct_io_and_range_checks(engine):
    engine.pwrite(b"abc" * 100, 4096, fua=True)
    assert engine.pread(300, 4096) == b"abc" * 100
    with pytest.raises(OSError) as exc:
        engine.pwrite(b"x", SIZE)
    assert exc.value.errno == errno.ENOSPC and "offset=1048576" in str(exc.value)
    with pytest.raises(OSError) as exc:
        engine.pread(2, SIZE - 1)
    assert exc.value.errno == errno.EINVAL
    engine.zero(4096, 4096)
    assert engine.pread(4096, 4096) == bytes(4096)
    engine.pwrite(b"\xff" * 8192, 0)
    engine.trim(4096, 0)
    engine.zero(4096, 4096, may_trim=False)
    assert engine.pread(4096, 4096) == bytes(4096)
    stats = engine.stats()
    assert stats["writes"] == 2 and stats["refused"] == 2 and stats["zeroes"] == 2


def test_engine_read_only_refuses_writes(engine):
    engine.set_read_only(True)
    with pytest.raises(OSError) as exc:
        engine.pwrite(b"x", 0)
    assert exc.value.errno == errno.EPERM
    engine.set_read_only(False)
    engine.pwrite(b"x", 0)


def test_suspend_io_holds_new_writes_until_resumed(engine):
    """fencing resource-and-stonith: while suspended, a write waits (its connection with it)."""
    engine.set_suspended(True)
    s = Session(engine)
    s.send(WRITE, 0, 4, b"wait", cookie=3)
    s.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        s.sock.recv(1, socket.MSG_PEEK)
    assert engine.pread(4, 0) == bytes(4)
    s.sock.settimeout(10)
    engine.set_suspended(False)
    assert s.reply() == (0, 3, b"")
    assert engine.pread(4, 0) == b"wait"
    engine.set_suspended(True)          # shutdown lets a waiting request go on, and ends
    s.send(WRITE, 4096, 4, b"last", cookie=4)
    time.sleep(0.1)
    engine.shutdown()
    assert s.finish() is not None


def test_serve_write_read_flush_disc(engine):
    s = Session(engine)
    s.send(WRITE, 8192, 5, b"hello", flags=FUA, cookie=7)
    assert s.reply() == (0, 7, b"")
    s.send(READ, 8192, 5, cookie=8)
    assert s.reply(5) == (0, 8, b"hello")
    s.send(FLUSH, cookie=9)
    assert s.reply() == (0, 9, b"")
    s.send(DISC)
    assert s.finish().reason == "disconnect requested"


def test_serve_pipelined_requests_answered_in_order(engine):
    s = Session(engine)
    batch = b"".join(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, i * 4096, 4096) + bytes([i]) * 4096
                     for i in range(100))
    s.sock.sendall(batch)
    assert [s.reply()[1] for _ in range(100)] == list(range(100))
    assert engine.pread(4096, 99 * 4096) == bytes([99]) * 4096
    s.send(DISC)
    s.finish()


def test_serve_errors_keep_the_connection(engine):
    s = Session(engine)
    s.send(READ, SIZE - 1, 2, cookie=1)
    assert s.reply()[0] == errno.EINVAL
    s.send(WRITE, SIZE, 4, b"data", cookie=2)          # payload consumed, then refused
    assert s.reply()[0] == errno.ENOSPC
    s.send(READ, 0, MAX_REQUEST + 1, cookie=3)          # too big, but nothing to skip
    assert s.reply()[0] == errno.EINVAL
    s.send(5, 0, 0, cookie=4)                            # CACHE: never advertised
    assert s.reply()[0] == errno.EINVAL
    s.send(WRITE, 0, 4, b"data", flags=0x80, cookie=5)  # unknown command flag
    assert s.reply()[0] == errno.EINVAL
    s.send(WRITE_ZEROES, SIZE - 10, 20, cookie=6)
    assert s.reply()[0] == errno.ENOSPC
    s.send(TRIM, SIZE, 1, cookie=7)
    assert s.reply()[0] == errno.EINVAL
    s.send(READ, 0, 4, cookie=8)
    assert s.reply(4) == (0, 8, bytes(4))
    s.send(DISC)
    assert s.finish().clean


def test_serve_oversized_write_answers_then_hangs_up_without_reading(engine):
    s = Session(engine)
    s.send(WRITE, 0, MAX_REQUEST + 1, cookie=3)  # no payload follows: it must not wait for one
    assert s.reply()[0] == errno.EOVERFLOW
    result = s.finish()
    assert result.reason == "protocol error" and result.errno == errno.EOVERFLOW


def test_serve_bad_magic_disconnects(engine):
    s = Session(engine)
    s.send(READ, 0, 4, magic=0xDEADBEEF)
    assert s.finish().reason == "protocol error"


def test_serve_client_vanishing_mid_payload(engine):
    s = Session(engine)
    s.sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 1, 0, 65536) + b"x" * 1000)
    s.sock.shutdown(socket.SHUT_WR)
    assert not s.finish().clean
    assert engine.pread(4, 0) == bytes(4)  # a half-received write is never applied


def test_serve_large_read_and_write_beyond_buffers(engine):
    s = Session(engine)
    data = os.urandom(SIZE)
    s.send(WRITE, 0, SIZE, data, cookie=1)
    assert s.reply() == (0, 1, b"")
    s.send(READ, 0, SIZE, cookie=2)
    assert s.reply(SIZE) == (0, 2, data)
    s.send(DISC)
    s.finish()


def test_serve_initial_bytes_from_handshake(engine):
    s = Session(engine, initial=REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 5, 0, 3) + b"xyz")
    assert s.reply() == (0, 5, b"")
    s.send(DISC)
    s.finish()
    assert engine.pread(3, 0) == b"xyz"


def test_shutdown_ends_idle_connections(engine):
    s = Session(engine)
    s.send(FLUSH)
    s.reply()
    engine.shutdown()
    assert s.finish().reason == "resource going down"


requests = st.builds(
    lambda magic_ok, flags, cmd, offset, length, payload: (
        REQUEST.pack(REQUEST_MAGIC if magic_ok else 0x12345678, flags, cmd, 0, offset, length)
        + (payload[:length] if cmd == WRITE else b"")),
    st.booleans(), st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 99]),
    st.one_of(st.integers(0, SIZE + 10), st.integers(0, 2**64 - 1)),
    st.one_of(st.integers(0, 8192), st.integers(0, 2**32 - 1)), st.binary(max_size=8192))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(st.one_of(requests, st.binary(max_size=64)), max_size=8))
def test_fuzz_request_stream_never_crashes(engine, stream):
    """Random and malformed request streams: the loop ends or answers, never crashes or hangs."""
    s = Session(engine)
    data = b"".join(stream)
    try:
        s.sock.sendall(data)
    except OSError:
        pass  # the server may hang up early on garbage
    s.sock.shutdown(socket.SHUT_WR)
    while s.sock.recv(1 << 16):
        pass
    result = s.finish()
    assert result.reason in {"disconnect requested", "client closed the connection", "protocol error",
                             "socket error"}
    # The engine still works after whatever happened.
    engine.pwrite(b"ok", 0)
    assert engine.pread(2, 0) == b"ok"


def test_serve_large_write_takes_the_splice_path_and_survives_a_vanishing_client(engine):
    """A large payload reaches the disk as it arrives. A client that vanishes midway leaves
    what it sent there, like a torn write on a disk (it never got an answer); the peer gets the
    same bytes (test_mirror_peer), so the two disks stay equal."""
    s = Session(engine)
    data = os.urandom(512 * 1024)
    s.send(WRITE, 4096, len(data), data, flags=FUA, cookie=1)
    assert s.reply() == (0, 1, b"")
    assert engine.pread(len(data), 4096) == data
    s.sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 2, 0, 512 * 1024) + b"y" * 1000)
    time.sleep(0.05)   # let the server start splicing what has arrived
    s.sock.sendall(b"y" * 100_000)
    s.sock.shutdown(socket.SHUT_WR)
    assert s.finish().reason == "protocol error"
    assert engine.stats()["writes"] == 2
    assert engine.pread(101_000, 0) == b"y" * 101_000
    assert engine.pread(len(data) + 4096 - 101_000, 101_000) == data[101_000 - 4096:]


def test_pipelined_large_writes_keep_their_order(engine):
    """Large writes queued behind each other (the write-behind thread) and a small write after
    them to the same blocks: the client's order is the disk's order."""
    s = Session(engine)
    size = 256 * 1024
    batch = b"".join(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, 0, size) + bytes([i + 1]) * size
                     for i in range(6))
    batch += REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 6, 4096, 10) + b"small-last"
    batch += REQUEST.pack(REQUEST_MAGIC, 0, FLUSH, 7, 0, 0)
    sender = threading.Thread(target=s.sock.sendall, args=(batch,))
    sender.start()
    replies = sorted(s.reply()[:2] for _ in range(8))
    sender.join()
    assert replies == [(0, i) for i in range(8)]
    assert engine.pread(4096, 0) == bytes([6]) * 4096
    assert engine.pread(10, 4096) == b"small-last"
    assert engine.pread(4096, size - 4096) == bytes([6]) * 4096
    s.send(DISC)
    assert s.finish().clean
