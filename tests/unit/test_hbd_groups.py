# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.groups: failover / failback / standby decisions, two machines wired together, no I/O."""
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError, StateChangeRefused
from hbd.groups import (
    FenceNode,
    GroupChanged,
    GroupManager,
    GroupState,
    Notice,
    Phase,
    SendMessage,
    ShutdownComplete,
    StartGroup,
    StopGroup,
)


@dataclass(frozen=True)
class Group:
    """Stand-in for hbd.haresources.ResourceGroup (same attributes the manager reads)."""
    node: str
    name: str


GROUPS = (Group("ha1", "10.0.17.26"), Group("ha2", "10.0.17.27"))


class Cluster:
    """Two GroupManagers joined by a perfect link; scripts succeed unless told otherwise."""

    def __init__(self, auto_failback="on", stonith=False, groups=GROUPS, start=("ha1", "ha2")):
        self.now = 0.0
        self.auto_failback, self.stonith, self.groups = auto_failback, stonith, groups
        self.m = {}
        self.log = []            # (node, action)
        self.fail_start = set()  # (node, key)
        self.fail_stop = set()
        self.fence_ok = True
        self.fenced = []
        self.link = True
        self.alive = set()
        for n in start:
            self.boot(n)

    def boot(self, n):
        self.m[n] = GroupManager(n, ("ha1", "ha2"), self.groups, auto_failback=self.auto_failback,
                                 stonith_configured=self.stonith, initdead_s=10, now=self.now)
        self.alive.add(n)
        other = "ha2" if n == "ha1" else "ha1"
        if other in self.alive and self.link:
            self.m[n].node_up(other, self.now)
            self.m[other].node_up(n, self.now)

    def kill(self, n, clean=False):
        self.alive.discard(n)
        other = "ha2" if n == "ha1" else "ha1"
        if other in self.alive:
            self.m[other].node_dead(n, self.now, clean=clean)

    def peer(self, n):
        return "ha2" if n == "ha1" else "ha1"

    def pump(self, rounds=100):
        for _ in range(rounds):
            moved = False
            for n in list(self.alive):
                mgr = self.m[n]
                while (a := mgr.next_action()) is not None:
                    moved = True
                    self.log.append((n, a))
                    if isinstance(a, SendMessage):
                        p = self.peer(n)
                        if p in self.alive and self.link:
                            self.m[p].receive_message(n, a.msg_type, a.fields, self.now)
                    elif isinstance(a, StartGroup):
                        mgr.group_started(a.key, (n, a.key) not in self.fail_start, self.now)
                    elif isinstance(a, StopGroup):
                        mgr.group_stopped(a.key, (n, a.key) not in self.fail_stop, self.now)
                    elif isinstance(a, FenceNode):
                        self.fenced.append((n, a.node, self.fence_ok))
                        mgr.fence_done(a.node, self.fence_ok, self.now)
                    elif isinstance(a, ShutdownComplete):
                        self.alive.discard(n)
                        if a.clean is False:
                            pass
            if not moved:
                return
        raise AssertionError("actions did not settle")

    def advance(self, dt):
        self.now += dt
        for n in list(self.alive):
            t = self.m[n].get_timer()
            if t is not None and t <= self.now:
                self.m[n].handle_timer(self.now)
        self.pump()

    def held(self, n):
        return {k for k, s in self.m[n].state.items() if s is GroupState.STARTED}

    def sent(self, n, msg_type):
        return [a.fields for (who, a) in self.log if who == n and isinstance(a, SendMessage)
                and a.msg_type == msg_type]


def test_both_start_each_takes_its_own_groups():
    c = Cluster()
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}
    assert c.m["ha1"].rscstatus() == "local" and c.m["ha1"].phase is Phase.STABLE
    assert c.sent("ha1", "starting")
    assert c.sent("ha1", "resource")[-1] == {"rsc_hold": "local", "rtype": "full", "isstable": "1",
                                             "info": "req_our_resources()"}


