# SPDX-License-Identifier: GPL-2.0-or-later
"""The Prometheus endpoints, scraped as Prometheus would: the server on loopback, then a real
replicad pair and a real hbd pair in network namespaces, each bound on its node's own address
(`--metrics ADDR:PORT` / REPLICA_METRICS) and scraped with curl inside the namespace."""
import signal
import socket
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from hacommon.metrics_server import MetricsServer
from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_module, requires_root
from tests.hbd_netns import ADDRS, running_lab
from tests.integration.netns import NODES, MiB, TwoNodes

PORT = 9942


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def lbl(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_server_answers_scrapes_and_stops_on_close():
    registry = CollectorRegistry()
    c = Counter("t_things", "things", registry=registry)
    c.inc(3)
    server = MetricsServer(("127.0.0.1", 0), registry, name="test").start()
    try:
        for _ in range(2):      # one request at a time, the loop goes on after each
            with urllib.request.urlopen(server.url(), timeout=5) as r:
                assert r.status == 200
                assert parse(r.read().decode())[("t_things_total", ())] == 3
        # a client that connects and says nothing does not stop the next scrape forever
        idle = socket.create_connection(server.address, timeout=5)
        idle.close()
        with urllib.request.urlopen(server.url(), timeout=5) as r:
            assert r.status == 200
    finally:
        server.close()
    assert not server._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2)


def test_server_port_taken_is_an_error_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as exc:
            MetricsServer(("127.0.0.1", port), CollectorRegistry(), name="replicad", bind_retry_s=0.2)
        assert str(exc.value).startswith(f"[Errno 98] replicad: metrics: cannot listen on 127.0.0.1:{port}: ")


# --- replicad pair ----------------------------------------------------------------------------

@pytest.fixture
def nodes():
    requires_root()
    requires_commands("ip", "curl")
    with TwoNodes(size=32 * MiB, disk="resync-rate 200M;") as t:
        yield t


def scrape_replicad(t: TwoNodes, node: str) -> dict:
    res = t.lab.run(t.ns[node], "curl", "-sS", "--max-time", "5", f"http://{t.addr[node]}:{PORT}/metrics")
    assert res.returncode == 0, f"{node}: curl: {res.stderr}\n{t.log(node)[-2000:]}"
    return parse(res.stdout)


@pytest.mark.root
def test_replicad_pair_endpoint_shows_roles_states_and_bytes(nodes, monkeypatch):
    t = nodes
    for node in NODES:
        t.ctl(node, "create-md", "r0")
    for node in NODES:      # replicactl starts replicad, which inherits REPLICA_METRICS
        monkeypatch.setenv("REPLICA_METRICS", f"{t.addr[node]}:{PORT}")
        t.ctl(node, "up", "r0")
    t.wait_connected()
    assert f"metrics: serving http://{t.addr['alpha']}:{PORT}/metrics" in t.log("alpha")
    t.initial_sync("alpha")
    size = t.data_size()

    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(t.uri("alpha"))
    h.pwrite(b"\x5a" * MiB, 0)
    h.flush()
    h.shutdown()

    a = dict(resource="r0", node="alpha")
    b = dict(resource="r0", node="beta")

    def settled():
        got = {n: scrape_replicad(t, n) for n in NODES}
        return got if got["alpha"].get(("replica_peer_pending_requests", lbl(**a))) == 0 else None
    got = wait_for(settled, "alpha's peer requests all acknowledged", 10)
    ga, gb = got["alpha"], got["beta"]
    assert ga[("replica_role", lbl(**a, state="Primary"))] == 1
    assert ga[("replica_role", lbl(**a, state="Secondary"))] == 0
    assert ga[("replica_peer_role", lbl(**a, state="Secondary"))] == 1
    assert gb[("replica_role", lbl(**b, state="Secondary"))] == 1
    for g, r in ((ga, a), (gb, b)):
        assert g[("replica_disk_state", lbl(**r, state="UpToDate"))] == 1
        assert g[("replica_peer_disk_state", lbl(**r, state="UpToDate"))] == 1
        assert g[("replica_connection_state", lbl(**r, state="Connected"))] == 1
        assert g[("replica_replication_state", lbl(**r, state="Established"))] == 1
        assert g[("replica_out_of_sync_bytes", lbl(**r))] == 0
        assert g[("replica_size_bytes", lbl(**r))] == size
        assert g[("replica_resource_up", lbl(**r))] == 1
        assert g[("replica_peer_connected", lbl(**r))] == 1
    assert ga[("replica_written_bytes_total", lbl(**a))] >= MiB
    assert ga[("replica_replicated_bytes_total", lbl(**a))] >= size + MiB     # resync + the write
    assert ga[("replica_resync_acked_bytes_total", lbl(**a))] >= size
    assert gb[("replica_resync_received_bytes_total", lbl(**b))] >= size
    assert gb[("replica_peer_applied_frames_total", lbl(**b))] >= 1
    assert ga[("replica_resync_done_ratio", lbl(**a))] == 1
    assert ga[("replicad_process_open_fds", ())] > 0
    # the peer ack latency histogram C counted: every write acked (1 MiB: at least one frame),
    # cumulative buckets, the +Inf one equal to the count, a sum between 1 us and 60 s per ack
    hist = "replica_peer_ack_latency_seconds"
    count = ga[(f"{hist}_count", lbl(**a))]
    assert count >= 1 and ga[(f"{hist}_bucket", lbl(**a, le="+Inf"))] == count
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in ga.items() if k[0] == f"{hist}_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert count * 1e-6 <= ga[(f"{hist}_sum", lbl(**a))] <= count * 60
    assert gb[(f"{hist}_count", lbl(**b))] == 0                 # the Secondary sent no write
    assert gb[("replica_peer_received_bytes_total", lbl(**b))] >= size + MiB

    # a disconnected peer shows at the next scrape, without the daemon having polled anything
    t.ctl("beta", "disconnect", "r0")
    t.wait("alpha", lambda s: s["connection"] != "Connected", "alpha sees beta gone")
    ga = scrape_replicad(t, "alpha")
    assert ga[("replica_connection_state", lbl(**a, state="Connected"))] == 0
    assert ga[("replica_peer_disk_state", lbl(**a, state="DUnknown"))] == 1


