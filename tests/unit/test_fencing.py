# SPDX-License-Identifier: GPL-2.0-or-later
"""Fencing: DRBD 8.4's fence-peer exit-code contract (replica.fencing.outcome), the promotion
guard it feeds, and hbd's side (hbd.disk_fencing): dead, stonithed, relayed outdate."""
import asyncio
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbd.disk_fencing import (
    MSG_OUTDATE,
    MSG_OUTDATE_REPLY,
    PEER_DOWN,
    PEER_INCONSISTENT,
    PEER_OUTDATED,
    PEER_PRIMARY,
    PEER_STONITHED,
    DiskFencing,
    code_for_outdate,
)
from replica.fencing import FenceCode, needs_fencing, outcome
from replica.roles import Request, ResourceState, request
from replica.states import ConnState, DiskState, Refusal, Role

# a Secondary whose Primary went away, fencing resource-only
ALONE = ResourceState(role=Role.Secondary, conn=ConnState.Connecting, disk=DiskState.UpToDate,
                      peer_disk=DiskState.DUnknown, fencing=True)


def test_promotion_without_an_outdated_peer_is_refused_until_fenced():
    assert needs_fencing(ALONE)
    assert request(ALONE, Request.PROMOTE) is Refusal.PRIMARY_NOP
    assert not needs_fencing(replace(ALONE, fencing=False))
    assert not needs_fencing(replace(ALONE, conn=ConnState.Connected))


@pytest.mark.parametrize("code,peer_disk,text", [
    (3, DiskState.Inconsistent, "peer is inconsistent or worse"),
    (4, DiskState.Outdated, "peer was fenced"),
    (5, DiskState.Outdated, "peer is unreachable, assumed to be dead"),
    (7, DiskState.Outdated, "peer was stonithed"),
])
def test_codes_that_fence_the_peer_let_the_promotion_through(code, peer_disk, text):
    res = outcome(ALONE, code, "resource-and-stonith")
    assert (res.fenced, res.state.peer_disk, res.text, res.error) == (True, peer_disk, text, "")
    assert not needs_fencing(res.state)
    promoted = request(res.state, Request.PROMOTE)
    assert not isinstance(promoted, Refusal) and promoted.role is Role.Primary


def test_peer_down_is_not_enough_without_up_to_date_data():
    s = replace(ALONE, disk=DiskState.Consistent)
    res = outcome(s, FenceCode.PEER_DOWN, "resource-only")
    assert (res.fenced, res.state, res.text) == (
        False, s, "peer unreachable, doing nothing since disk != UpToDate")


def test_peer_primary_outdates_a_secondary_itself_and_promotion_stays_refused():
    res = outcome(ALONE, FenceCode.PEER_PRIMARY, "resource-only")
    assert (res.fenced, res.state.disk, res.text) == (False, DiskState.Outdated, "peer is active")
    assert res.error == "Peer is primary, outdating myself."
    assert request(res.state, Request.PROMOTE) is Refusal.NO_UP_TO_DATE_DISK
    primary = replace(ALONE, role=Role.Primary)
    assert outcome(primary, 6, "resource-only").state == primary     # a Primary stays as it is


def test_stonith_code_without_stonith_policy_is_logged_as_drbd_does():
    res = outcome(ALONE, 7, "resource-only")
    assert res.fenced and res.error == "fence-peer() = 7 && fencing != Stonith !!!"


@given(st.integers(min_value=-(2 ** 31), max_value=2 ** 31))
def test_any_other_exit_code_is_a_broken_helper_and_changes_nothing(code):
    res = outcome(ALONE, code, "resource-only")
    if code in (3, 4, 5, 6, 7):
        return
    assert (res.fenced, res.state) == (False, ALONE)
    assert res.text == f"fence-peer helper broken, returned {code}"


def test_outdate_is_refused_while_connected_and_for_a_primary():
    assert request(replace(ALONE, conn=ConnState.Connected), Request.OUTDATE) is \
        Refusal.CONNECTED_OUTDATES
    assert request(replace(ALONE, role=Role.Primary), Request.OUTDATE) is Refusal.NO_UP_TO_DATE_DISK
    assert request(replace(ALONE, disk=DiskState.Inconsistent), Request.OUTDATE) is \
        Refusal.LOWER_THAN_OUTDATED
    assert request(ALONE, Request.OUTDATE).disk is DiskState.Outdated


# --- hbd's side ---------------------------------------------------------------------------------

def test_replicactl_outdate_results_map_to_fence_peer_codes():
    assert code_for_outdate(0, "") == PEER_OUTDATED
    assert code_for_outdate(5, "") == PEER_INCONSISTENT
    assert code_for_outdate(17, "Primary/Unknown") == PEER_PRIMARY
    assert code_for_outdate(17, "Secondary/Unknown") == PEER_DOWN
    assert code_for_outdate(1, "") == PEER_DOWN


class Cluster:
    """Two DiskFencing objects wired by a fake heartbeat link (messages delivered by hand)."""

    def __init__(self, status: dict[str, str]):
        self.status = status
        self.sent: list[tuple[str, str, dict]] = []
        self.journal: list[dict] = []

    def make(self, node: str, outdate_rc: int = 0, role: str = "Secondary/Unknown") -> DiskFencing:
        f = DiskFencing(node=node, node_status=lambda n: self.status[n],
                        send_message=lambda t, fields: self.sent.append((node, t, dict(fields))),
                        journal=lambda what, **kw: self.journal.append({"what": what, **kw}),
                        env={"REPLICA_RUN_DIR": "/nonexistent"})

        async def fake_replicactl(*args, stdout=False):
            return (outdate_rc, "") if args[0] == "outdate" else (0, role)
        f._replicactl = fake_replicactl        # the process is tested end to end (e2e)
        return f


def test_fence_peer_answers_dead_and_stonithed_from_membership():
    c = Cluster({"beta": "dead"})
    a = c.make("alpha")

    async def run():
        assert (await a.fence_peer("beta", "r0"))["code"] == PEER_DOWN
        a.stonithed.add("beta")
        assert (await a.fence_peer("beta", "r0"))["code"] == PEER_STONITHED
        a.node_up("beta")
        assert "beta" not in a.stonithed
    asyncio.run(run())
    assert c.sent == []


@pytest.mark.parametrize("rc,role,code", [(0, "", PEER_OUTDATED), (5, "", PEER_INCONSISTENT),
                                          (17, "Primary/Unknown", PEER_PRIMARY)])
def test_fence_peer_relays_outdate_to_a_live_peer(rc, role, code):
    c = Cluster({"beta": "active"})
    a, b = c.make("alpha"), c.make("beta", outdate_rc=rc, role=role)

    async def deliver():
        while True:
            await asyncio.sleep(0.001)
            while c.sent:
                src, t, fields = c.sent.pop(0)
                dst = b if src == "alpha" else a
                assert dst.receive_message(src, t, fields)

    async def run():
        pump = asyncio.create_task(deliver())
        reply = await a.fence_peer("beta", "r0")
        pump.cancel()
        return reply
    assert asyncio.run(run())["code"] == code
    assert any(j.get("state") == "outdate requested" for j in c.journal)


def test_messages_for_another_node_or_of_other_types_are_left_alone():
    c = Cluster({"beta": "active"})
    a = c.make("alpha")
    assert not a.receive_message("beta", "resource", {})
    assert a.receive_message("beta", MSG_OUTDATE_REPLY, {"dest": "gamma", "reqid": "x", "code": "4"})
    assert a.receive_message("beta", MSG_OUTDATE, {"dest": "gamma", "res": "r0"})
    assert c.sent == []
