# SPDX-License-Identifier: GPL-2.0-or-later
"""Handlers DRBD calls on state changes: `disconnected` when the connection ends, and
`pri-on-incon-degr` when a Primary is left with no UpToDate data (its disk not UpToDate, no
UpToDate peer connected), once per such episode."""
from dataclasses import replace

from replica.config import parse_config
from replica.resource import ResourceRuntime
from replica.roles import ResourceState
from replica.states import ConnState, DiskState, Role

CONF = """resource r0 {
    handlers { disconnected "true"; pri-on-incon-degr "true"; }
    on a { disk /tmp/a; address 10.1.1.1:7789; }
    on b { disk /tmp/b; address 10.1.1.2:7789; }
}
"""


def runtime(calls):
    rt = ResourceRuntime(parse_config(CONF, "/etc/replica.conf").resource("r0"), "a", "/tmp/r0.nbd")
    rt.run_handler = lambda which, *more: calls.append(which)   # type: ignore[method-assign]
    return rt


def test_disconnected_runs_when_the_connection_ends():
    calls: list[str] = []
    rt = runtime(calls)
    up = ResourceState(role=Role.Secondary, conn=ConnState.Connected, disk=DiskState.UpToDate,
                       peer_disk=DiskState.UpToDate)
    rt._state_handlers(up, replace(up, conn=ConnState.Connecting))
    assert calls == ["disconnected"]
    rt._state_handlers(replace(up, conn=ConnState.Connecting), replace(up, conn=ConnState.StandAlone))
    assert calls == ["disconnected"]


def test_pri_on_incon_degr_when_a_primary_loses_its_only_uptodate_data():
    calls: list[str] = []
    rt = runtime(calls)
    # a Primary resyncing from its peer (Inconsistent) loses the peer
    target = ResourceState(role=Role.Primary, conn=ConnState.Connected, disk=DiskState.Inconsistent,
                           peer_disk=DiskState.UpToDate)
    rt._state_handlers(target, replace(target, conn=ConnState.Connecting))
    assert calls == ["disconnected", "pri-on-incon-degr"]
    # still degraded: not again; a healthy Primary alone: never
    calls.clear()
    lost = replace(target, conn=ConnState.Connecting)
    rt._state_handlers(lost, replace(lost, conn=ConnState.StandAlone))
    healthy = ResourceState(role=Role.Primary, conn=ConnState.Connected, disk=DiskState.UpToDate,
                            peer_disk=DiskState.UpToDate)
    rt._state_handlers(healthy, replace(healthy, conn=ConnState.Connecting))
    assert calls == ["disconnected"]
    # a Primary whose disk failed (Diskless) with no UpToDate peer
    calls.clear()
    rt._state_handlers(healthy, replace(healthy, disk=DiskState.Diskless, conn=ConnState.Connecting))
    assert calls == ["disconnected", "pri-on-incon-degr"]
