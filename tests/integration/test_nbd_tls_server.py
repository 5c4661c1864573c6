# SPDX-License-Identifier: GPL-2.0-or-later
"""The export server's STARTTLS threads, in process (replica.nbd_server.ExportServer on a unix
socket, a real Engine and TLS context): a client that stalls after STARTTLS is dropped at the
handshake deadline, stop() ends stalled TLS handshakes at once instead of waiting them out, and
past MAX_TLS_HANDSHAKES a STARTTLS client is dropped while the others are served."""
import logging
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica import nbd_server
from replica.config import Endpoint
from replica.mirror import Engine, TlsContext
from replica.nbd_server import ExportServer, ExportTlsSetup
from replica.protocol.nbd import ExportInfo, TlsMode, transmission_flags_for
from scripts.waiting import wait_for
from tests.tls_certs import make_ca, make_node_cert

IHAVEOPT, OPT_STARTTLS, OPT_GO, REP_ACK = 0x49484156454F5054, 5, 7, 1
SIZE = 1 << 20


@pytest.fixture
def server(tmp_path):
    ca = make_ca(tmp_path)
    cert = make_node_cert(tmp_path, ca, "localhost")
    context = TlsContext(server=True, certfile=str(cert.certfile), keyfile=str(cert.keyfile))
    client_context = TlsContext(server=False, cafile=str(ca.certfile), verify_peer=True)
    fd = os.open(tmp_path / "disk", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    engine = Engine(fd, SIZE)
    export = ExportInfo("r0", SIZE, transmission_flags_for(read_only=False))
    srv = ExportServer("r0", Endpoint("unix", path=str(tmp_path / "r0.sock")), engine, export,
                       ExportTlsSetup(TlsMode.REQUIRE, context))
    srv.client_context = client_context
    try:
        yield srv
    finally:
        if not srv._stopping:      # a test may have stopped it
            srv.stop()
        engine.close()
        os.close(fd)


def starttls(srv) -> socket.socket:
    """A client past the ACK of its NBD_OPT_STARTTLS, that then says nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.endpoint.path)
    assert s.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0))
    reply = s.recv(20, socket.MSG_WAITALL)
    assert struct.unpack(">QIII", reply)[2] == REP_ACK
    return s


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def go_over_tls(srv) -> None:
    """A well-behaved client: STARTTLS, the TLS handshake, NBD_OPT_GO, a write and a read."""
    s = starttls(srv)
    try:
        tls = srv.client_context.handshake(s.fileno(), 10, "localhost")
        tls.write_all(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + struct.pack(">IH", 0, 0))
        while True:   # NBD_REP_INFO... then NBD_REP_ACK
            _, opt, rep, length = struct.unpack(">QIII", tls.read_exact(20, 10))
            tls.read_exact(length, 10)
            if rep == REP_ACK:
                break
        tls.write_all(struct.pack(">IHHQQI", 0x25609513, 0, 1, 7, 4096, 4) + b"tls!")
        assert struct.unpack(">IIQ", tls.read_exact(16, 10)) == (0x67446698, 0, 7)
        tls.write_all(struct.pack(">IHHQQI", 0x25609513, 0, 2, 8, 0, 0))   # NBD_CMD_DISC
        tls.close()
    finally:
        s.close()


def test_a_client_stalled_after_starttls_is_dropped_at_the_deadline(server, monkeypatch):
    monkeypatch.setattr(nbd_server, "HANDSHAKE_TIMEOUT_S", 1.0)   # taken at accept
    s = starttls(server)
    try:
        wait_for(lambda: closed_by_server(s), "the stalled TLS client to be dropped", 10)
    finally:
        s.close()
    go_over_tls(server)


def test_stop_ends_stalled_tls_handshakes_at_once(server):
    stalled = [starttls(server) for _ in range(3)]
    try:
        wait_for(lambda: len(server._tls_socks) == 3, "three clients in their TLS handshake", 10)
        start = time.monotonic()
        server.stop()
        took = time.monotonic() - start
        # without shutting their sockets down, stop() would wait 5 s for each thread (their
        # handshake deadline is 30 s away)
        assert took < 3.0, f"stop() took {took:.1f} s"
        assert all(closed_by_server(s) for s in stalled)
    finally:
        for s in stalled:
            s.close()


def test_tls_handshakes_past_the_cap_are_dropped(server, monkeypatch, caplog):
    monkeypatch.setattr(nbd_server, "MAX_TLS_HANDSHAKES", 2)
    stalled = [starttls(server) for _ in range(2)]
    try:
        wait_for(lambda: len(server._tls_socks) == 2, "two clients in their TLS handshake", 10)
        with caplog.at_level(logging.WARNING, logger="replicad.nbd"):
            extra = starttls(server)
            assert closed_by_server(extra)
            extra.close()
        assert "2 TLS handshakes already in progress: dropped" in caplog.text
    finally:
        for s in stalled:
            s.close()
    wait_for(lambda: not server._tls_socks, "the stalled handshakes to end", 10)
    go_over_tls(server)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=st.lists(st.tuples(st.sampled_from([1, 2, 3, 5, 6, 7, 8, 99]), st.binary(max_size=16)),
                       max_size=5),
       tail=st.binary(max_size=64))
def test_fuzz_clear_text_options_against_a_require_server(server, stream, tail):
    """Whatever a clear-text client sends to a FORCEDTLS export (STARTTLS included, followed by
    anything but a TLS handshake), it gets no export, and the server goes on serving TLS."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(server.endpoint.path)
        s.recv(18, socket.MSG_WAITALL)
        s.sendall(struct.pack(">I", 3) + b"".join(struct.pack(">QII", IHAVEOPT, o, len(d)) + d
                                                 for o, d in stream) + tail)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        # only option replies: ACK (STARTTLS/ABORT), ERR_TLS_REQD, ERR_INVALID (STARTTLS with
        # data); never NBD_REP_INFO or the EXPORT_NAME reply that would describe the export
        offset = 0
        while offset + 20 <= len(received) and received[offset:offset + 8] == \
                (0x3E889045565A9).to_bytes(8, "big"):
            _, opt, rep, length = struct.unpack_from(">QIII", received, offset)
            assert rep in (1, 2**31 + 5, 2**31 + 3), (opt, rep)
            offset += 20 + length
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    go_over_tls(server)
