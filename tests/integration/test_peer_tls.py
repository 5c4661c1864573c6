# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS on the peer link (net { tls yes; tls-keyfile; tls-certfile; tls-cafile; }): two replicad
nodes in network namespaces with certificates this test makes (a CA, node certificates naming
each node, an expired one, one from another CA). Writes are replicated over TLS and both disks
end identical; a wrong CA, an expired certificate or a peer without TLS are refused with the
reason in the log and in `status`, and the nodes stay Connecting and keep retrying."""
import contextlib
import os
import subprocess
import time

import pytest

from tests.conftest import requires_commands, requires_module, requires_root
from tests.integration.netns import MiB, TwoNodes
from tests.tls_certs import make_ca, make_node_cert

pytestmark = pytest.mark.root

NET = "protocol C; ping-int 3; ping-timeout 5; timeout 5; connect-int 1;"   # quick retries


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d), make_ca(d, "other CA")
    return {"ca": ca.certfile, "other_ca": other.certfile,
            "alpha": make_node_cert(d, ca, "alpha"), "beta": make_node_cert(d, ca, "beta"),
            "beta_expired": make_node_cert(d, ca, "beta", expired=True),
            "beta_other": make_node_cert(d, other, "beta", prefix="other-")}


def tls(pki, cert: str, ca: str = "ca") -> str:
    return (f"tls yes; tls-keyfile {pki[cert].keyfile}; tls-certfile {pki[cert].certfile}; "
            f"tls-cafile {pki[ca]};")


def two_nodes(alpha: str, beta: str) -> TwoNodes:
    requires_root()
    requires_commands("ip")
    return TwoNodes(size=32 * MiB, net=NET, disk="resync-rate 200M;",
                    node_net={"alpha": alpha, "beta": beta})


def refused(t: TwoNodes, node: str, reason: str) -> dict:
    """Wait until `node` logged and shows the TLS refusal; it must still be Connecting."""
    st = t.wait(node, lambda s: reason in (s.get("tls_error") or ""), f"tls refusal: {reason}", 30)
    assert st["connection"] == "Connecting"
    assert reason in t.log(node)
    return st


@contextlib.contextmanager
def capture(t: TwoNodes, pcap):
    """tcpdump on alpha's end of the veth pair while the block runs (stopped by its pid)."""
    proc = subprocess.Popen(["ip", "netns", "exec", t.ns["alpha"], "tcpdump", "-i", t.veth["alpha"], "-U", "--immediate-mode", "-s", "0",
                             "-w", str(pcap), "tcp", "port", "7789"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()
        yield
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(10)


def test_writes_are_replicated_over_tls(pki, tmp_path):
    nbd = requires_module("nbd")
    with two_nodes(tls(pki, "alpha"), tls(pki, "beta")) as t:
        t.create_and_up()
        t.initial_sync("alpha")
        for node, peer in (("alpha", "beta"), ("beta", "alpha")):
            st = t.status(node)
            assert st["tls"].startswith("TLSv1.3 TLS_AES_128_GCM_SHA256 peer ") and f"CN={peer}" in st["tls"]
            text = t.ctl(node, "status", "r0").stdout
            assert f"  {peer} role:" in text and " tls:TLSv1.3/TLS_AES_128_GCM_SHA256\n" in text
            assert "peer link: r0: peer" in t.log(node) and "TLSv1.3" in t.log(node)
        requires_commands("tcpdump")
        canary = b"replica-tls-canary:" * 215 + b"end" * 4
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        with capture(t, tmp_path / "link.pcap"):
            h.pwrite(canary[:4096], 30 * MiB)
            h.flush()
        wire = (tmp_path / "link.pcap").read_bytes()
        assert t.read_disk("beta", 30 * MiB, 4096) == canary[:4096]
        assert len(wire) > 4096 and b"replica-tls-canary" not in wire, "the data path sent plaintext"
        assert b"\x17\x03\x03" in wire              # TLS application data records
        try:
            blocks = {off: os.urandom(4096) for off in range(0, 4 * MiB, 36 * 1024)}
            for off, data in blocks.items():
                h.pwrite(data, off)
            big = os.urandom(3 * MiB)             # large frames: spliced on the secondary
            h.pwrite(big, 8 * MiB)
            h.flush()
        finally:
            h.shutdown()
        t.wait("alpha", lambda s: s["stats"]["peer_pending"] == 0, "acknowledged")
        assert t.read_disk("beta", 8 * MiB, len(big)) == big
        assert all(t.read_disk("beta", off, 4096) == data for off, data in blocks.items())
        assert t.disks_equal(t.data_size())
        # a lost link and reconnect: a new TLS session, resync over it (pread + SSL_write)
        t.ctl("beta", "disconnect", "r0")
        h = nbd.NBD()
        h.connect_uri(t.uri("alpha"))
        try:
            h.pwrite(os.urandom(2 * MiB), 16 * MiB)
            h.flush()
        finally:
            h.shutdown()
        t.ctl("beta", "connect", "r0")
        t.wait_synced()
        assert t.disks_equal(t.data_size())
        assert t.status("alpha")["last_resync"]["bytes"] >= 2 * MiB


def test_a_peer_certificate_from_another_ca_is_refused(pki):
    with two_nodes(tls(pki, "alpha"), tls(pki, "beta_other")) as t:
        t.create_and_up(connected=False)
        st = refused(t, "alpha", "certificate verify failed: unable to get local issuer certificate")
        assert "tls handshake with beta" in st["link_error"]
        refused(t, "beta", "peer refused the handshake: alert unknown CA")
        text = t.ctl("alpha", "status", "r0").stdout
        assert ("  beta connection:Connecting\n    tls-error:certificate verify failed: unable to get local "
                "issuer certificate\n") in text


def test_an_expired_certificate_is_refused_with_the_reason(pki):
    with two_nodes(tls(pki, "alpha"), tls(pki, "beta_expired")) as t:
        t.create_and_up(connected=False)
        refused(t, "alpha", "certificate verify failed: certificate has expired")
        refused(t, "beta", "peer refused the handshake: alert certificate expired")


def test_a_peer_without_tls_is_refused_both_ways(pki):
    with two_nodes(tls(pki, "alpha"), "") as t:       # alpha connects with TLS, beta is plain
        t.create_and_up(connected=False)
        refused(t, "alpha", "peer does not speak TLS: wrong version number")
        t.wait("beta", lambda s: "handshake with alpha" in (s.get("link_error") or ""), "plain side refuses")
        assert t.status("beta")["connection"] == "Connecting"
    with two_nodes("", tls(pki, "beta")) as t:        # alpha plain, beta accepts with TLS
        t.create_and_up(connected=False)
        refused(t, "beta", "peer does not speak TLS")
        assert t.status("alpha")["connection"] == "Connecting"
