# SPDX-License-Identifier: GPL-2.0-or-later
"""Membership with a fake clock: two objects joined by transfer()/drop(), no sockets."""
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import LocalProtocolError
from hbd.authkeys import parse_authkeys
from hbd.protocol.membership import (
    Membership,
    MessageReceived,
    NodeDead,
    NodeLate,
    NodeRestarted,
    NodeUp,
    PacketDropped,
)
from hbd.protocol.packets import decode_message, encode_message

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SHA1 = parse_authkeys("auth 2\n2 sha1 mahnamahna\n")
OTHER = parse_authkeys("auth 2\n2 sha1 wrongkey\n")
NODES = ["ha1", "ha2"]


def make(node, gen=1, now=0.0, keys=SHA1, **kw):
    params = dict(keepalive_s=1.0, warntime_s=3.0, deadtime_s=5.0, initdead_s=10.0)
    params.update(kw)
    return Membership(node, NODES, authkeys=keys, generation=gen, now=now, **params)


class Net:
    """Two members; `drop` decides per direction whether datagrams get through."""

    def __init__(self, a, b, t=0.0):
        self.m = {a.node: a, b.node: b}
        self.t = t
        self.cut = set()          # {("ha1", "ha2")}: ha1 -> ha2 datagrams are lost
        self.events = {a.node: [], b.node: []}
        self.wire = []            # (src, dst, datagram) actually delivered

    def replace(self, m):
        self.m[m.node] = m

    def transfer(self):
        moved = True
        while moved:
            moved = False
            for src, m in list(self.m.items()):
                for d in m.datagrams_to_send(self.t):
                    for dst, other in self.m.items():
                        if dst != src and (src, dst) not in self.cut:
                            self.wire.append((src, dst, d))
                            other.receive_datagram(d, (src, 694), self.t)
                            moved = True
        for name, m in self.m.items():
            while (e := m.next_event()) is not None:
                self.events[name].append((self.t, e))

    def run_until(self, t_end, step=0.05):
        while self.t < t_end - 1e-9:
            self.t = round(self.t + step, 6)
            for m in self.m.values():
                timer = m.get_timer()
                assert timer is not None
                if timer <= self.t:
                    m.handle_timer(self.t)
            self.transfer()

    def of(self, node, kind):
        return [(t, e) for t, e in self.events[node] if isinstance(e, kind)]


@pytest.fixture
def net():
    n = Net(make("ha1"), make("ha2", gen=7))
    n.transfer()
    return n


def test_both_come_up_and_go_active(net):
    assert net.of("ha1", NodeUp) == [(0.0, NodeUp("ha2", 7))]
    assert net.of("ha2", NodeUp) == [(0.0, NodeUp("ha1", 1))]
    net.run_until(2)
    assert net.m["ha1"].node_status("ha1") == "active"
    assert net.m["ha1"].node_status("ha2") == "active"
    assert net.m["ha2"].node_status("ha1") == "active"
    assert net.m["ha1"].is_alive("ha2") and net.m["ha1"].peer_generation("ha2") == 7
    assert net.m["ha1"].peer_address("ha2") == ("ha2", 694)


def test_status_messages_are_heartbeats_like_the_real_daemon():
    a = make("ha1", gen=0x6B05FAD0, wall_clock_offset=0x6B05FACF)
    first = [decode_message(d, SHA1) for d in a.datagrams_to_send(0.0)]
    assert [m.status for m in first] == ["init", "up"]
    m = first[0]
    assert [k for k, _ in m.fields] == ["t", "st", "dt", "protocol", "src", "srcuuid", "seq", "hg", "ts", "ld",
                                        "ttl", "auth"]
    assert (m.type, m.seq, m.generation, m.timestamp, m.deadtime_ms, m.get("ttl")) == \
        ("status", 1, 0x6B05FAD0, 0x6B05FACF, 5000, "3")
    assert len(m.src_uuid) == 16
    assert a.datagrams_to_send(0.5) == []
    assert [decode_message(d, SHA1).seq for d in a.datagrams_to_send(1.0)] == [3]
    a.handle_timer(10.0)   # initdead passed with nobody heard: active anyway
    assert a.node_status("ha1") == "active"