def test_lone_node_waits_initdead_then_takes_everything():
    c = Cluster(start=("ha1",))
    c.pump()
    assert c.held("ha1") == set()
    c.advance(9.9)
    assert c.held("ha1") == set()
    c.advance(0.2)
    assert c.held("ha1") == {"10.0.17.26", "10.0.17.27"}
    assert c.m["ha1"].rscstatus() == "all"


def test_initdead_fires_once_while_the_takeover_it_started_runs():
    c = Cluster(start=("ha1",))
    c.pump()
    mgr = c.m["ha1"]
    c.now = 10.1
    mgr.handle_timer(c.now)            # initdead expired: the takeover starts (scripts pending)
    assert mgr.get_timer() is None     # before: the expired initdead again, on every loop pass
    mgr.handle_timer(c.now + 0.01)
    c.pump()
    warnings = [a for n, a in c.log if "initdead expired" in str(a)]
    assert len(warnings) == 1, warnings
    assert c.held("ha1") == {"10.0.17.26", "10.0.17.27"}


@pytest.mark.parametrize("mode", ["on", "off", "legacy"])
def test_peer_death_takes_over(mode):
    c = Cluster(auto_failback=mode)
    c.pump()
    c.kill("ha1")
    c.pump()
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    assert c.sent("ha2", "resource")[-1]["info"] == "mach_down"


def test_failback_on_returns_group_to_preferred_node():
    c = Cluster(auto_failback="on")
    c.pump()
    c.kill("ha1")
    c.pump()
    c.boot("ha1")
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}
    # the holder stopped before the preferred node started (no double ownership)
    order = [(n, type(a).__name__) for n, a in c.log if isinstance(a, (StartGroup, StopGroup))
             and a.key == "10.0.17.26"]
    assert order[-2:] == [("ha2", "StopGroup"), ("ha1", "StartGroup")]
    asks = [f["info"] for f in c.sent("ha2", "ask_resources")]
    assert asks == ["me", "done"] and [f["info"] for f in c.sent("ha1", "ask_resources")] == ["other", "done"]


def test_failback_off_leaves_groups_on_survivor():
    c = Cluster(auto_failback="off")
    c.pump()
    c.kill("ha1")
    c.pump()
    c.boot("ha1")
    c.pump()
    c.advance(30)
    assert c.held("ha1") == set() and c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    assert c.m["ha1"].rscstatus() == "none"


def test_failback_legacy_uses_ip_request():
    c = Cluster(auto_failback="legacy")
    c.pump()
    c.kill("ha1")
    c.pump()
    c.boot("ha1")
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}
    # heartbeat's req_our_resources: with the peer up, every local group is asked for (boot, then return)
    assert c.sent("ha1", "ip-request") == [{"ipaddr": "10.0.17.26"}] * 2
    assert c.sent("ha2", "ip-request-resp")[-1] == {"dest": "ha1", "ipaddr": "10.0.17.26", "weown": "yes",
                                                    "ok": "OK"}


def test_standby_moves_everything_and_takeover_moves_it_back():
    c = Cluster(auto_failback="off")
    c.pump()
    c.m["ha1"].request_standby("all", c.now)
    c.pump()
    assert c.held("ha1") == set() and c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    c.m["ha1"].request_takeover("all", c.now)
    c.pump()
    assert c.held("ha1") == {"10.0.17.26", "10.0.17.27"} and c.held("ha2") == set()
    assert c.sent("ha1", "hb_takeover") == [{"rsc_hold": "all"}]


def test_takeover_local_only_moves_our_own_group():
    c = Cluster(auto_failback="off")
    c.pump()
    c.kill("ha1")
    c.pump()
    c.boot("ha1")
    c.pump()
    c.m["ha1"].request_takeover("local", c.now)
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}


def test_standby_refused_without_peer_and_when_holding_nothing():
    c = Cluster(start=("ha1",))
    c.pump()
    with pytest.raises(StateChangeRefused, match="^standby: refusing to give up resources while the peer"):
        c.m["ha1"].request_standby("all", c.now)
    c2 = Cluster(auto_failback="off")
    c2.pump()
    with pytest.raises(StateChangeRefused, match="holds no foreign resources"):
        c2.m["ha1"].request_standby("foreign", c2.now)
    with pytest.raises(StateChangeRefused, match="bad resource set 'most'"):
        c2.m["ha1"].request_standby("most", c2.now)


