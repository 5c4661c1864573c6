# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's Prometheus metrics: event counts kept by the daemon, and a Collector reading a snapshot.

Membership and groups live on the daemon's event loop; a scrape (prometheus server thread) asks
the loop for one snapshot, {"membership": Membership.snapshot(), "groups": GroupManager.
snapshot(), "events": EventCounts.snapshot()}, and builds the families from it in its own
thread. Nothing runs between scrapes: the counts are bumped by the daemon's event handlers.

    membership event / group change --> EventCounts.note_*()      (loop thread)
    GET /metrics --> loop_snapshot() --> HbdCollector.collect()   (metrics thread)

Label `node` is a cluster node (this one or a peer), `group` a haresources group (its first
resource, as hbctl names it).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hbd.group_actions import GroupChanged, GroupState
from hbd.protocol.membership import NodeDead, NodeLate

NODE_STATUSES = ("init", "up", "active", "dead")     # heartbeat's; others reported still show
GROUP_STATES = tuple(s.value for s in GroupState)
# GroupManager's reason for a failover start (its start after initdead, with the peer never
# heard, is INITIAL_REASON: the initial acquisition, not counted)
TAKEOVER_REASON = "takeover from "
SNAPSHOT_TIMEOUT_S = 5.0


class EventCounts:
    """What a snapshot cannot show: how often something happened since hbd started."""

    def __init__(self) -> None:
        self.late: Counter[str] = Counter()          # node -> late heartbeats (warntime passed)
        self.dead: Counter[str] = Counter()          # node -> declared dead (not a clean shutdown)
        self.failovers: Counter[str] = Counter()     # group -> started here taking over from a peer
        self.group_failures: Counter[str] = Counter()

    def note_membership_event(self, e: object, *, initial: bool = False) -> None:
        """`initial`: a NodeDead for a peer never heard since start-up (initdead expired): it was
        not seen alive, so it did not die."""
        if isinstance(e, NodeLate):
            self.late[e.node] += 1
        elif isinstance(e, NodeDead) and not e.graceful and not initial:
            self.dead[e.node] += 1

    def note_group_change(self, a: GroupChanged) -> None:
        if a.new is GroupState.STARTING and a.reason.startswith(TAKEOVER_REASON):
            self.failovers[a.key] += 1
        elif a.new is GroupState.FAILED:
            self.group_failures[a.key] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"late": dict(self.late), "dead": dict(self.dead), "failovers": dict(self.failovers),
                "group_failures": dict(self.group_failures)}