def test_late_warning_once_then_dead_after_deadtime(net):
    net.run_until(3)
    net.cut.add(("ha2", "ha1"))
    last = 3.0   # ha2's heartbeat at t=3.0 still got through
    net.run_until(20)
    late = net.of("ha1", NodeLate)
    assert len(late) == 1 and late[0][1].node == "ha2"
    assert late[0][0] == pytest.approx(last + 3.0, abs=0.06) and late[0][1].late_s == pytest.approx(3.0, abs=0.06)
    dead = net.of("ha1", NodeDead)
    assert dead == [(dead[0][0], NodeDead("ha2", False))]
    assert dead[0][0] == pytest.approx(last + 5.0, abs=0.06)
    assert net.m["ha1"].node_status("ha2") == "dead" and not net.m["ha1"].is_alive("ha2")
    assert net.of("ha2", NodeDead) == [] and net.of("ha2", NodeLate) == []   # ha2 still hears ha1


def test_no_late_or_dead_while_heartbeats_flow(net):
    net.run_until(60)
    for node in NODES:
        assert net.of(node, NodeLate) == [] and net.of(node, NodeDead) == []
        assert net.of(node, PacketDropped) == []


def test_short_cut_is_late_not_dead_and_rexmit_fills_gap(net):
    net.run_until(5)
    net.cut.add(("ha1", "ha2"))
    net.run_until(8.5)
    net.cut.clear()
    net.run_until(12)
    b = net.m["ha2"]
    assert [e.node for _, e in net.of("ha2", NodeLate)] == ["ha1"]
    assert net.of("ha2", NodeDead) == []
    assert b.counters["rexmit_requested"] >= 3 and net.m["ha1"].counters["rexmit_sent"] >= 3
    assert b.snapshot()["peers"]["ha1"]["missing"] == []
    requests = [decode_message(d, SHA1) for s, _, d in net.wire if s == "ha2" and b"NS_rexmit" in d]
    assert requests and all(r.get("firstseq") == r.get("lastseq") and r.get("firstseq").isdigit() for r in requests)
    assert requests[0].dest == "ha1" and requests[0].seq is None and "ld" not in requests[0]


def test_initdead_for_a_node_never_heard():
    a = make("ha1")
    n = Net(a, make("ha2"))
    n.cut.update({("ha1", "ha2"), ("ha2", "ha1")})
    n.run_until(9.9)
    assert n.of("ha1", NodeDead) == [] and a.node_status("ha2") == "init"
    n.run_until(10.1)
    assert [e for _, e in n.of("ha1", NodeDead)] == [NodeDead("ha2", False)]
    assert n.of("ha1", NodeDead)[0][0] == pytest.approx(10.0, abs=0.06)


def test_dead_node_returns(net):
    net.cut.add(("ha2", "ha1"))
    net.run_until(8)
    assert len(net.of("ha1", NodeDead)) == 1
    net.cut.clear()
    net.run_until(10)
    ups = net.of("ha1", NodeUp)
    assert [e for _, e in ups] == [NodeUp("ha2", 7), NodeUp("ha2", 7)]   # back after partition
    assert net.m["ha1"].is_alive("ha2")


def test_restart_with_newer_generation(net):
    net.run_until(3)
    net.replace(make("ha2", gen=8, now=3.0))
    net.run_until(4)
    assert [e for _, e in net.of("ha1", NodeRestarted)] == [NodeRestarted("ha2", 8)]
    assert net.of("ha1", NodeDead) == []
    assert net.m["ha1"].peer_generation("ha2") == 8
    assert net.of("ha1", PacketDropped) == []   # seq 1 of the new generation is accepted