def test_standby_times_out_when_peer_never_answers():
    c = Cluster(auto_failback="off")
    c.pump()
    c.link = False
    c.m["ha1"].request_standby("all", c.now)
    c.pump()
    assert c.m["ha1"].rscstatus() == "transition"
    c.advance(10.5)
    assert c.m["ha1"].standby is None and c.held("ha1") == {"10.0.17.26"}
    assert any(isinstance(a, Notice) and "standby request cancelled" in a.text for _, a in c.log)


def test_clean_shutdown_releases_then_sends_shutdone_and_peer_takes_over_at_once():
    c = Cluster()
    c.pump()
    c.m["ha1"].shutdown(c.now)
    # deliver shutdone as the daemon does: membership reports it -> node_shutdown
    for _ in range(10):
        a = c.m["ha1"].next_action()
        if a is None:
            break
        c.log.append(("ha1", a))
        if isinstance(a, StopGroup):
            c.m["ha1"].group_stopped(a.key, True, c.now)
        elif isinstance(a, SendMessage) and a.msg_type == "shutdone":
            c.m["ha2"].node_shutdown("ha1", c.now)
    c.alive.discard("ha1")
    c.pump()
    assert c.held("ha1") == set() and c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    types = [a.msg_type for n, a in c.log if n == "ha1" and isinstance(a, SendMessage)]
    assert types[-2:] == ["resource", "shutdone"]
    assert any(isinstance(a, ShutdownComplete) and a.clean for n, a in c.log if n == "ha1")
    assert not [a for n, a in c.log if n == "ha2" and isinstance(a, FenceNode)]


def test_shutdown_with_failed_stop_sends_no_shutdone():
    c = Cluster()
    c.pump()
    c.fail_stop.add(("ha1", "10.0.17.26"))
    c.m["ha1"].shutdown(c.now)
    c.pump()
    assert not c.sent("ha1", "shutdone")
    assert any(isinstance(a, ShutdownComplete) and a.clean is False for n, a in c.log if n == "ha1")
    assert c.m["ha1"].state["10.0.17.26"] is GroupState.FAILED


def test_stonith_fence_before_takeover_and_retry_until_success():
    c = Cluster(stonith=True)
    c.pump()
    c.fence_ok = False
    c.kill("ha1")
    c.pump()
    assert c.held("ha2") == {"10.0.17.27"}          # withheld: not fenced
    c.advance(5.1)
    c.advance(5.1)
    assert c.held("ha2") == {"10.0.17.27"}
    assert [f for f in c.fenced if f[0] == "ha2"] == [("ha2", "ha1", False)] * 3
    c.fence_ok = True
    c.advance(5.1)
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    fence_i = max(i for i, (n, a) in enumerate(c.log) if isinstance(a, FenceNode))
    start_i = min(i for i, (n, a) in enumerate(c.log) if isinstance(a, StartGroup) and a.key == "10.0.17.26"
                  and n == "ha2")
    assert fence_i < start_i


def test_stonith_not_used_for_clean_shutdone():
    c = Cluster(stonith=True)
    c.pump()
    c.m["ha2"].node_shutdown("ha1", c.now)
    c.alive.discard("ha1")
    c.pump()
    assert c.fenced == [] and c.held("ha2") == {"10.0.17.26", "10.0.17.27"}


def test_peer_back_before_fence_cancels_takeover():
    c = Cluster(stonith=True)
    c.pump()
    c.fence_ok = False
    c.kill("ha1")
    c.pump()
    c.alive.add("ha1")
    c.m["ha2"].node_up("ha1", c.now)
    c.m["ha1"].node_up("ha2", c.now)
    c.pump()
    c.advance(6)
    assert len(c.fenced) == 1 and c.held("ha2") == {"10.0.17.27"} and c.held("ha1") == {"10.0.17.26"}


