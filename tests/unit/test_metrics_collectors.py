# SPDX-License-Identifier: GPL-2.0-or-later
"""The replicad and hbd collectors on fake status dicts, read back through the text exposition
(what Prometheus parses), and the --metrics address parser."""
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hacommon.errors import ConfigError
from hacommon.metrics_server import parse_listen_address
from hbd.group_actions import GroupChanged, GroupState
from hbd.metrics import EventCounts, HbdCollector
from hbd.protocol.membership import NodeDead, NodeLate, NodeUp
from replica.metrics import ENGINE_COUNTERS, ReplicaCollector
from replica.mirror import ACK_LATENCY_BUCKETS, STAT_ARRAYS, STAT_FIELDS


def scrape(collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} as a Prometheus server would read it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def lbl(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def replica_status(**over):
    stats = {name: [0] * ACK_LATENCY_BUCKETS if name in STAT_ARRAYS else 0 for name in STAT_FIELDS}
    stats.update(bytes_written=1 << 20, bytes_read=4096, peer_bytes_sent=(1 << 20) + 4800,
                 writes=256, peer_pending=3, peer_oldest_pending_ns=9_000_000_000,
                 peer_connected=1, active_connections=1)
    status = {"name": "r0", "node": "alpha", "up": True, "role": "Primary", "peer_role": "Secondary",
              "disk_state": "UpToDate", "peer_disk_state": "Inconsistent", "connection": "Connected",
              "replication": "SyncSource", "size": 64 << 20, "stats": stats,
              "out_of_sync_bytes": 12 << 20,
              "resync": {"percent": 25.0, "done_bytes": 4 << 20, "total_bytes": 16 << 20,
                         "rate_bps": 2_000_000, "avg_rate_bps": 1_500_000, "eta_s": 6.0}}
    status.update(over)
    return status


def test_replica_collector_states_counters_resync():
    got = scrape(ReplicaCollector(lambda: [replica_status()], now_ns=lambda: 10_500_000_000))
    r = dict(resource="r0", node="alpha")
    assert got[("replica_role", lbl(**r, state="Primary"))] == 1
    assert got[("replica_role", lbl(**r, state="Secondary"))] == 0
    assert got[("replica_peer_role", lbl(**r, state="Secondary"))] == 1
    assert got[("replica_disk_state", lbl(**r, state="UpToDate"))] == 1
    assert got[("replica_disk_state", lbl(**r, state="Diskless"))] == 0
    assert got[("replica_peer_disk_state", lbl(**r, state="Inconsistent"))] == 1
    assert got[("replica_connection_state", lbl(**r, state="Connected"))] == 1
    assert got[("replica_connection_state", lbl(**r, state="StandAlone"))] == 0
    assert got[("replica_replication_state", lbl(**r, state="SyncSource"))] == 1
    assert got[("replica_written_bytes_total", lbl(**r))] == 1 << 20
    assert got[("replica_read_bytes_total", lbl(**r))] == 4096
    assert got[("replica_replicated_bytes_total", lbl(**r))] == (1 << 20) + 4800
    assert got[("replica_writes_total", lbl(**r))] == 256
    assert got[("replica_out_of_sync_bytes", lbl(**r))] == 12 << 20
    assert got[("replica_size_bytes", lbl(**r))] == 64 << 20
    assert got[("replica_resync_rate_bytes_per_second", lbl(**r))] == 2_000_000
    assert got[("replica_resync_remaining_bytes", lbl(**r))] == 12 << 20
    assert got[("replica_resync_done_ratio", lbl(**r))] == 0.25
    assert got[("replica_peer_pending_requests", lbl(**r))] == 3
    assert got[("replica_peer_oldest_pending_age_seconds", lbl(**r))] == pytest.approx(1.5)
    assert got[("replica_peer_connected", lbl(**r))] == 1
    assert got[("replica_resource_up", lbl(**r))] == 1


def test_replica_collector_ack_latency_histogram():
    buckets = [0] * ACK_LATENCY_BUCKETS
    buckets[0], buckets[6], buckets[-1] = 2, 5, 1       # <1us, [32, 64) us, beyond 4.19 s
    st = replica_status()
    st["stats"].update(peer_ack_us_log2=buckets, peer_acks=8, peer_ack_ns_sum=5_000_250_000)
    got = scrape(ReplicaCollector(lambda: [st]))
    r = dict(resource="r0", node="alpha")
    name = "replica_peer_ack_latency_seconds"
    assert got[(f"{name}_bucket", lbl(**r, le="1e-06"))] == 2
    assert got[(f"{name}_bucket", lbl(**r, le="3.2e-05"))] == 2
    assert got[(f"{name}_bucket", lbl(**r, le="6.4e-05"))] == 7
    assert got[(f"{name}_bucket", lbl(**r, le="4.194304"))] == 7
    assert got[(f"{name}_bucket", lbl(**r, le="+Inf"))] == 8
    assert got[(f"{name}_count", lbl(**r))] == 8
    assert got[(f"{name}_sum", lbl(**r))] == 5.00025
    les = [dict(k[1])["le"] for k in got if k[0] == f"{name}_bucket"]
    assert len(les) == ACK_LATENCY_BUCKETS


def test_replica_collector_down_resource_has_states_but_no_engine_counters():
    down = replica_status(name="r1", up=False, role="Secondary", peer_role="Unknown",
                          disk_state="Diskless", peer_disk_state="DUnknown", connection="StandAlone",
                          replication="Off", stats=None, resync=None, out_of_sync_bytes=None)
    got = scrape(ReplicaCollector(lambda: [replica_status(), down], now_ns=lambda: 0))
    r1 = dict(resource="r1", node="alpha")
    assert got[("replica_resource_up", lbl(**r1))] == 0
    assert got[("replica_disk_state", lbl(**r1, state="Diskless"))] == 1
    assert got[("replica_connection_state", lbl(**r1, state="StandAlone"))] == 1
    assert ("replica_written_bytes_total", lbl(**r1)) not in got
    assert ("replica_out_of_sync_bytes", lbl(**r1)) not in got
    assert got[("replica_resync_done_ratio", lbl(**r1))] == 1
    assert got[("replica_resync_rate_bytes_per_second", lbl(**r1))] == 0
    # r0 still there, each series once
    assert got[("replica_written_bytes_total", lbl(resource="r0", node="alpha"))] == 1 << 20


def test_replica_collector_no_pending_request_is_age_zero_and_unknown_state_shows():
    st0 = replica_status(connection="Teardown")
    st0["stats"]["peer_oldest_pending_ns"] = 0
    got = scrape(ReplicaCollector(lambda: [st0], now_ns=lambda: 10**12))
    r = dict(resource="r0", node="alpha")
    assert got[("replica_peer_oldest_pending_age_seconds", lbl(**r))] == 0
    assert got[("replica_connection_state", lbl(**r, state="Teardown"))] == 1
    assert got[("replica_connection_state", lbl(**r, state="Connected"))] == 0


def test_replica_engine_counters_name_real_stat_fields_and_follow_conventions():
    assert set(ENGINE_COUNTERS) <= set(STAT_FIELDS)
    for name, _ in ENGINE_COUNTERS.values():
        assert name.startswith("replica_") and not name.endswith("_total")
    names = [name for name, _ in ENGINE_COUNTERS.values()]
    assert len(names) == len(set(names))


def test_replica_collector_nothing_up_is_an_empty_scrape_not_an_error():
    got = scrape(ReplicaCollector(lambda: []))
    assert got == {}


def hbd_snapshot(events):
    return {
        "membership": {"node": "alpha", "status": "active", "generation": 7, "seq": 40,
                       "peers": {"beta": {"status": "dead", "generation": 3, "last_seq": 9, "missing": [],
                                          "dead_s": 10.0, "silent_s": None},
                                 "gamma": {"status": "active", "generation": 2, "last_seq": 5, "missing": [],
                                           "dead_s": 10.0, "silent_s": 0.25}},
                       "counters": {"sent": 40, "received": 31, "lost_packets": 2}},
        "groups": {"node": "alpha", "peer": "beta", "phase": "stable",
                   "groups": [{"key": "192.168.85.3", "node": "beta", "state": "started"},
                              {"key": "IPaddr::10.0.0.9", "node": "alpha", "state": "failed"}]},
        "events": events.snapshot(),
    }


def test_hbd_collector_nodes_groups_and_counted_events():
    events = EventCounts()
    for e in (NodeLate("beta", 6.0), NodeLate("beta", 7.5), NodeUp("gamma", 2),
              NodeDead("beta"), NodeDead("gamma", graceful=True)):
        events.note_membership_event(e)
    events.note_group_change(GroupChanged("192.168.85.3", GroupState.STOPPED, GroupState.STARTING,
                                          "takeover from beta"))
    events.note_group_change(GroupChanged("192.168.85.3", GroupState.STARTING, GroupState.STARTED,
                                          "start succeeded"))
    events.note_group_change(GroupChanged("IPaddr::10.0.0.9", GroupState.STOPPED, GroupState.STARTING,
                                          "local group, not held by peer"))
    events.note_group_change(GroupChanged("IPaddr::10.0.0.9", GroupState.STARTING, GroupState.FAILED,
                                          "start failed"))
    got = scrape(HbdCollector(lambda: hbd_snapshot(events)))
    assert got[("hbd_up", ())] == 1
    assert got[("hbd_node_status", lbl(node="alpha", status="active"))] == 1
    assert got[("hbd_node_status", lbl(node="beta", status="dead"))] == 1
    assert got[("hbd_node_status", lbl(node="beta", status="active"))] == 0
    assert got[("hbd_node_up", lbl(node="beta"))] == 0
    assert got[("hbd_node_up", lbl(node="gamma"))] == 1
    assert got[("hbd_node_silent_seconds", lbl(node="gamma"))] == 0.25
    assert ("hbd_node_silent_seconds", lbl(node="beta")) not in got
    assert got[("hbd_late_heartbeats_total", lbl(node="beta"))] == 2
    assert got[("hbd_late_heartbeats_total", lbl(node="gamma"))] == 0
    assert got[("hbd_node_deaths_total", lbl(node="beta"))] == 1
    assert got[("hbd_node_deaths_total", lbl(node="gamma"))] == 0       # a clean shutdown
    assert got[("hbd_failovers_total", lbl(group="192.168.85.3"))] == 1
    assert got[("hbd_failovers_total", lbl(group="IPaddr::10.0.0.9"))] == 0
    assert got[("hbd_group_failures_total", lbl(group="IPaddr::10.0.0.9"))] == 1
    assert got[("hbd_group_state", lbl(group="192.168.85.3", state="started"))] == 1
    assert got[("hbd_group_state", lbl(group="192.168.85.3", state="stopped"))] == 0
    assert got[("hbd_group_state", lbl(group="IPaddr::10.0.0.9", state="failed"))] == 1
    assert got[("hbd_group_info", lbl(group="192.168.85.3", home_node="beta"))] == 1
    assert got[("hbd_membership_packets_total", lbl(kind="lost_packets"))] == 2
    assert got[("hbd_generation", ())] == 7


def test_hbd_collector_without_a_snapshot_reports_only_down():
    assert scrape(HbdCollector(lambda: None)) == {("hbd_up", ()): 0.0}


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9942", ("127.0.0.1", 9942)),
    ("[::1]:9942", ("::1", 9942)),
    (":9100", ("::", 9100)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
])
def test_parse_listen_address_accepts(text, expected):
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("9942", "metrics address '9942': expected ADDR:PORT, [ADDR]:PORT or :PORT"),
    ("127.0.0.1:0", "metrics address '127.0.0.1:0': port '0' is not a number in 1..65535"),
    ("127.0.0.1:http", "metrics address '127.0.0.1:http': port 'http' is not a number in 1..65535"),
    ("::1:9942", "metrics address '::1:9942': an IPv6 address goes in brackets: [ADDR]:PORT"),
    ("[10.0.0.1]:9942", "metrics address '[10.0.0.1]:9942': brackets are for IPv6 addresses only"),
    ("localhost:9942", "metrics address 'localhost:9942': 'localhost' is not an IP address"),
])
def test_parse_listen_address_refuses(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_listen_address(text)
    assert str(exc.value) == message


@given(st.text(max_size=40))
def test_parse_listen_address_fuzz(text):
    """Any text: a valid (ip, port) or ConfigError naming the text, nothing else."""
    try:
        host, port = parse_listen_address(text)
    except ConfigError as exc:
        assert str(exc).startswith(f"metrics address {text!r}: ")
        return
    ipaddress.ip_address(host)
    assert 1 <= port <= 65535


@given(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]")),
       st.integers(1, 65535))
def test_parse_listen_address_round_trip(host, port):
    got_host, got_port = parse_listen_address(f"{host}:{port}")
    assert ipaddress.ip_address(got_host) == ipaddress.ip_address(host.strip("[]"))
    assert got_port == port


def test_grafana_dashboard_names_only_metrics_the_collectors_export():
    import json
    import re
    from pathlib import Path
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-replica-ha.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    used = {m for e in exprs for m in re.findall(r"\b(?:replica|hbd)_[a-z_]+", e)}
    exported = {name for name, _ in scrape(ReplicaCollector(lambda: [replica_status()]))}
    exported |= {name for name, _ in scrape(HbdCollector(lambda: hbd_snapshot(EventCounts())))}
    assert used and used <= exported, used - exported
