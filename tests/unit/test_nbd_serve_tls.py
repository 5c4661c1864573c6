# SPDX-License-Identifier: GPL-2.0-or-later
"""The NBD transmission phase over a TLS session (rm_serve_nbd_tls through Engine.serve_nbd with
tls=...), on a socketpair: the same serving loop as over a plain socket, with the transport
swapped, including the paths that use sendfile and splice on a socket (large reads, streamed
large writes), pipelined requests, bytes left in the session by the handshake, and shutdown.
Requests are built with struct from proto.md, as in test_mirror_engine."""
import os
import socket
import struct
import threading

import pytest

from replica.mirror import Engine, TlsContext
from tests.tls_certs import make_ca, make_node_cert

REQUEST = struct.Struct(">IHHQQI")   # magic, flags, type, cookie, offset, length
REPLY = struct.Struct(">IIQ")        # magic, error, cookie
REQUEST_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
READ, WRITE, DISC, FLUSH = 0, 1, 2, 3
SIZE = 8 << 20
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tn-pki")
    ca = make_ca(d)
    server, client = make_node_cert(d, ca, "server"), make_node_cert(d, ca, "client")
    return (TlsContext(server=True, certfile=str(server.certfile), keyfile=str(server.keyfile),
                       cafile=str(ca.certfile), verify_peer=True),
            TlsContext(server=False, certfile=str(client.certfile), keyfile=str(client.keyfile),
                       cafile=str(ca.certfile), verify_peer=True))


@pytest.fixture
def engine(tmp_path):
    fd = os.open(tmp_path / "disk", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    eng = Engine(fd, SIZE)
    yield eng
    eng.close()
    os.close(fd)


class TlsNbd:
    """A TLS client session whose server end runs engine.serve_nbd(tls=...) in a thread."""

    def __init__(self, engine, contexts, before_serve=b""):
        server_ctx, client_ctx = contexts
        self.sock, self.server = socket.socketpair()
        self.result = None
        sessions = {}

        def handshake():
            sessions["server"] = server_ctx.handshake(self.server.fileno(), TIMEOUT_S)
        t = threading.Thread(target=handshake)
        t.start()
        self.tls = client_ctx.handshake(self.sock.fileno(), TIMEOUT_S, "server")
        t.join()
        self.server_tls = sessions["server"]
        if before_serve:     # requests the client pipelined before the server reached C
            self.tls.write_all(before_serve)

        def run():
            self.result = engine.serve_nbd(self.server.fileno(), b"", tls=self.server_tls)
            self.server_tls.close()
            self.server.close()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self, cmd, offset=0, length=0, payload=b"", cookie=1):
        self.tls.write_all(REQUEST.pack(REQUEST_MAGIC, 0, cmd, cookie, offset, length) + payload)

    def reply(self, data_len=0):
        magic, error, cookie = REPLY.unpack(self.tls.read_exact(REPLY.size, TIMEOUT_S))
        assert magic == REPLY_MAGIC
        data = self.tls.read_exact(data_len, TIMEOUT_S) if error == 0 and data_len else b""
        return error, cookie, data

    def finish(self):
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()
        self.tls.close()
        self.sock.close()
        return self.result


def test_write_read_flush_disc_over_tls(engine, contexts):
    s = TlsNbd(engine, contexts)
    s.send(WRITE, 4096, 5, b"hello", cookie=7)
    assert s.reply() == (0, 7, b"")
    s.send(FLUSH, cookie=8)
    assert s.reply() == (0, 8, b"")
    s.send(READ, 4096, 5, cookie=9)
    assert s.reply(5) == (0, 9, b"hello")
    s.send(DISC)
    result = s.finish()
    assert result.clean and result.reason == "disconnect requested"
    assert engine.pread(5, 4096) == b"hello"


def test_large_reads_and_streamed_writes_over_tls(engine, contexts):
    # 4 MiB: past the input buffer (streamed write: splice on a socket, copies over TLS) and
    # past the output buffer (large read: sendfile on a socket, pread + records over TLS).
    s = TlsNbd(engine, contexts)
    data = os.urandom(4 << 20)
    s.send(WRITE, 1 << 20, len(data), data, cookie=1)
    assert s.reply() == (0, 1, b"")
    s.send(READ, 1 << 20, len(data), cookie=2)
    assert s.reply(len(data)) == (0, 2, data)
    s.send(DISC)
    assert s.finish().clean
    assert engine.pread(len(data), 1 << 20) == data


def test_pipelined_requests_left_in_the_session_are_served_in_order(engine, contexts):
    # small enough to sit in the socketpair before anyone reads it
    blocks = [os.urandom(4096) for _ in range(8)]
    pipelined = b"".join(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, i, i * 4096, 4096) + b
                         for i, b in enumerate(blocks))
    s = TlsNbd(engine, contexts, before_serve=pipelined)
    assert [s.reply() for _ in blocks] == [(0, i, b"") for i in range(8)]
    s.send(READ, 0, 8 * 4096, cookie=99)
    assert s.reply(8 * 4096) == (0, 99, b"".join(blocks))
    s.send(DISC)
    assert s.finish().clean


def test_shutdown_ends_a_tls_connection(engine, contexts):
    s = TlsNbd(engine, contexts)
    s.send(WRITE, 0, 4, b"abcd", cookie=1)
    assert s.reply() == (0, 1, b"")
    engine.shutdown()
    result = s.finish()
    assert result.reason == "resource going down"


def test_a_session_on_another_fd_is_refused(engine, contexts):
    s = TlsNbd(engine, contexts)
    s.send(DISC)
    s.finish()
    other, peer = socket.socketpair()
    try:
        server_ctx, client_ctx = contexts
        sessions = {}
        t = threading.Thread(target=lambda: sessions.setdefault(
            "server", server_ctx.handshake(other.fileno(), TIMEOUT_S)))
        t.start()
        client = client_ctx.handshake(peer.fileno(), TIMEOUT_S)
        t.join()
        result = engine.serve_nbd(peer.fileno(), b"", tls=sessions["server"])
        assert result.reason == "socket error" and result.errno == 9   # EBADF
        sessions["server"].close()
        client.close()
    finally:
        other.close()
        peer.close()