def test_failed_start_marks_group_failed_and_reports():
    c = Cluster()
    c.fail_start.add(("ha1", "10.0.17.26"))
    c.pump()
    assert c.m["ha1"].state["10.0.17.26"] is GroupState.FAILED
    changes = [a for n, a in c.log if n == "ha1" and isinstance(a, GroupChanged)]
    assert changes[-1].new is GroupState.FAILED and changes[-1].reason == "start failed"
    assert c.m["ha1"].rsc_hold() == "none"


def test_partition_heal_non_preferred_side_gives_way():
    c = Cluster(auto_failback="off")
    c.pump()
    c.link = False            # both think the other died
    c.m["ha1"].node_dead("ha2", c.now)
    c.m["ha2"].node_dead("ha1", c.now)
    c.pump()
    assert c.held("ha1") == c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    c.link = True
    c.m["ha1"].node_up("ha2", c.now)
    c.m["ha2"].node_up("ha1", c.now)
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}


def test_peer_restart_orphans_are_adopted():
    c = Cluster(auto_failback="off")
    c.pump()
    c.kill("ha1")
    c.pump()
    # ha2 holds both; ha2 restarts (its resources stopped at start-up) while ha1 is still down
    c.boot("ha1")
    c.pump()
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    c.alive.discard("ha2")
    c.m["ha1"].node_dead("ha2", c.now, clean=True)
    c.pump()
    assert c.held("ha1") == {"10.0.17.26", "10.0.17.27"}


def test_messages_from_strangers_and_other_destinations_are_ignored():
    c = Cluster()
    c.pump()
    m = c.m["ha1"]
    m.receive_message("mallory", "ip-request", {"ipaddr": "10.0.17.26"}, c.now)
    m.receive_message("ha2", "ip-request", {"ipaddr": "10.0.17.26", "dest": "ha3"}, c.now)
    m.receive_message("ha2", "resource", {"rsc_hold": "everything"}, c.now)
    assert [a for a in iter(m.next_action, None) if not isinstance(a, Notice)] == []
    assert c.held("ha1") == {"10.0.17.26"}


def test_config_refusals():
    with pytest.raises(ConfigError, match="two nodes"):
        GroupManager("a", ("a", "b", "c"), (), auto_failback="on", stonith_configured=False,
                     initdead_s=1, now=0)
    with pytest.raises(ConfigError, match="not listed in ha.cf"):
        GroupManager("z", ("a", "b"), (), auto_failback="on", stonith_configured=False, initdead_s=1, now=0)
    with pytest.raises(ConfigError, match="auto_failback"):
        GroupManager("a", ("a", "b"), (), auto_failback="maybe", stonith_configured=False, initdead_s=1, now=0)


EVENTS = st.lists(st.sampled_from(["kill1", "kill2", "clean1", "clean2", "boot1", "boot2", "standby1",
                                   "standby2", "takeover1", "takeover2", "tick", "linkdown", "linkup"]),
                  max_size=25)


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.sampled_from(["on", "off", "legacy"]))
def test_random_histories_never_double_own_when_connected(events, mode):
    """After any history, once both nodes are up and connected and settle, no group runs twice
    and no group of a live node is left unheld."""
    c = Cluster(auto_failback=mode)
    c.pump()
    for e in events:
        n = "ha1" if e.endswith("1") else "ha2"
        if e.startswith("kill") and n in c.alive:
            c.kill(n)
        elif e.startswith("clean") and n in c.alive:
            c.m[n].shutdown(c.now)
            c.pump()
            c.alive.discard(n)
            if c.peer(n) in c.alive:
                c.m[c.peer(n)].node_shutdown(n, c.now)
        elif e.startswith("boot") and n not in c.alive:
            c.boot(n)
        elif e.startswith("standby") and n in c.alive:
            try:
                c.m[n].request_standby("all", c.now)
            except StateChangeRefused:
                pass
        elif e.startswith("takeover") and n in c.alive:
            try:
                c.m[n].request_takeover("all", c.now)
            except StateChangeRefused:
                pass
        elif e == "tick":
            c.advance(11)
        elif e == "linkdown" and c.link and len(c.alive) == 2:
            c.link = False
            c.m["ha1"].node_dead("ha2", c.now)
            c.m["ha2"].node_dead("ha1", c.now)
        elif e == "linkup" and not c.link:
            c.link = True
            if len(c.alive) == 2:
                c.m["ha1"].node_up("ha2", c.now)
                c.m["ha2"].node_up("ha1", c.now)
        c.pump()
    # heal and settle
    if not c.link:
        c.link = True
        if len(c.alive) == 2:
            c.m["ha1"].node_up("ha2", c.now)
            c.m["ha2"].node_up("ha1", c.now)
    for n in ("ha1", "ha2"):
        if n not in c.alive:
            c.boot(n)
    c.pump()
    for _ in range(5):
        c.advance(11)
    both = c.held("ha1") & c.held("ha2")
    assert both == set()
    assert c.held("ha1") | c.held("ha2") == {"10.0.17.26", "10.0.17.27"}


