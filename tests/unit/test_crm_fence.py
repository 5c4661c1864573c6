# SPDX-License-Identifier: GPL-2.0-or-later
"""replica-crm-fence-peer / replica-crm-unfence-peer (replica/crm_fence.py) without a cluster.

The CIBs in tests/data/cib/ are `cibadmin --query` output captured from scripts/pcmk_lab.py's
Pacemaker 2.1.5 cluster: pk1 Promoted with both nodes online; pk1 killed a moment before
(the CIB still shows it online); pk1 killed and pk2 promoted (pk1 offline, expected member);
Pacemaker stopped cleanly on pk1 (controller offline, expected down, Corosync still up).
On them: the parser, the peer's state, the decision table of the module docstring, the
constraint's XML and ids (DRBD's), the two commands with a fake cluster (what they run), and
hypothesis on the parser (any text) and on the decision (any CIB state, any disk states).
"""
from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replica.crm_fence import (
    Cib,
    CibError,
    Cluster,
    NodeState,
    PeerState,
    constraint_id,
    constraint_xml,
    decide_fence,
    decide_unfence,
    fence_main,
    is_settled,
    observe_peer,
    parse_cib,
    peer_state,
    unfence_main,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "cib"
BOTH_ONLINE = (DATA / "pk1-promoted-both-online.xml").read_text()
KILLED_NOT_SEEN = (DATA / "pk1-killed-not-yet-seen.xml").read_text()
KILLED = (DATA / "pk1-killed-pk2-promoted.xml").read_text()
PCMK_STOPPED = (DATA / "pk1-pacemaker-stopped.xml").read_text()
CID = "drbd-fence-by-handler-r0-ms_r0"
DISKS = ("UpToDate", "Consistent", "Outdated", "Inconsistent", "DUnknown", "Diskless", "Failed",
         "Attaching", "Negotiating", "")


def with_constraint(cib: str, node: str) -> str:
    return cib.replace("</constraints>", constraint_xml("r0", "ms_r0", node) + "</constraints>", 1)


def fenced(cib: str) -> str:
    """pk1 as a STONITHed (or cleanly stopped) node shows: out of the membership, expected down."""
    return cib.replace('uname="pk1" in_ccm="false" crmd="offline" crm-debug-origin="do_state_transition" '
                       'join="down" expected="member"',
                       'uname="pk1" in_ccm="false" crmd="offline" crm-debug-origin="do_state_transition" '
                       'join="down" expected="down"')


# --- the parser on real CIBs ---------------------------------------------------------------------

def test_parse_finds_the_clone_the_nodes_and_the_cluster_options():
    cib = parse_cib(BOTH_ONLINE)
    assert cib.clones == {"r0": "ms_r0"}
    assert cib.nodes == ("pk1", "pk2")
    assert (cib.have_quorum, cib.stonith_enabled) == (True, False)
    assert cib.node_states["pk1"] == NodeState("pk1", True, True, "member", "member")
    assert cib.locations == {}


def test_parse_reads_node_states_as_pacemaker_writes_them():
    assert parse_cib(KILLED).node_states["pk1"] == NodeState("pk1", False, False, "member", "down")
    assert parse_cib(PCMK_STOPPED).node_states["pk1"] == NodeState("pk1", True, False, "down", "down")
    # 2.1.7+ write the time of the change for true/online
    newer = KILLED.replace('uname="pk2" in_ccm="true" crmd="online"',
                           'uname="pk2" in_ccm="1796654200" crmd="1796654201"')
    assert parse_cib(newer).node_states["pk2"].in_ccm and parse_cib(newer).node_states["pk2"].crmd_online


@example("\u00b2")         # a digit to str.isdigit(), not to int()
@given(st.text(max_size=12).filter(lambda v: '"' not in v and "<" not in v and "&" not in v))
def test_any_in_ccm_value_reads_as_a_boolean(value):
    text = KILLED.replace('uname="pk2" in_ccm="true"', f'uname="pk2" in_ccm="{value}"')
    try:
        cib = parse_cib(text)
    except CibError:
        return          # characters XML cannot carry
    assert isinstance(cib.node_states["pk2"].in_ccm, bool)


def test_parse_finds_only_a_clone_of_our_agent_with_that_resource():
    other = BOTH_ONLINE.replace('provider="replica-ha" type="replica"', 'provider="linbit" type="drbd"')
    assert parse_cib(other).clones == {}
    renamed = BOTH_ONLINE.replace('name="resource" value="r0"', 'name="resource" value="r1"')
    assert parse_cib(renamed).clones == {"r1": "ms_r0"}
    master = BOTH_ONLINE.replace('<clone id="ms_r0">', '<master id="ms_old">').replace("</clone>", "</master>")
    assert parse_cib(master).clones == {"r0": "ms_old"}


def test_stonith_enabled_unless_explicitly_false():
    on = BOTH_ONLINE.replace('name="stonith-enabled" value="false"', 'name="stonith-enabled" value="true"')
    assert parse_cib(on).stonith_enabled
    unset = BOTH_ONLINE.replace('name="stonith-enabled" value="false"', 'name="other" value="false"')
    assert parse_cib(unset).stonith_enabled           # Pacemaker's default
    no_quorum = BOTH_ONLINE.replace('have-quorum="1"', 'have-quorum="0"')
    assert not parse_cib(no_quorum).have_quorum


@pytest.mark.parametrize("text,message", [
    ("", "cib: unreadable XML"),
    ("<cib><configuration>", "cib: unreadable XML"),
    ("<constraints/>", "cib: root element is <constraints>, not <cib>"),
    ("<cib/>", "cib: no <configuration> section"),
])
def test_unreadable_cib_is_a_clear_error(text, message):
    with pytest.raises(CibError, match="^" + message):
        parse_cib(text)


@given(st.text(max_size=400))
def test_parser_takes_any_text(text):
    try:
        assert isinstance(parse_cib(text), Cib)
    except CibError as e:
        assert str(e).startswith("cib: ")


@settings(max_examples=200)
@given(st.integers(0, len(BOTH_ONLINE) - 1), st.integers(1, 200), st.text(max_size=20))
def test_parser_takes_any_damaged_real_cib(at, length, insert):
    text = BOTH_ONLINE[:at] + insert + BOTH_ONLINE[at + length:]
    try:
        cib = parse_cib(text)
    except CibError:
        return
    # damage may rename the clone (a character cut out of "ms_r0"), never invent one: every
    # clone found is a name the damaged text really carries
    for clone in cib.clones.values():
        assert clone and clone in text, clone


# --- the peer's state ----------------------------------------------------------------------------

@pytest.mark.parametrize("cib,confirmed,state", [
    (BOTH_ONLINE, True, PeerState.REACHABLE),
    (BOTH_ONLINE, False, PeerState.UNKNOWN),          # online in the CIB, no answer: dying
    (KILLED_NOT_SEEN, False, PeerState.UNKNOWN),
    (KILLED, None, PeerState.UNREACHABLE),
    (PCMK_STOPPED, None, PeerState.UNREACHABLE),      # still in Corosync's membership
    (fenced(KILLED), None, PeerState.FENCED),
])
def test_peer_state_from_the_cib(cib, confirmed, state):
    assert peer_state(parse_cib(cib), "pk1", confirmed) is state


def test_a_node_without_node_state_is_unknown():
    assert peer_state(parse_cib(BOTH_ONLINE), "pk3") is PeerState.UNKNOWN


def test_settled_states_end_the_polling():
    cib = parse_cib(KILLED)
    assert is_settled(cib, PeerState.UNREACHABLE) and is_settled(cib, PeerState.REACHABLE)
    assert not is_settled(cib, PeerState.UNKNOWN)
    stonith = parse_cib(KILLED.replace('name="stonith-enabled" value="false"',
                                       'name="stonith-enabled" value="true"'))
    assert not is_settled(stonith, PeerState.UNREACHABLE)    # about to be fenced: wait
    assert is_settled(stonith, PeerState.FENCED)


# --- the decision --------------------------------------------------------------------------------

@pytest.mark.parametrize("cib,me,peer,state,disk,peer_disk,code,place,text", [
    (BOTH_ONLINE, "pk1", "pk2", PeerState.REACHABLE, "UpToDate", "DUnknown", 4, True,
     f"peer pk2 is reachable, my disk is UpToDate: placed constraint '{CID}'"),
    (BOTH_ONLINE, "pk1", "pk2", PeerState.REACHABLE, "Consistent", "DUnknown", 4, True,
     f"peer pk2 is reachable, my disk is Consistent: placed constraint '{CID}'"),
    (KILLED, "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate", "DUnknown", 5, True,
     f"peer pk1 is unreachable, my disk is UpToDate: placed constraint '{CID}'"),
    (KILLED_NOT_SEEN, "pk2", "pk1", PeerState.UNKNOWN, "UpToDate", "DUnknown", 5, True,
     f"peer pk1 is unknown, my disk is UpToDate: placed constraint '{CID}'"),
    (fenced(KILLED), "pk2", "pk1", PeerState.FENCED, "UpToDate", "DUnknown", 7, True,
     f"peer pk1 is fenced, my disk is UpToDate: placed constraint '{CID}'"),
    (KILLED, "pk2", "pk1", PeerState.UNREACHABLE, "Consistent", "DUnknown", 5, False,
     "peer pk1 is unreachable, my disk is Consistent: did not place the constraint!"),
    (fenced(KILLED), "pk2", "pk1", PeerState.FENCED, "Consistent", "DUnknown", 5, False,
     "peer pk1 is fenced, my disk is Consistent: did not place the constraint!"),
    (BOTH_ONLINE, "pk1", "pk2", PeerState.REACHABLE, "Outdated", "DUnknown", 5, False,
     "peer pk2 is reachable, my disk is Outdated: did not place the constraint!"),
    (KILLED, "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate", "UpToDate", 1, False,
     "All peer disks are UpToDate! Did not place the constraint."),
    (KILLED, "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate", "Outdated", 3, False,
     "peer disk is Outdated already: nothing to fence"),
    (KILLED, "pk2", "pk1", PeerState.UNREACHABLE, "", "DUnknown", 1, False,
     "could not determine my disk state: did not place the constraint!"),
    (KILLED.replace('have-quorum="1"', 'have-quorum="0"'), "pk2", "pk1", PeerState.UNREACHABLE,
     "UpToDate", "DUnknown", 1, False, "I don't have quorum; did not place the constraint!"),
    (with_constraint(KILLED, "pk2"), "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate", "DUnknown", 4,
     False, f"suitable constraint already placed: '{CID}'"),
    (with_constraint(BOTH_ONLINE, "pk1"), "pk2", "pk1", PeerState.REACHABLE, "UpToDate", "DUnknown",
     6, False, f"constraint already exists, and rejects me: '{CID}' keeps Promoted on pk1"),
])
def test_decision_table(cib, me, peer, state, disk, peer_disk, code, place, text):
    d = decide_fence(parse_cib(cib), "r0", me, peer, state, disk, peer_disk)
    assert (d.code, d.place, d.text) == (code, place, text)


def test_no_clone_for_the_resource_is_exit_1():
    d = decide_fence(parse_cib(KILLED), "r9", "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate", "DUnknown")
    assert d.code == 1 and not d.place
    assert d.text.startswith("drbd-fencing could not determine the clone id of replica resource r9")
    # --clone-id names it
    d = decide_fence(parse_cib(KILLED), "r9", "pk2", "pk1", PeerState.UNREACHABLE, "UpToDate",
                     "DUnknown", clone="ms_r9")
    assert (d.code, d.text) == (5, "peer pk1 is unreachable, my disk is UpToDate: placed constraint "
                                   "'drbd-fence-by-handler-r9-ms_r9'")


@pytest.mark.parametrize("cib,disk,peer_disk,remove,text", [
    (KILLED, "UpToDate", "UpToDate", False, "No constraint in place, nothing to do."),
    (with_constraint(KILLED, "pk2"), "UpToDate", "UpToDate", True, f"Removed constraint '{CID}'"),
    (with_constraint(KILLED, "pk2"), "UpToDate", "DUnknown", False,
     f"expected constraint still in place, nothing to do (my disk UpToDate, peer disk DUnknown): '{CID}'"),
    (with_constraint(KILLED, "pk2"), "Inconsistent", "UpToDate", False,
     f"expected constraint still in place, nothing to do (my disk Inconsistent, peer disk UpToDate): "
     f"'{CID}'"),
])
def test_unfence_removes_only_when_both_disks_are_up_to_date(cib, disk, peer_disk, remove, text):
    d = decide_unfence(parse_cib(cib), "r0", disk, peer_disk)
    assert (d.code, d.remove, d.text) == (0, remove, text)


def test_constraint_is_drbds_and_pacemaker_reads_it_back():
    xml = constraint_xml("r0", "ms_r0", "pk2")
    loc = ET.fromstring(xml)
    assert (loc.tag, loc.get("id"), loc.get("rsc")) == ("rsc_location", CID, "ms_r0")
    rule = loc.find("rule")
    assert rule is not None
    assert (rule.get("role"), rule.get("score"), rule.get("id")) == (
        "Promoted", "-INFINITY", "drbd-fence-by-handler-r0-rule-ms_r0")
    assert [e.attrib for e in rule] == [{"attribute": "#uname", "operation": "ne", "value": "pk2",
                                         "id": "drbd-fence-by-handler-r0-expr-ms_r0"}]
    cib = parse_cib(with_constraint(KILLED, "pk2"))
    assert cib.locations[CID].allowed == ("pk2",) and cib.locations[CID].role == "Promoted"
    # DRBD: a prefix that already ends with the resource name is kept as it is
    assert constraint_id("r0", "ms_r0", "fence-r0") == "fence-r0-ms_r0"
    assert ET.fromstring(constraint_xml("r0", "ms", "a", "Master")).find("rule").get("role") == "Master"


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_constraint_xml_quotes_any_name(node, clone):
    try:
        loc = ET.fromstring(constraint_xml("r0", clone, node))
    except ET.ParseError:
        # XML 1.0 cannot carry some characters at all (control characters, lone surrogates)
        assert any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF or ord(c) in (0xFFFE, 0xFFFF)
                   for c in node + clone)
        return
    assert loc.get("rsc") == clone and loc.find("rule/expression").get("value") == node