def test_replayed_packets_are_dropped_and_counted(net):
    net.run_until(3)
    a = net.m["ha1"]
    old = [d for s, dst, d in net.wire if s == "ha2" and dst == "ha1"]
    before = len(net.events["ha1"])
    for d in old:
        a.receive_datagram(d, ("evil", 694), net.t)
    net.transfer()
    assert a.counters["dropped_replay"] >= len(old) - 1
    assert net.events["ha1"][before:] == []      # duplicates are normal per medium: no event


def test_replay_cannot_keep_a_dead_node_alive(net):
    net.run_until(3)
    old = [d for s, dst, d in net.wire if s == "ha2" and dst == "ha1"]
    net.cut.add(("ha2", "ha1"))
    a = net.m["ha1"]
    t = net.t
    while net.t < 12:
        net.run_until(net.t + 0.5)
        for d in old:                # attacker keeps replaying captured heartbeats
            a.receive_datagram(d, ("evil", 694), net.t)
    net.transfer()
    assert [e for _, e in net.of("ha1", NodeDead)] == [NodeDead("ha2", False)]
    assert net.of("ha1", NodeDead)[0][0] == pytest.approx(t + 5.0, abs=0.06)
    assert len(net.of("ha1", NodeUp)) == 1


def test_old_generation_after_restart_is_dropped(net):
    net.run_until(2)
    old = [d for s, dst, d in net.wire if s == "ha2" and dst == "ha1"]
    net.replace(make("ha2", gen=8, now=2.0))
    net.run_until(3)
    a = net.m["ha1"]
    a.receive_datagram(old[-1], ("evil", 694), net.t)
    net.transfer()
    assert a.counters["dropped_old_generation"] == 1
    drops = net.of("ha1", PacketDropped)
    assert len(drops) == 1 and drops[0][1].reason == "old_generation" and drops[0][1].addr == ("evil", 694)
    assert "generation 7 older than 8" in drops[0][1].detail


@pytest.mark.parametrize("mangle, counter", [
    (lambda d: encode_message(decode_message(d, SHA1).fields, OTHER), "dropped_bad_auth"),
    (lambda d: d[:d.index(b"%%%\n") + 4], "dropped_unsigned"),
    (lambda d: d[:50], "dropped_malformed"),
    (lambda d: d.replace(b"st=init", b"st=tini").replace(b"st=up", b"st=pu"), "dropped_bad_auth"),
])
def test_forged_unsigned_malformed_never_produce_events(mangle, counter):
    a = make("ha1")
    b = make("ha2")
    for d in b.datagrams_to_send(0.0):
        a.receive_datagram(mangle(d), ("10.0.0.66", 694), 0.0)
    events = []
    while (e := a.next_event()) is not None:
        events.append(e)
    assert events and all(isinstance(e, PacketDropped) for e in events)
    assert events[0].reason == counter[len("dropped_"):] and events[0].addr == ("10.0.0.66", 694)
    assert a.counters[counter] == 2 and a.node_status("ha2") == "init" and not a.is_alive("ha2")


def test_unknown_node_dropped():
    a = make("ha1")
    stranger = Membership("ha3", ["ha1", "ha3"], keepalive_s=1, warntime_s=3, deadtime_s=5, initdead_s=10,
                          authkeys=SHA1, generation=1, now=0.0)
    for d in stranger.datagrams_to_send(0.0):
        a.receive_datagram(d, ("x", 1), 0.0)
    e = a.next_event()
    assert isinstance(e, PacketDropped) and e.reason == "unknown_node" and "'ha3'" in e.detail
    assert a.counters["dropped_unknown_node"] == 2


def test_own_packets_ignored():
    a = make("ha1")
    for d in a.datagrams_to_send(0.0):
        a.receive_datagram(d, ("self", 694), 0.0)
    assert a.next_event() is None and a.counters["own_packets"] == 2