def test_failed_start_is_handed_to_peer_after_30s_and_not_back():
    c = Cluster(auto_failback="off")
    c.fail_start.add(("ha1", "10.0.17.26"))
    c.fail_start.add(("ha2", "10.0.17.26"))
    c.pump()
    assert c.m["ha1"].state["10.0.17.26"] is GroupState.FAILED
    c.advance(29)
    assert not any(n == "ha2" and isinstance(a, StartGroup) and a.key == "10.0.17.26" for n, a in c.log)
    c.advance(2)
    starts = [n for n, a in c.log if isinstance(a, StartGroup) and a.key == "10.0.17.26"]
    assert starts == ["ha1", "ha2"]
    assert [f.get("hbd_groups") for f in c.sent("ha1", "ask_resources") if f["info"] == "me"] == ["10.0.17.26"]
    assert c.held("ha2") == {"10.0.17.27"}              # ha2 failed it too
    for _ in range(5):
        c.advance(31)
    # ha2 got it by standby, so it does not bounce it back; ha2's own group was never touched
    starts = [n for n, a in c.log if isinstance(a, StartGroup) and a.key == "10.0.17.26"]
    assert starts == ["ha1", "ha2"]
    assert not [a for n, a in c.log if n == "ha2" and isinstance(a, StopGroup) and a.key == "10.0.17.27"]


def test_failed_start_handoff_succeeds_on_peer():
    c = Cluster(auto_failback="on")
    c.fail_start.add(("ha1", "10.0.17.26"))
    c.pump()
    c.advance(31)
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"} and c.held("ha1") == set()


def test_standby_with_auto_failback_on_is_not_undone():
    c = Cluster(auto_failback="on")
    c.pump()
    c.m["ha1"].request_standby("all", c.now)
    c.pump()
    for _ in range(3):
        c.advance(5)
    assert c.held("ha1") == set() and c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    c.m["ha1"].request_takeover("local", c.now)
    c.pump()
    assert c.held("ha1") == {"10.0.17.26"} and c.held("ha2") == {"10.0.17.27"}


def test_peer_taking_its_own_group_unasked_makes_us_release_it():
    """Real heartbeat (legacy, no active peer seen yet) takes its group and tells itself so with a
    self-addressed ip-request-resp; the holder of the copy gives way."""
    c = Cluster(auto_failback="legacy")
    c.pump()
    c.kill("ha1")
    c.pump()
    assert c.held("ha2") == {"10.0.17.26", "10.0.17.27"}
    m = c.m["ha2"]
    m.node_up("ha1", c.now)
    m.receive_message("ha1", "ip-request-resp", {"dest": "ha1", "ipaddr": "10.0.17.26", "weown": "yes",
                                                  "ok": "OK"}, c.now)
    m.receive_message("ha1", "ip-request-resp", {"dest": "ha1", "ipaddr": "10.0.17.27", "weown": "yes",
                                                  "ok": "OK"}, c.now)
    stops = [a.key for a in iter(m.next_action, None) if isinstance(a, StopGroup)]
    assert stops == ["10.0.17.26"]          # not ha2's own group


