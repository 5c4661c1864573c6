# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's Prometheus metrics: one Collector that turns resource status dicts into families.

Everything is read at scrape time from what `replicactl status --json` shows (ResourceRuntime.
status(), whose "stats" are the C engine's counters, replica.mirror Engine.stats()): no thread,
no timer, no copy of the counters. Labels: `resource` and `node` (this node's name in the
config). States are enum-style gauges, one series per possible value, 1 for the current one
(node_exporter's systemd unit state), so `replica_connection_state{state="Connected"} == 0`
alerts without knowing the other names.

Peer ack latency: `replica_peer_ack_latency_seconds`, a histogram counted in C at ack time
(rm_stats.peer_ack_us_log2: log2 buckets of microseconds, from the frame handed to the
transport to its RECV_ACK/WRITE_ACK; replica.ack_latency), with `le` = 1us, 2us, 4us ...
4.19s, +Inf. Beside it `replica_peer_oldest_pending_age_seconds`: how long the oldest write
still unacknowledged has waited (a stuck peer shows there before any ack comes back).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from replica.ack_latency import cumulative_buckets
from replica.states import ConnState, DiskState, ReplState, Role

LABELS = ("resource", "node")

# rm_stats field -> (metric name without _total, help); counters since the resource came up
ENGINE_COUNTERS: dict[str, tuple[str, str]] = {
    "bytes_written": ("replica_written_bytes", "Bytes written to the device (local writes)"),
    "bytes_read": ("replica_read_bytes", "Bytes read from the device"),
    "peer_bytes_sent": ("replica_replicated_bytes", "Bytes sent to the peer on the replication link"),
    "writes": ("replica_writes", "Write requests served"),
    "reads": ("replica_reads", "Read requests served"),
    "flushes": ("replica_flushes", "Flush requests served"),
    "trims": ("replica_trims", "Trim requests served"),
    "zeroes": ("replica_zeroes", "Write-zeroes requests served"),
    "io_errors": ("replica_io_errors", "Local I/O errors answered with an error"),
    "refused": ("replica_refused_requests", "Requests refused (range, read-only, overflow)"),
    "connections": ("replica_frontend_connections", "Frontend connections served"),
    "peer_writes_sent": ("replica_peer_writes", "Write, trim and zeroes frames sent to the peer"),
    "peer_frames_applied": ("replica_peer_applied_frames", "Frames from the peer applied to the local disk"),
    "dirty_marked": ("replica_out_of_sync_marked_blocks", "4 KiB blocks marked out of sync"),
    "resync_bytes_sent": ("replica_resync_sent_bytes", "SyncSource: resync data bytes sent"),
    "resync_bytes_acked": ("replica_resync_acked_bytes", "SyncSource: resync bytes acknowledged"),
    "resync_bytes_received": ("replica_resync_received_bytes", "SyncTarget: resync data bytes written"),
    "al_misses": ("replica_al_misses", "Writes that waited for an activity-log transaction"),
    "verify_bytes_done": ("replica_verify_done_bytes", "VerifyS: bytes compared by online verify"),
    "verify_bytes_checked": ("replica_verify_checked_bytes", "VerifyT: bytes compared by online verify"),
    "verify_oos_blocks": ("replica_verify_out_of_sync_blocks", "Blocks online verify found different"),
    "integrity_failures": ("replica_integrity_failures", "Peer frames whose data-integrity digest did not match"),
    "events_dropped": ("replica_engine_events_dropped", "Engine events lost to a full queue"),
    "peer_bytes_received": ("replica_peer_received_bytes", "Bytes received from the peer on the "
                            "replication link (frames and payloads)"),
}

STATES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # status key, metric, help, the possible values
    ("role", "replica_role", "Role of this node for the resource (1 = current)", tuple(Role)),
    ("peer_role", "replica_peer_role", "Role of the peer as last known (1 = current)", tuple(Role)),
    ("disk_state", "replica_disk_state", "Local disk state (1 = current)", tuple(DiskState)),
    ("peer_disk_state", "replica_peer_disk_state", "Peer disk state as last known (1 = current)",
     tuple(DiskState)),
    ("connection", "replica_connection_state", "Connection state (1 = current)", tuple(ConnState)),
    ("replication", "replica_replication_state", "Replication state (1 = current)", tuple(ReplState)),
)


class ReplicaCollector(Collector):
    """Collect from `snapshot()`, a list of ResourceRuntime.status() dicts taken at scrape time.

    `now_ns()` is CLOCK_MONOTONIC in ns (the engine's clock for peer_oldest_pending_ns)."""

    def __init__(self, snapshot: Callable[[], Iterable[dict[str, Any]]],
                 now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.snapshot = snapshot
        self.now_ns = now_ns

    def describe(self) -> Iterable[Metric]:
        return []       # no collect() at registration: the daemon may not be ready yet

    def collect(self) -> Iterator[Metric]:
        statuses = list(self.snapshot())
        now_ns = self.now_ns()
        up = GaugeMetricFamily("replica_resource_up", "1 if the resource is up (attached or "
                               "connecting) on this node", labels=LABELS)
        states = {key: GaugeMetricFamily(name, text, labels=[*LABELS, "state"])
                  for key, name, text, _ in STATES}
        size = GaugeMetricFamily("replica_size_bytes", "Usable size of the device", labels=LABELS)
        oos = GaugeMetricFamily("replica_out_of_sync_bytes", "Bytes marked out of sync in the bitmap",
                                labels=LABELS)
        counters = {field: CounterMetricFamily(name, text, labels=LABELS)
                    for field, (name, text) in ENGINE_COUNTERS.items()}
        pending = GaugeMetricFamily("replica_peer_pending_requests",
                                    "Requests sent to the peer and not yet acknowledged", labels=LABELS)
        oldest = GaugeMetricFamily("replica_peer_oldest_pending_age_seconds",
                                   "Age of the oldest unacknowledged peer request (0 if none)",
                                   labels=LABELS)
        connected = GaugeMetricFamily("replica_peer_connected", "1 while a peer link is attached",
                                      labels=LABELS)
        frontends = GaugeMetricFamily("replica_frontend_active_connections",
                                      "Frontend (NBD, FUSE) connections open now", labels=LABELS)
        rate = GaugeMetricFamily("replica_resync_rate_bytes_per_second",
                                 "Resync rate now (0 when no resync runs)", labels=LABELS)
        remaining = GaugeMetricFamily("replica_resync_remaining_bytes",
                                      "Bytes left to resync (0 when no resync runs)", labels=LABELS)
        ratio = GaugeMetricFamily("replica_resync_done_ratio", "Fraction of the resync done "
                                  "(1 when no resync runs)", labels=LABELS)
        verify_ratio = GaugeMetricFamily("replica_verify_done_ratio", "Fraction of the online "
                                         "verify done (absent when none runs)", labels=LABELS)
        ack_latency = HistogramMetricFamily(
            "replica_peer_ack_latency_seconds", "Time from sending a write to the peer to its "
            "acknowledgement (RECV_ACK under protocol B, WRITE_ACK under C)", labels=LABELS)
        for s in statuses:
            labels = [str(s["name"]), str(s["node"])]
            up.add_metric(labels, 1.0 if s.get("up") else 0.0)
            for key, _, _, values in STATES:
                add_state(states[key], labels, values, s.get(key))
            size.add_metric(labels, float(s.get("size") or 0))
            if s.get("out_of_sync_bytes") is not None:
                oos.add_metric(labels, float(s["out_of_sync_bytes"]))
            stats = s.get("stats")
            if stats:
                for field, family in counters.items():
                    if field in stats:
                        family.add_metric(labels, float(stats[field]))
                pending.add_metric(labels, float(stats.get("peer_pending", 0)))
                sent_ns = int(stats.get("peer_oldest_pending_ns", 0))
                oldest.add_metric(labels, max(0, now_ns - sent_ns) / 1e9 if sent_ns else 0.0)
                connected.add_metric(labels, float(stats.get("peer_connected", 0)))
                frontends.add_metric(labels, float(stats.get("active_connections", 0)))
                if "peer_ack_us_log2" in stats:
                    ack_latency.add_metric(
                        labels, [(_le(le), float(n)) for le, n in
                                 cumulative_buckets(stats["peer_ack_us_log2"])],
                        sum_value=stats.get("peer_ack_ns_sum", 0) / 1e9)
            resync = s.get("resync")
            if resync:
                rate.add_metric(labels, float(resync.get("rate_bps") or 0))
                remaining.add_metric(labels, float(max(0, resync["total_bytes"] - resync["done_bytes"])))
                ratio.add_metric(labels, float(resync["percent"]) / 100.0)
            else:
                rate.add_metric(labels, 0.0)
                remaining.add_metric(labels, 0.0)
                ratio.add_metric(labels, 1.0)
            verify = s.get("verify")
            if verify and "percent" in verify:
                verify_ratio.add_metric(labels, float(verify["percent"]) / 100.0)
        yield up
        yield from states.values()
        yield from (size, oos)
        yield from counters.values()
        yield from (pending, oldest, connected, frontends, rate, remaining, ratio, verify_ratio,
                    ack_latency)


def _le(bound_s: float) -> str:
    """A bucket bound as Prometheus writes it: +Inf, else the shortest exact float text."""
    return "+Inf" if bound_s == float("inf") else repr(bound_s)


def add_state(family: GaugeMetricFamily, labels: list[str], values: Iterable[str], current: Any) -> None:
    """One series per possible value, 1 for `current`; a value outside the list still shows."""
    current = None if current is None else str(current)
    known = [str(v) for v in values]
    for value in known:
        family.add_metric([*labels, value], 1.0 if value == current else 0.0)
    if current is not None and current not in known:
        family.add_metric([*labels, current], 1.0)


LOCK_WAIT_S = 2.0       # a resource busy longer (a command running) is left out of this scrape


def snapshot_resources(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """Status of every resource the daemon knows, each under its own lock (never the daemon's:
    a scrape must not wait for a command such as `up` waiting for its peer)."""
    out = []
    for rt in list(resources.values()):
        if not rt.lock.acquire(timeout=LOCK_WAIT_S):
            continue
        try:
            out.append(rt.status())
        finally:
            rt.lock.release()
    return out


def open_metrics(address_text: str, resources: dict[str, Any]) -> Any:
    """replicad --metrics ADDR:PORT: bind now (errors raise ConfigError or OSError before the
    daemon detaches), serve a registry holding ReplicaCollector and the process collector (CPU,
    memory, open fds) once start() is called, until close()."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from hacommon.metrics_server import MetricsServer, parse_listen_address
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(namespace="replicad", registry=registry)
    registry.register(ReplicaCollector(lambda: snapshot_resources(resources)))
    return MetricsServer(parse_listen_address(address_text), registry, name="replicad")