def test_messages_delivered_once_with_dest_and_destuuid(net):
    a, b = net.m["ha1"], net.m["ha2"]
    a.send_message("ip-request", {"ipaddr": "10.0.17.26"})
    a.send_message("ip-request-resp", {"dest": "ha2", "ipaddr": "10.0.17.26", "weown": "yes", "ok": "OK"})
    a.send_message("ip-request-resp", {"dest": "ha1", "ipaddr": "10.0.17.26", "weown": "yes", "ok": "OK"})
    net.transfer()
    got = [e.msg for _, e in net.of("ha2", MessageReceived)]
    # every accepted message is reported once, whatever its dest (the consumer filters dest):
    # heartbeat's self-addressed ip-request-resp ("I took my group unasked") is news for ha2
    assert [m.type for m in got] == ["ip-request", "ip-request-resp", "ip-request-resp"]
    assert [m.dest for m in got] == [None, "ha2", "ha1"]
    assert got[1].get("destuuid") == b.uuid
    assert [k for k, _ in got[1].fields][:6] == ["t", "dest", "ipaddr", "weown", "ok", "destuuid"]
    assert got[2].get("destuuid") is None       # ha1 has no uuid of its own in its peer table
    assert b.counters["dropped_replay"] == 0 and b.counters["accepted"] >= 3


def test_send_message_rejects_reserved_types():
    with pytest.raises(LocalProtocolError, match="reserved or empty"):
        make("ha1").send_message("status", {})


def test_shutdone_is_a_graceful_death(net):
    net.run_until(2)
    net.m["ha2"].send_shutdone()
    net.transfer()
    kinds = [type(e).__name__ for _, e in net.events["ha1"][-2:]]
    assert kinds == ["MessageReceived", "NodeDead"]
    assert net.events["ha1"][-2][1].msg.type == "shutdone"
    assert net.events["ha1"][-1][1] == NodeDead("ha2", graceful=True)
    assert net.m["ha2"].node_status("ha2") == "dead"


def test_reqnodes_answered_with_repnodes_in_heartbeat_field_order():
    real = (DATA / "hb_real_crc_reqnodes.bin").read_bytes()
    crc = parse_authkeys("auth 1\n1 crc\n")
    b = make("ha2", keys=crc)
    b.datagrams_to_send(0.0)
    b.receive_datagram(real, ("10.98.0.1", 694), 0.0)
    out = [decode_message(d, crc) for d in b.datagrams_to_send(0.0)]
    rep = [m for m in out if m.type == "repnodes"]
    assert len(rep) == 1
    assert [k for k, _ in rep[0].fields][:5] == ["dest", "t", "nodelist", "delnodelist", "destuuid"]
    assert rep[0].get("nodelist") == "ha1 ha2 " and rep[0].get("delnodelist") == " "
    assert rep[0].get("destuuid") is None or isinstance(rep[0].get("destuuid"), bytes)


def test_real_heartbeat_capture_brings_node_up():
    b = make("ha2")
    real = (DATA / "hb_real_sha1_status_active.bin").read_bytes()
    msg = decode_message(real, SHA1)
    b.receive_datagram(real, ("10.98.0.1", 694), 100.0)
    assert b.next_event() == NodeUp("ha1", msg.generation)
    assert b.node_status("ha1") == "active"
    assert b.peer_dead_s("ha1") == msg.deadtime_ms / 1000


def test_peer_announced_deadtime_is_honoured():
    a = make("ha1")
    b = make("ha2", deadtime_s=10.0, initdead_s=20.0)
    n = Net(a, b)
    n.transfer()
    assert a.peer_dead_s("ha2") == 10.0
    n.cut.add(("ha2", "ha1"))
    n.run_until(9.9)
    assert n.of("ha1", NodeDead) == []
    n.run_until(10.2)
    assert len(n.of("ha1", NodeDead)) == 1