def test_legacy_peer_that_returns_without_asking_gets_its_group_after_a_grace_time():
    c = Cluster(auto_failback="legacy")
    c.pump()
    c.kill("ha1")
    c.pump()
    m = c.m["ha2"]
    m.node_up("ha1", c.now)            # ha1 is back but (heartbeat's DONTASK race) never asks
    list(iter(m.next_action, None))
    m.handle_timer(c.now + 4.9)
    assert not [a for a in iter(m.next_action, None) if isinstance(a, StopGroup)]
    assert m.get_timer() == pytest.approx(c.now + 5.0)
    m.handle_timer(c.now + 5.0)
    assert [a.key for a in iter(m.next_action, None) if isinstance(a, StopGroup)] == ["10.0.17.26"]


def test_legacy_failback_uses_the_peers_self_addressed_ip_request_resp_from_the_wire():
    """The real path: ha1 (a real heartbeat, played by a bare Membership) returns, takes its group
    unasked and tells itself so (ip-request-resp dest=ha1, signed, on the wire); ha2's Membership
    reports it although it is not addressed to ha2, and ha2's GroupManager gives way at once,
    not after the LEGACY_ASK_WAIT_S fallback."""
    from hbd.authkeys import parse_authkeys
    from hbd.groups import LEGACY_ASK_WAIT_S
    from hbd.protocol.membership import Membership, MessageReceived, NodeUp

    keys = parse_authkeys("auth 2\n2 sha1 mahnamahna\n")
    timing = dict(keepalive_s=1.0, warntime_s=3.0, deadtime_s=5.0, initdead_s=10.0, authkeys=keys)
    ha2 = Membership("ha2", ["ha1", "ha2"], generation=7, now=0.0, **timing)
    mgr = GroupManager("ha2", ("ha1", "ha2"), GROUPS, auto_failback="legacy", stonith_configured=False,
                       initdead_s=10, now=0.0)
    mgr.node_dead("ha1", 0.0)                         # ha1 never came: ha2 takes everything
    for a in iter(mgr.next_action, None):
        if isinstance(a, StartGroup):
            mgr.group_started(a.key, True, 0.0)
    assert set(mgr.held_keys()) == {"10.0.17.26", "10.0.17.27"}
    list(iter(mgr.next_action, None))

    now = 20.0
    ha1 = Membership("ha1", ["ha1", "ha2"], generation=9, now=now, **timing)
    ha1.send_message("ip-request-resp", {"dest": "ha1", "ipaddr": "10.0.17.26", "weown": "yes", "ok": "OK"})
    for d in ha1.datagrams_to_send(now):
        ha2.receive_datagram(d, ("10.0.17.1", 694), now)
    kinds = []
    while (e := ha2.next_event()) is not None:
        kinds.append(type(e).__name__)
        if isinstance(e, NodeUp):
            mgr.node_up(e.node, now)
        elif isinstance(e, MessageReceived):
            assert e.msg.dest == "ha1"
            mgr.receive_message(e.node, e.msg.type, {k: v for k, v in e.msg.fields if isinstance(v, str)}, now)
    assert kinds == ["NodeUp", "MessageReceived"]
    actions = list(iter(mgr.next_action, None))
    assert [a.key for a in actions if isinstance(a, StopGroup)] == ["10.0.17.26"]   # at once, only ha1's
    assert any(isinstance(a, Notice) and "acquired its group '10.0.17.26'" in a.text for a in actions)
    mgr.group_stopped("10.0.17.26", True, now + 0.1)
    assert mgr.get_timer() is None                    # the LEGACY_ASK_WAIT_S fallback was cancelled
    mgr.handle_timer(now + LEGACY_ASK_WAIT_S + 1)
    assert set(mgr.held_keys()) == {"10.0.17.27"}
    sent = [a for a in iter(mgr.next_action, None) if isinstance(a, SendMessage)]
    assert [(a.msg_type, a.fields.get("rsc_hold"), a.fields.get("info")) for a in sent] == [
        ("resource", "local", "partition")]
