# SPDX-License-Identifier: GPL-2.0-or-later
"""A client that stops reading its replies stalls only itself (issue 10, item 1c).

Two engines joined by a socketpair, protocol C: every write is answered from the Primary's
peer receiver thread. Client A pipelines writes and never reads a reply, until its socket is
full both ways; client B then writes at queue depth 1 and must keep its normal pace, and the
peer's acks must keep flowing (nothing left pending). Before 1c the receiver sent A's answers
itself, with a blocking send: it stopped there, and with it every other client's answers.

Speed is not asserted as a benchmark: B's writes must complete, within a bound generous
enough for a loaded machine (10x its own rate before A stalled, and 5 s at least).
"""
import os
import socket
import struct
import threading
import time

from tests.unit.test_mirror_peer import make_engine

REQUEST = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")
REQUEST_MAGIC, WRITE, DISC = 0x25609513, 1, 2
B_WRITES = 300


def serve(engine, small_buffers=False):
    client, server = socket.socketpair()
    if small_buffers:
        for s in (client, server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    results = []
    thread = threading.Thread(target=lambda: results.append(engine.serve_nbd(server.fileno(), b"")), daemon=True)
    thread.start()
    return client, server, thread


def write_qd1(sock, count, base):
    payload = os.urandom(4096)
    start = time.monotonic()
    for i in range(count):
        sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, base + (i % 256) * 4096, 4096) + payload)
        raw = sock.recv(REPLY.size, socket.MSG_WAITALL)
        assert len(raw) == REPLY.size and REPLY.unpack(raw)[1:] == (0, i)
    return time.monotonic() - start


def flood(sock, stuck):
    """Pipeline writes, never read; set `stuck` once the server stopped taking them."""
    payload = os.urandom(4096)
    sock.settimeout(0.5)
    i = 0
    try:
        while True:
            sock.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, (i % 512) * 4096, 4096) + payload)
            i += 1
    except TimeoutError:
        stuck.set()
    except OSError:
        pass


def test_a_client_that_stops_reading_stalls_only_itself(tmp_path):
    primary, pfd, _ = make_engine(tmp_path, "primary")
    secondary, sfd, _ = make_engine(tmp_path, "secondary", read_only=True)
    a, b = socket.socketpair()
    socks = [a, b]
    try:
        primary.peer_attach(a.fileno(), "C")
        secondary.peer_attach(b.fileno(), "C")
        client_b, server_b, thread_b = serve(primary)
        socks += [client_b, server_b]
        client_b.settimeout(30)
        normal_s = write_qd1(client_b, B_WRITES, 4 << 20)

        client_a, server_a, thread_a = serve(primary, small_buffers=True)
        socks += [client_a, server_a]
        stuck = threading.Event()
        flooder = threading.Thread(target=flood, args=(client_a, stuck), daemon=True)
        flooder.start()
        assert stuck.wait(30), "client A never filled its socket"
        sent_before = primary.stats()["peer_writes_sent"]

        stalled_s = write_qd1(client_b, B_WRITES, 4 << 20)
        assert stalled_s < max(5.0, 10 * normal_s), (normal_s, stalled_s)
        stats = primary.stats()
        assert stats["peer_writes_sent"] >= sent_before + B_WRITES
        # the peer's acks keep coming: nothing of B's (or A's already submitted) stays pending
        deadline = time.monotonic() + 10
        while primary.stats()["peer_pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert primary.stats()["peer_pending"] == 0

        client_b.sendall(REQUEST.pack(REQUEST_MAGIC, 0, DISC, 0, 0, 0))
        thread_b.join(10)
        assert not thread_b.is_alive()
        primary.shutdown()          # A's thread is blocked in its own send: `down` still ends it
        thread_a.join(10)
        assert not thread_a.is_alive(), "the stuck connection did not end on shutdown"
    finally:
        primary.close()
        secondary.close()
        for s in socks:
            s.close()
        os.close(pfd)
        os.close(sfd)