def test_rexmit_request_for_unknown_seq_gets_nak(net):
    a, b = net.m["ha1"], net.m["ha2"]
    net.run_until(2)
    # forge nothing: ha2 legitimately asks for a seq ha1 no longer has
    a.history_size = 1
    a.send_message("x1", {})
    a.send_message("x2", {})
    b._send("NS_rexmit", [("dest", "ha1"), ("firstseq", "1"), ("lastseq", "1")])
    net.transfer()
    naks = [decode_message(d, SHA1) for s, _, d in net.wire if s == "ha1" and b"NS_nak_rexmit" in d]
    assert naks and naks[0].get("firstseq") == "1" and naks[0].get("info") == "seqno too low"
    assert a.counters["rexmit_nak_sent"] == 1


def test_retransmission_is_byte_identical_and_rate_limited(net):
    a, b = net.m["ha1"], net.m["ha2"]
    net.run_until(1)
    a.send_message("x", {"n": "1"})
    original = a.datagrams_to_send(net.t)[0]
    seq = decode_message(original, SHA1).seq
    for _ in range(3):
        b._send("NS_rexmit", [("dest", "ha1"), ("firstseq", str(seq)), ("lastseq", str(seq))])
    for d in b.datagrams_to_send(net.t):
        a.receive_datagram(d, ("ha2", 694), net.t)
    assert a.datagrams_to_send(net.t) == [original]   # once per max_rexmit_delay
    assert a.counters["rexmit_sent"] == 1


def test_flow_control_acks_about_every_tenth_message(net):
    net.run_until(30)
    acks = [decode_message(d, SHA1) for s, _, d in net.wire if s == "ha1" and b"NS_ackmsg" in d]
    assert 2 <= len(acks) <= 5
    assert all(a.dest == "ha2" and a.seq is None for a in acks)
    mods = {int(a.get("ackseq"), 16) % 10 for a in acks}
    assert len(mods) == 1


def test_local_node_must_be_listed_and_times_sane():
    with pytest.raises(LocalProtocolError, match="local node 'ha9' is not among the nodes"):
        Membership("ha9", NODES, keepalive_s=1, warntime_s=3, deadtime_s=5, initdead_s=10, authkeys=SHA1,
                   generation=1, now=0)
    with pytest.raises(LocalProtocolError, match="need 0 < keepalive_s < deadtime_s <= initdead_s"):
        make("ha1", deadtime_s=0.5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_fuzz_receive_datagram_random_bytes(datagrams):
    a = make("ha1")
    for d in datagrams:
        a.receive_datagram(d, ("x", 1), 1.0)
    while (e := a.next_event()) is not None:
        assert isinstance(e, PacketDropped)
    assert a.node_status("ha2") == "init"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_datagrams(data):
    a = make("ha1")
    b = make("ha2")
    good = b.datagrams_to_send(0.0)
    for d in good:
        raw = bytearray(d)
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        a.receive_datagram(bytes(raw), ("x", 1), 0.0)
    while (e := a.next_event()) is not None:
        assert isinstance(e, PacketDropped)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=5, max_size=40))
def test_lossy_duplicating_link_delivers_each_message_exactly_once(plan):
    """a->b loses/duplicates/reorders datagrams; rexmit repairs; nothing is delivered twice."""
    a, b = make("ha1"), make("ha2")
    t = 0.0
    held = []
    sent = 0
    for i, (lose, dup, hold) in enumerate(plan):
        t += 0.1
        a.send_message("app", {"n": str(i)})
        sent += 1
        for d in a.datagrams_to_send(t):
            if hold:
                held.append(d)
                continue
            if not lose:
                b.receive_datagram(d, ("a", 1), t)
                if dup:
                    b.receive_datagram(d, ("a", 1), t)
        if not hold and held:
            for d in reversed(held):
                b.receive_datagram(d, ("a", 1), t)
            held = []
        for d in b.datagrams_to_send(t):
            a.receive_datagram(d, ("b", 1), t)
        for m in (a, b):
            if m.get_timer() <= t:
                m.handle_timer(t)
    for d in held:
        b.receive_datagram(d, ("a", 1), t)
    for _ in range(40):          # the link heals: let rexmit finish
        t += 0.1
        for m in (a, b):
            if m.get_timer() <= t:
                m.handle_timer(t)
        for d in a.datagrams_to_send(t):
            b.receive_datagram(d, ("a", 1), t)
        for d in b.datagrams_to_send(t):
            a.receive_datagram(d, ("b", 1), t)
    got = []
    while (e := b.next_event()) is not None:
        if isinstance(e, MessageReceived):
            got.append(int(e.msg.get("n")))
        assert not isinstance(e, PacketDropped)
    assert len(got) == len(set(got)), "a message was delivered twice"
    if plan[0][0] or plan[0][2]:
        # the very first datagrams never arrived: b started tracking later, earlier ones are not owed
        assert set(got) <= set(range(sent))
    else:
        assert sorted(got) == list(range(sent))


