# SPDX-License-Identifier: GPL-2.0-or-later
"""Clients that leave while the peer still owes their answers (issue 9's crash).

A protocol C Primary completes a client's writes from the peer receiver thread. Sixteen clients
pipeline writes and hang up together, some before reading a single reply, round after round:
each connection's last answers arrive while its serving call is tearing down. The receiver
once kept a pointer to a connection that lived on rm_serve_nbd's stack after the last
completion let that call return (SIGSEGV in 3 of ~34 fio runs; at once under ASan with
detect_stack_use_after_return). `make sanitize` runs this file against an ASan/UBSan build.
"""
import os
import random
import socket
import struct
import threading

from tests.unit.test_mirror_peer import SIZE, make_engine

REQUEST = struct.Struct(">IHHQQI")
REQUEST_MAGIC, WRITE, FLUSH = 0x25609513, 1, 3
CLIENTS = 16
ROUNDS = 60


def vanishing_client(engine, rng, results):
    """Pipeline 1..31 writes (and sometimes a flush), read a random part of the answers, hang up."""
    client, server = socket.socketpair()

    def serve():
        results.append(engine.serve_nbd(server.fileno(), b""))
        server.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    payload = rng.randbytes(4096)
    count = rng.randrange(1, 32)
    for cookie in range(count):
        offset = rng.randrange(SIZE // 4096) * 4096
        client.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, cookie, offset, 4096) + payload)
    if rng.random() < 0.3:
        client.sendall(REQUEST.pack(REQUEST_MAGIC, 0, FLUSH, count, 0, 0))
    answers = rng.randrange(count)
    client.settimeout(10)
    got = b""
    while len(got) < 16 * answers:
        chunk = client.recv(16 * answers - len(got))
        assert chunk, "the server hung up before answering"
        got += chunk
    client.close()
    return thread


def test_clients_leaving_with_answers_owed_by_the_peer(tmp_path):
    primary, pfd, _ = make_engine(tmp_path, "primary")
    secondary, sfd, _ = make_engine(tmp_path, "secondary", read_only=True)
    a, b = socket.socketpair()
    rng = random.Random(9)
    results: list = []
    try:
        primary.peer_attach(a.fileno(), "C")
        secondary.peer_attach(b.fileno(), "C")
        for _ in range(ROUNDS):
            threads = [vanishing_client(primary, rng, results) for _ in range(CLIENTS)]
            for thread in threads:
                thread.join(10)
                assert not thread.is_alive(), "a serving call never returned"
        stats = primary.stats()
        assert stats["active_connections"] == 0
        assert stats["peer_connected"] == 1, "the link must survive clients leaving"
        assert stats["peer_pending"] == 0
        assert len(results) == ROUNDS * CLIENTS
        # Nothing was lost on the way: both disks hold the same bytes.
        primary.flush()
        assert (tmp_path / "primary").read_bytes() == (tmp_path / "secondary").read_bytes()
    finally:
        primary.close()
        secondary.close()
        a.close()
        b.close()
        os.close(pfd)
        os.close(sfd)