# any CIB state: the decision is total and never unsafe
_NODE_STATE = st.fixed_dictionaries({
    "in_ccm": st.sampled_from(["true", "false", "1796654200", ""]),
    "crmd": st.sampled_from(["online", "offline", "1796654200", "0"]),
    "expected": st.sampled_from(["member", "down", ""]),
    "join": st.sampled_from(["member", "down", "pending", "banned"]),
})


@settings(max_examples=300)
@given(_NODE_STATE, st.booleans(), st.booleans(), st.sampled_from([None, "pk1", "pk2", "pk3"]),
       st.sampled_from(DISKS), st.sampled_from(DISKS), st.sampled_from([None, True, False]))
def test_decision_is_total_and_safe(ns, quorum, stonith, constraint_for, disk, peer_disk, confirmed):
    text = KILLED.replace('uname="pk1" in_ccm="false" crmd="offline" crm-debug-origin="do_state_transition" '
                          'join="down" expected="member"',
                          f'uname="pk1" in_ccm="{ns["in_ccm"]}" crmd="{ns["crmd"]}" '
                          f'join="{ns["join"]}" expected="{ns["expected"]}"')
    text = text.replace('have-quorum="1"', f'have-quorum="{int(quorum)}"')
    text = text.replace('name="stonith-enabled" value="false"', f'name="stonith-enabled" value="{stonith}"')
    if constraint_for:
        text = with_constraint(text, constraint_for)
    cib = parse_cib(text)
    state = peer_state(cib, "pk1", confirmed)
    d = decide_fence(cib, "r0", "pk2", "pk1", state, disk, peer_disk)
    assert d.code in (1, 3, 4, 5, 6, 7) and d.text
    if d.place:      # never over an existing constraint, never without good local data
        assert constraint_for is None and quorum and disk in ("UpToDate", "Consistent")
        assert peer_disk not in ("UpToDate", "Outdated", "Inconsistent", "Diskless", "Failed")
        assert d.code in (4, 5, 7) and (disk == "UpToDate" or state is PeerState.REACHABLE)
    if d.code in (4, 5, 7) and disk == "UpToDate" and not d.place:
        assert constraint_for == "pk2"          # already in place for this node
    if constraint_for in ("pk1", "pk3"):
        assert d.code == 6                      # the constraint keeps another node: not us
    u = decide_unfence(cib, "r0", disk, peer_disk)
    assert u.code == 0 and u.remove == (constraint_for is not None and disk == peer_disk == "UpToDate")