def test_after_shutdone_only_rexmit_answers_go_out(net):
    a, b = net.m["ha1"], net.m["ha2"]
    net.run_until(2)
    b.send_shutdone()
    shutdone = b.datagrams_to_send(net.t)
    assert [decode_message(d, SHA1).type for d in shutdone] == ["shutdone"]
    mark = len(net.wire)
    net.run_until(30)     # ha1 keeps talking; ha2 must stay silent (no status, no acks)
    assert [s for s, _, _ in net.wire[mark:]].count("ha2") == 0
    assert [s for s, _, _ in net.wire[mark:]].count("ha1") >= 28
    assert b.node_status("ha2") == "dead"
    b.send_message("x", {})          # ignored and counted: we already said goodbye
    assert b.datagrams_to_send(net.t) == [] and b.counters["suppressed_after_shutdone"] == 1
    seq = decode_message(shutdone[0], SHA1).seq
    a._send("NS_rexmit", [("dest", "ha2"), ("firstseq", str(seq)), ("lastseq", str(seq))])
    for d in a.datagrams_to_send(net.t):
        b.receive_datagram(d, ("ha1", 694), net.t)
    assert b.datagrams_to_send(net.t) == shutdone     # a lost shutdone can still be recovered


def test_acks_are_cumulative_never_past_a_gap():
    """heartbeat ignores rexmit requests at or below our last ack: never ack across a hole."""
    a, b = make("ha1"), make("ha2")
    trigger = sum(b"ha1") % 10           # b's ack trigger for ha1
    t = 0.0
    for d in a.datagrams_to_send(t):      # status init (1), up (2): flow control on
        b.receive_datagram(d, ("a", 1), t)
    b.datagrams_to_send(t)
    held = {}
    for i in range(3, 40):
        a.send_message("app", {"n": str(i)})
        for d in a.datagrams_to_send(t):
            seq = decode_message(d, SHA1).seq
            if seq in (trigger + 20 - 1, trigger + 20 - 2):   # lose two just below an ack point
                held[seq] = d
            else:
                b.receive_datagram(d, ("a", 1), t)
    acks = [int(decode_message(d, SHA1).get("ackseq"), 16) for d in b.datagrams_to_send(t)
            if b"NS_ackmsg" in d]
    hole = min(held)
    assert acks == [trigger + 10], (acks, hole)      # trigger+20 and +30 arrived but are past the hole
    for seq in sorted(held):
        b.receive_datagram(held[seq], ("a", 1), t)
    acks = [int(decode_message(d, SHA1).get("ackseq"), 16) for d in b.datagrams_to_send(t)
            if b"NS_ackmsg" in d]
    assert acks == [max(s for s in range(1, 40) if s % 10 == trigger)]


def feed(dst, src, t):
    for d in src.datagrams_to_send(t):
        dst.receive_datagram(d, (src.node, 694), t)


def test_queries_and_local_status():
    a = make("ha1")
    with pytest.raises(LocalProtocolError, match="unknown node 'ha7'"):
        a.node_status("ha7")
    a.datagrams_to_send(0.0)
    a.set_local_status("active")
    out = [decode_message(d, SHA1) for d in a.datagrams_to_send(0.1)]
    assert [(m.type, m.status) for m in out] == [("status", "active")]
    assert a.node_status("HA1") == "active" and a.is_alive("ha1") and not a.is_alive("ha2")
    assert a.peer_generation("nobody") is None and a.peer_address("nobody") is None


