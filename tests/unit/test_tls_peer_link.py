# SPDX-License-Identifier: GPL-2.0-or-later
"""The C peer link over TLS (csrc/transport_tls.c): two engines joined by a socketpair after a
mutual-certificate handshake. The plain link's own cases (tests/unit/test_mirror_peer.py) run
again over the TLS transport: mirrored writes under A/B/C, large spliced payloads (SSL_read +
pipe), resync (pread + SSL_write in place of sendfile), application writes racing resync, a
lost link, and control frames; the sender threads and the receiver share one session."""
import socket
import threading

import pytest

from replica.mirror import TlsContext
from tests.tls_certs import make_ca, make_node_cert
from tests.unit import test_mirror_peer as plain

HANDSHAKE_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    alpha, beta = make_node_cert(d, ca, "alpha"), make_node_cert(d, ca, "beta")
    client = TlsContext(server=False, certfile=str(alpha.certfile), keyfile=str(alpha.keyfile),
                        cafile=str(ca.certfile), verify_peer=True)
    server = TlsContext(server=True, certfile=str(beta.certfile), keyfile=str(beta.keyfile),
                        cafile=str(ca.certfile), verify_peer=True)
    yield client, server
    client.close()
    server.close()


class TlsPair(plain.Pair):
    """plain.Pair whose link is a TLS session on each end (the primary is the TLS client)."""

    def __init__(self, tmp_path, protocol, contexts, integrity_alg=None):
        self.contexts = contexts
        self.sessions = []
        self.integrity_alg = integrity_alg
        super().__init__(tmp_path, protocol)

    def connect(self):
        a, b = socket.socketpair()
        self.socks += [a, b]
        client_ctx, server_ctx = self.contexts
        out = {}
        t = threading.Thread(target=lambda: out.setdefault(
            "server", server_ctx.handshake(b.fileno(), HANDSHAKE_TIMEOUT_S, "alpha")))
        t.start()
        client = client_ctx.handshake(a.fileno(), HANDSHAKE_TIMEOUT_S, "beta")
        t.join()
        server = out["server"]
        self.sessions += [client, server]
        assert client.describe().startswith("TLSv1.3 ")
        self.primary.peer_attach(a.fileno(), self.protocol, tls=client, integrity_alg=self.integrity_alg)
        self.secondary.peer_attach(b.fileno(), self.protocol, tls=server, integrity_alg=self.integrity_alg)

    def disconnect(self):
        super().disconnect()
        for s in self.sessions:
            s.close()

    def close(self):
        for eng in (self.primary, self.secondary):
            eng.peer_detach()
        for s in self.sessions:
            s.close()
        super().close()


@pytest.fixture(params=["A", "B", "C"])
def pair(tmp_path, request, contexts):
    p = TlsPair(tmp_path, request.param, contexts)
    yield p
    p.close()


@pytest.fixture
def pair_c(tmp_path, contexts):
    p = TlsPair(tmp_path, "C", contexts)
    yield p
    p.close()


def test_writes_reach_the_secondary_under_every_protocol(pair):
    plain.test_writes_reach_the_secondary_under_every_protocol(pair)


@pytest.mark.parametrize("case", [
    plain.test_protocol_c_ack_means_written_on_the_secondary,
    plain.test_large_writes_and_trim_zero_are_mirrored,
    plain.test_lost_link_marks_dirty_and_resync_clears_both_sides,
    plain.test_concurrent_connections_and_resync_keep_disks_identical,
    plain.test_control_frames_pass_through_in_order,
    plain.test_overlapping_writes_from_several_connections_reach_the_peer_in_disk_order,
    plain.test_large_payloads_that_trickle_in_are_applied_whole_on_both_sides,
    plain.test_a_client_vanishing_mid_payload_leaves_both_disks_equal,
], ids=lambda f: f.__name__.removeprefix("test_"))
def test_plain_link_cases_over_tls(pair_c, case):
    case(pair_c)


def test_data_integrity_alg_over_tls(tmp_path, contexts):
    p = TlsPair(tmp_path, "C", contexts, integrity_alg="crc32c")
    try:
        data = bytes(range(256)) * 4096      # 1 MiB: digested in pieces by the receiver
        p.primary.pwrite(data, 1 << 20)
        p.primary.pwrite(b"x" * 4096, 0)
        plain.settled(lambda: p.primary.stats()["peer_pending"] == 0, "acks")
        assert p.disk("primary") == p.disk("secondary")
        assert p.secondary.stats()["integrity_failures"] == 0
    finally:
        p.close()


def test_the_secondary_sees_eof_when_the_primary_detaches(pair_c):
    pair_c.primary.pwrite(b"a" * 4096, 0)
    pair_c.primary.peer_detach()
    pair_c.sessions[0].close()            # close_notify, then the socket is shut
    plain.settled(lambda: any(e.type == "peer_lost" for e in pair_c.secondary.next_events()), "peer_lost")
    assert pair_c.disk("primary") == pair_c.disk("secondary")