# --- the commands, with a fake cluster -----------------------------------------------------------

class FakeCluster:
    """Serves CIBs in turn (the last one stays), answers crm_node and crmadmin, records the
    cibadmin writes; a create can fail once to simulate a race."""

    def __init__(self, *cibs: str, me: str = "pk2", peer_answers: bool = False,
                 create_rc: int = 0):
        self.cibs, self.me, self.peer_answers, self.create_rc = list(cibs), me, peer_answers, create_rc
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout_s):
        argv = [Path(argv[0]).name, *argv[1:]]
        self.calls.append(argv)
        if argv[:2] == ["cibadmin", "--query"]:
            cib = self.cibs.pop(0) if len(self.cibs) > 1 else self.cibs[0]
            return subprocess.CompletedProcess(argv, 0, cib, "")
        if argv[0] == "crm_node":
            return subprocess.CompletedProcess(argv, 0, self.me + "\n", "")
        if argv[0] == "crmadmin":
            ok = f"Controller on {argv[2]} in state S_NOT_DC: ok\n"
            return subprocess.CompletedProcess(argv, 0 if self.peer_answers else 1,
                                               ok if self.peer_answers else "", "")
        if argv[:2] == ["cibadmin", "--create"]:
            return subprocess.CompletedProcess(argv, self.create_rc, "",
                                               "Call cib_create failed (-76): Name not unique on network"
                                               if self.create_rc else "")
        if argv[:2] == ["cibadmin", "--delete"]:
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def writes(self) -> list[list[str]]:
        return [c for c in self.calls if c[:2] in (["cibadmin", "--create"], ["cibadmin", "--delete"])]