def test_huge_gap_resets_tracking_and_missing_is_bounded():
    a, b = make("ha1"), make("ha2")
    feed(b, a, 0.0)
    for _ in range(300):                 # 300 messages lost: more than FLOWCONTROL_LIMIT
        a.send_message("x", {})
    a.datagrams_to_send(0.0)
    a.send_message("x", {})
    feed(b, a, 0.1)
    assert b.counters["seq_resets"] == 1 and b.snapshot()["peers"]["ha1"]["missing"] == []
    for burst in (200, 100):             # two gaps that together exceed the bound
        for _ in range(burst):
            a.send_message("x", {})
        a.datagrams_to_send(0.2)
        a.send_message("x", {})
        feed(b, a, 0.2)
    missing = b.snapshot()["peers"]["ha1"]["missing"]
    assert len(missing) == 250 and b.counters["lost_packets"] >= 300 + 50


def test_missing_seq_given_up_after_a_dead_time():
    a, b = make("ha1"), make("ha2")
    feed(b, a, 0.0)
    a.send_message("lost", {})
    a.datagrams_to_send(0.0)
    t = 0.0
    while t < 7.0:
        t = round(t + 0.25, 2)
        a.handle_timer(t)
        feed(b, a, t)                    # ha1's rexmit answers are lost too: ha2's requests never reach it
        b.handle_timer(t)
        b.datagrams_to_send(t)
    assert b.snapshot()["peers"]["ha1"]["missing"] == []
    assert b.counters["lost_packets"] == 1 and b.counters["rexmit_requested"] >= 10
    assert b.is_alive("ha1")


def test_nak_clears_missing_and_bad_rexmit_requests_are_ignored():
    a, b = make("ha1"), make("ha2")
    feed(b, a, 0.0)
    feed(a, b, 0.0)
    feed(b, a, 0.0)          # ha1's "active" status
    feed(a, b, 0.0)
    a.send_message("lost", {})
    a.datagrams_to_send(0.0)
    a.send_message("x", {})
    feed(b, a, 0.0)
    lost = b.snapshot()["peers"]["ha1"]["missing"]
    assert len(lost) == 1
    a._send("NS_nak_rexmit", [("dest", "ha2"), ("firstseq", "%x" % lost[0]), ("info", "seqno not found")])
    a._send("NS_nak_rexmit", [("dest", "ha2"), ("firstseq", "zz")])
    feed(b, a, 0.1)
    assert b.snapshot()["peers"]["ha1"]["missing"] == [] and b.counters["lost_packets"] == 1
    b._send("NS_rexmit", [("dest", "ha1"), ("firstseq", "x"), ("lastseq", "3")])
    b._send("NS_rexmit", [("dest", "ha1"), ("firstseq", "99"), ("lastseq", "99")])   # beyond our seq: ignored
    b._send("NS_rexmit", [("dest", "ha2"), ("firstseq", "1"), ("lastseq", "1")])     # not for ha1
    feed(a, b, 0.2)
    assert a.counters["dropped_malformed"] == 1
    assert a.datagrams_to_send(0.2) == [] and a.counters["rexmit_sent"] == 0
    assert a.counters["rexmit_nak_sent"] == 0


def test_wrong_key_nodes_never_join():
    n = Net(make("ha1"), make("ha2", keys=OTHER))
    n.transfer()
    n.run_until(12)
    for node in NODES:
        assert n.of(node, NodeUp) == [] and n.of(node, MessageReceived) == []
        assert len(n.of(node, NodeDead)) == 1            # never heard: dead at initdead
        assert n.m[node].counters["dropped_bad_auth"] >= 12
        assert all(e.reason == "bad_auth" for _, e in n.of(node, PacketDropped))
