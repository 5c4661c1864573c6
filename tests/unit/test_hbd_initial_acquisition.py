# SPDX-License-Identifier: GPL-2.0-or-later
"""The start-up acquisition after initdead (peer never heard) is not a failover: not in the group
manager's reasons, hbd.metrics' failover and death counts, nor hbd.availability's accounting.
A real takeover (a peer heard, then dead) still is."""
import pytest

from hbd.availability import compute
from hbd.groups import INITIAL_REASON, GroupChanged, StartGroup
from hbd.metrics import EventCounts
from hbd.protocol.membership import NodeDead
from tests.unit.test_hbd_groups import Cluster


def starts(c, node):
    return [a.reason for n, a in c.log if n == node and isinstance(a, StartGroup)]


@pytest.mark.parametrize("stonith", [False, True])
def test_lone_node_after_initdead_acquires_initially_not_by_takeover(stonith):
    c = Cluster(start=("ha1",), stonith=stonith)
    c.pump()
    c.advance(10.1)
    assert c.held("ha1") == {"10.0.17.26", "10.0.17.27"}
    assert starts(c, "ha1") == [f"{INITIAL_REASON}: ha2 never heard"] * 2
    counts = EventCounts()
    for _n, a in c.log:
        if isinstance(a, GroupChanged):
            counts.note_group_change(a)
    assert counts.failovers == {}
    assert c.sent("ha1", "resource")[-1]["info"] == "mach_down"     # heartbeat's report is unchanged


def test_a_peer_heard_then_dead_is_still_a_takeover():
    c = Cluster()
    c.pump()
    c.kill("ha1")
    c.pump()
    assert starts(c, "ha2")[-1] == "takeover from ha1"
    counts = EventCounts()
    for n, a in c.log:
        if n == "ha2" and isinstance(a, GroupChanged):
            counts.note_group_change(a)
    assert counts.failovers == {"10.0.17.26": 1}


def test_peer_returning_after_initial_acquisition_then_dying_is_a_takeover():
    c = Cluster(start=("ha1",), auto_failback="off")
    c.pump()
    c.advance(10.1)
    c.boot("ha2")
    c.pump()
    c.kill("ha1")
    c.pump()
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    assert set(starts(c, "ha2")) == {"takeover from ha1"}


def test_node_death_metric_skips_initdead_verdicts():
    counts = EventCounts()
    counts.note_membership_event(NodeDead("ha2"), initial=True)
    assert counts.dead == {}
    counts.note_membership_event(NodeDead("ha2"))
    assert counts.dead == {"ha2": 1}


def node(t, writer, peer, state, **kw):
    return {"time": t, "event": "node", "node": writer, "peer": peer, "state": state, **kw}


def one(report, kind, name):
    [s] = [s for s in report.subjects if (s.kind, s.name) == (kind, name)]
    return s


def test_availability_initdead_verdict_is_unknown_not_a_failure():
    """ha1's journal: a first run with ha2 up and holding g2, a clean stop, then a start where ha2
    is never heard (initdead): ha1 cannot know when or how ha2 went, so neither ha2 nor g2 fails
    there; ha1's own group, acquired at start-up, is up from its start."""
    recs = [{"time": 0, "event": "daemon", "node": "ha1", "state": "start"},
            node(2, "ha1", "ha2", "up"),
            {"time": 3, "event": "holding", "node": "ha1", "group": "g2", "holder": "ha2", "state": "up"},
            {"time": 3, "event": "group", "node": "ha1", "group": "g1", "state": "up"},
            {"time": 50, "event": "group", "node": "ha1", "group": "g1", "state": "down", "planned": True},
            {"time": 51, "event": "daemon", "node": "ha1", "state": "stop"},
            {"time": 60, "event": "daemon", "node": "ha1", "state": "start"},
            node(62, "ha1", "ha2", "dead", graceful=False, planned=False, initdead=True,
                 why="not heard within initdead_s=2 of start-up"),
            {"time": 62, "event": "group", "node": "ha1", "group": "g2", "state": "unknown", "planned": False,
             "old": "stopped", "new": "starting", "reason": "initial acquisition after initdead: ha2 never heard"},
            {"time": 63, "event": "group", "node": "ha1", "group": "g2", "state": "up"}]
    r = compute(recs, until=100)
    assert one(r, "node", "ha2").failures == 0
    g2 = one(r, "group", "g2")
    assert (g2.failures, g2.uptime_s) == (0, 59 + 37)       # 3..62 (ha2), unknown 62..63, 63..100 (ha1)
    # as hbd wrote them before: a plain death, the start "down": ha2 and g2 each fail once
    recs[7] = node(62, "ha1", "ha2", "dead", graceful=False, planned=False)
    recs[8] = dict(recs[8], state="down")
    r = compute(recs, until=100)
    assert one(r, "node", "ha2").failures == 1 and one(r, "group", "g2").failures == 1