ENV = {"DRBD_RESOURCE": "r0", "DRBD_PEER": "pk1", "REPLICA_ROLE": "Secondary",
       "REPLICA_DISK": "UpToDate", "REPLICA_PEER_DISK": "DUnknown"}
ARGS = ["--logfacility", "none"]


def test_fence_peer_of_a_dead_node_places_the_constraint_and_exits_5(capsys):
    fake = FakeCluster(KILLED)
    assert fence_main(ARGS, dict(ENV), Cluster(fake)) == 5
    assert fake.writes() == [["cibadmin", "--create", "-o", "constraints", "-X",
                              constraint_xml("r0", "ms_r0", "pk2")]]
    err = capsys.readouterr().err
    assert "DRBD_PEER=pk1 DRBD_RESOURCE=r0" in err
    assert f"r0: INFO peer pk1 is unreachable, my disk is UpToDate: placed constraint '{CID}'" in err
    assert "r0: fence-peer exit code 5" in err


def test_fence_peer_of_a_reachable_node_exits_4_after_crmadmin_confirms():
    fake = FakeCluster(BOTH_ONLINE, me="pk1", peer_answers=True)
    assert fence_main(ARGS, dict(ENV, DRBD_PEER="pk2"), Cluster(fake)) == 4
    assert ["crmadmin", "-S", "pk2", "-t", "2000"] in fake.calls
    assert len(fake.writes()) == 1