# --- hbd pair ---------------------------------------------------------------------------------

FAST = {"keepalive": "200ms", "deadtime": "1", "initdead": "2", "auto_failback": "off"}
GROUP = "10.0.17.26"


@pytest.fixture
def lab(tmp_path):
    requires_commands("curl")
    yield from running_lab(tmp_path, "ip", "ping")


def scrape_hbd(lab, n: str) -> dict:
    res = lab.net.run(lab.ns[n], "curl", "-sS", "--max-time", "5", f"http://{ADDRS[n]}:{PORT + 1}/metrics")
    assert res.returncode == 0, f"{n}: curl: {res.stderr}\n{lab.logs_text()}"
    return parse(res.stdout)


@pytest.mark.root
def test_hbd_pair_endpoint_shows_nodes_groups_and_a_failover(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST))     # write_config consumes the dict
    for n in ("ha1", "ha2"):
        lab.start_hbd(n, "--metrics", f"{ADDRS[n]}:{PORT + 1}")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the group", 15, details=lab.logs_text)

    def joined():
        g1, g2 = scrape_hbd(lab, "ha1"), scrape_hbd(lab, "ha2")
        ok = (g1.get(("hbd_node_status", lbl(node="ha2", status="active"))) == 1
              and g2.get(("hbd_node_status", lbl(node="ha1", status="active"))) == 1
              and g1.get(("hbd_group_state", lbl(group=GROUP, state="started"))) == 1)
        return (g1, g2) if ok else None
    g1, g2 = wait_for(joined, "both nodes active and ha1's group started, as scraped", 15,
                      details=lab.logs_text)
    assert g1[("hbd_up", ())] == 1
    assert g1[("hbd_node_up", lbl(node="ha2"))] == 1
    assert g2[("hbd_group_state", lbl(group=GROUP, state="stopped"))] == 1
    assert g2[("hbd_failovers_total", lbl(group=GROUP))] == 0
    assert g2[("hbd_node_deaths_total", lbl(node="ha1"))] == 0
    assert g1[("hbd_group_info", lbl(group=GROUP, home_node="ha1"))] == 1
    assert g1[("hbd_membership_packets_total", lbl(kind="sent"))] > 0

    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGKILL)

    def taken_over():
        g = scrape_hbd(lab, "ha2")
        return g if g.get(("hbd_group_state", lbl(group=GROUP, state="started"))) == 1 else None
    g2 = wait_for(taken_over, "ha2's group started after ha1's death, as scraped", 15,
                  details=lab.logs_text)
    assert time.monotonic() - t0 < 10
    assert g2[("hbd_failovers_total", lbl(group=GROUP))] == 1
    assert g2[("hbd_node_deaths_total", lbl(node="ha1"))] == 1
    assert g2[("hbd_node_status", lbl(node="ha1", status="dead"))] == 1
    assert g2[("hbd_node_up", lbl(node="ha1"))] == 0
    assert ("hbd_node_silent_seconds", lbl(node="ha1")) not in g2