class HbdCollector(Collector):
    """Collect from `snapshot()` (module docstring); a snapshot of None (the daemon not running
    yet, or its loop stuck) gives only hbd_up 0."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        up = GaugeMetricFamily("hbd_up", "1 if hbd answered this scrape from its event loop")
        up.add_metric([], 0.0 if snap is None else 1.0)
        yield up
        if snap is None:
            return
        m, g = snap["membership"], snap["groups"]
        events = snap.get("events") or {}
        local = str(m["node"])
        status = GaugeMetricFamily("hbd_node_status", "Heartbeat status of each node as this node "
                                   "sees it (1 = current)", labels=["node", "status"])
        add_state(status, [local], NODE_STATUSES, m.get("status"))
        alive = GaugeMetricFamily("hbd_node_up", "1 if the node is alive (heartbeats within "
                                  "deadtime)", labels=["node"])
        alive.add_metric([local], 1.0)
        silent = GaugeMetricFamily("hbd_node_silent_seconds", "Time since the node's last "
                                   "heartbeat (absent while it is not alive)", labels=["node"])
        deadtime = GaugeMetricFamily("hbd_node_deadtime_seconds", "Deadtime applied to the node",
                                     labels=["node"])
        late = CounterMetricFamily("hbd_late_heartbeats", "Heartbeats later than warntime",
                                   labels=["node"])
        dead = CounterMetricFamily("hbd_node_deaths", "Times the node was declared dead (not a "
                                   "clean shutdown)", labels=["node"])
        for name, peer in sorted(m.get("peers", {}).items()):
            add_state(status, [name], NODE_STATUSES, peer.get("status"))
            is_alive = peer.get("silent_s") is not None
            alive.add_metric([name], 1.0 if is_alive else 0.0)
            if is_alive:
                silent.add_metric([name], float(peer["silent_s"]))
            deadtime.add_metric([name], float(peer.get("dead_s") or 0))
            late.add_metric([name], float(events.get("late", {}).get(name, 0)))
            dead.add_metric([name], float(events.get("dead", {}).get(name, 0)))
        yield from (status, alive, silent, deadtime, late, dead)
        group_state = GaugeMetricFamily("hbd_group_state", "State of each resource group on this "
                                        "node (1 = current)", labels=["group", "state"])
        group_info = GaugeMetricFamily("hbd_group_info", "Resource group and its home node (the "
                                       "haresources line's node)", labels=["group", "home_node"])
        failovers = CounterMetricFamily("hbd_failovers", "Times this node started the group taking "
                                        "over from a dead or leaving peer", labels=["group"])
        failures = CounterMetricFamily("hbd_group_failures", "Times the group failed to start or "
                                       "stop here", labels=["group"])
        for grp in g.get("groups", []):
            key = str(grp["key"])
            add_state(group_state, [key], GROUP_STATES, grp.get("state"))
            group_info.add_metric([key, str(grp.get("node"))], 1.0)
            failovers.add_metric([key], float(events.get("failovers", {}).get(key, 0)))
            failures.add_metric([key], float(events.get("group_failures", {}).get(key, 0)))
        yield from (group_state, group_info, failovers, failures)
        packets = CounterMetricFamily("hbd_membership_packets", "Membership packet counters by "
                                      "kind (sent, received, lost_packets, rexmit_sent...)",
                                      labels=["kind"])
        for kind, value in sorted(m.get("counters", {}).items()):
            packets.add_metric([kind], float(value))
        yield packets
        generation = GaugeMetricFamily("hbd_generation", "This hbd's generation (bumped at each "
                                       "start, as heartbeat's hb_generation)")
        generation.add_metric([], float(m.get("generation") or 0))
        yield generation


def add_state(family: GaugeMetricFamily, labels: list[str], values: Iterable[str], current: Any) -> None:
    """One series per possible value, 1 for `current`; a value outside the list still shows."""
    current = None if current is None else str(current)
    known = list(values)
    for value in known:
        family.add_metric([*labels, value], 1.0 if value == current else 0.0)
    if current is not None and current not in known:
        family.add_metric([*labels, current], 1.0)


def loop_snapshot(loop: asyncio.AbstractEventLoop, take: Callable[[], dict[str, Any]],
                  timeout_s: float = SNAPSHOT_TIMEOUT_S) -> dict[str, Any] | None:
    """Run `take` on `loop`'s thread (where membership and groups change) and wait for it;
    None if the loop does not answer within timeout_s or `take` cannot run yet."""
    answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def run() -> None:
        try:
            answer.set_result(take())
        except Exception as e:      # handed to the waiting thread below
            answer.set_exception(e)
    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:            # loop closed: hbd is stopping
        return None
    try:
        return answer.result(timeout_s)
    except concurrent.futures.TimeoutError:
        return None


def open_metrics(address_text: str, snapshot: Callable[[], dict[str, Any] | None]) -> Any:
    """hbd --metrics ADDR:PORT: bind now (ConfigError/OSError before hbd detaches), serve
    HbdCollector and the process collector after start(), until close()."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from hacommon.metrics_server import MetricsServer, parse_listen_address
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(namespace="hbd", registry=registry)
    registry.register(HbdCollector(snapshot))
    return MetricsServer(parse_listen_address(address_text), registry, name="hbd")