def test_fence_peer_polls_until_the_dying_peer_leaves_the_membership():
    # online in the CIB but its controller does not answer, then Corosync drops it
    fake = FakeCluster(KILLED_NOT_SEEN, KILLED_NOT_SEEN, KILLED)
    assert fence_main(ARGS, dict(ENV), Cluster(fake)) == 5
    assert sum(c[:2] == ["cibadmin", "--query"] for c in fake.calls) == 3


def test_fence_peer_that_loses_a_race_judges_what_is_there():
    fake = FakeCluster(KILLED, with_constraint(KILLED, "pk2"), create_rc=76)
    assert fence_main(ARGS, dict(ENV), Cluster(fake)) == 4       # the same constraint: fine
    fake = FakeCluster(KILLED, with_constraint(KILLED, "pk1"), create_rc=76)
    assert fence_main(ARGS, dict(ENV), Cluster(fake)) == 6       # the peer was first


def test_fence_peer_without_peer_uses_the_one_other_node():
    fake = FakeCluster(KILLED)
    env = {k: v for k, v in ENV.items() if k != "DRBD_PEER"}
    assert fence_main(ARGS, env, Cluster(fake)) == 5


def test_fence_peer_without_resource_or_cib_fails(capsys):
    assert fence_main(ARGS, {}, Cluster(FakeCluster(KILLED))) == 1
    assert "Environment variable $DRBD_RESOURCE not found" in capsys.readouterr().err

    def broken(argv, timeout_s):
        return subprocess.CompletedProcess(argv, 102, "", "Timer expired")
    assert fence_main(ARGS + ["--dc-timeout", "0"], dict(ENV), Cluster(broken, dc_timeout_s=0)) == 1
    assert "cibadmin --query: exit 102: Timer expired: did not place the constraint!" in \
        capsys.readouterr().err


def test_unfence_removes_the_constraint_once_and_is_idempotent(capsys, tmp_path):
    log = tmp_path / "fence.log"
    env = dict(ENV, DRBD_PEER="pk2", REPLICA_PEER_DISK="UpToDate")
    fake = FakeCluster(with_constraint(KILLED, "pk2"), me="pk1")
    assert unfence_main(ARGS + ["--logfile", str(log)], env, Cluster(fake)) == 0
    assert fake.writes() == [["cibadmin", "--delete", "-o", "constraints", "-X",
                              f'<rsc_location id="{CID}"/>']]
    assert f"r0: INFO Removed constraint '{CID}'" in log.read_text()
    fake = FakeCluster(KILLED, me="pk1")
    assert unfence_main(ARGS, env, Cluster(fake)) == 0 and fake.writes() == []
    assert "No constraint in place, nothing to do." in capsys.readouterr().err


def test_unfence_leaves_the_constraint_while_the_peer_is_behind():
    fake = FakeCluster(with_constraint(KILLED, "pk2"))
    assert unfence_main(ARGS, dict(ENV), Cluster(fake)) == 0 and fake.writes() == []


def test_observe_peer_gives_up_after_the_timeout():
    now = [0.0]
    fake = FakeCluster(KILLED_NOT_SEEN)
    cib, state = observe_peer(Cluster(fake), "pk1", 2.0, clock=lambda: now[0],
                              sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert state is PeerState.UNKNOWN and now[0] >= 2.0
