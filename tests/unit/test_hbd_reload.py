# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.reload without I/O: the haresources and ha.cf diffs (with hypothesis), and the group
changes a reload makes on a real GroupManager (which stop, which start, what is left alone)."""
import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hbd.config import parse_ha_config
from hbd.groups import GroupManager, GroupState, StartGroup, StopGroup
from hbd.haresources import ResourceGroup, ResourceSpec, parse_haresources
from hbd.reload import ADDED_REASON, CHANGED_REASON, REMOVED_REASON, Reloader, diff_config, diff_groups

HACF = "keepalive 1\ndeadtime 10\nwarntime 5\ninitdead 20\nudpport 694\nbcast eth0\nauto_failback on\nnode ha1 ha2\n"


# --- the haresources diff -----------------------------------------------------------------------

words = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "httpd", "mysql", "datadisk::r0",
                         "Filesystem::/dev/drbd0::/data::ext4", "IPaddr2::10.0.0.9/24/eth0"])
lines = st.tuples(st.sampled_from(["ha1", "ha2"]), st.lists(words, min_size=1, max_size=4))
files = st.lists(lines, max_size=6).map(
    lambda ls: "".join(f"{n} {' '.join(ws)}\n" for n, ws in {ws[0]: (n, ws) for n, ws in ls}.values()))


def groups(text):
    return parse_haresources(text, "haresources", ("ha1", "ha2"))


@settings(max_examples=300, deadline=None)
@given(files, st.integers(0, 3))
def test_diff_of_a_file_with_itself_is_empty_whatever_the_comments_and_blank_lines(text, pad):
    a = groups(text)
    b = groups("# reloaded\n" * pad + text.replace("\n", "\n\n"))     # other line numbers
    d = diff_groups(a, b)
    assert d.empty and not (d.added or d.removed or d.changed)
    assert set(d.unchanged) == {g.name for g in a}


@settings(max_examples=300, deadline=None)
@given(files, files)
def test_diff_partitions_both_files_and_rebuilds_the_new_one(x, y):
    a, b = groups(x), groups(y)
    d = diff_groups(a, b)
    new_keys = [g.name for g in b]
    assert sorted([g.name for g in d.added] + [n.name for _o, n in d.changed] + list(d.unchanged)) \
        == sorted(new_keys)
    assert sorted([g.name for g in d.removed] + [o.name for o, _n in d.changed] + list(d.unchanged)) \
        == sorted(g.name for g in a)
    for old, new in d.changed:
        assert old.name == new.name and (old.node, old.resources) != (new.node, new.resources)
    assert diff_groups(b, a).added == d.removed and diff_groups(b, a).removed == d.added
    assert d.empty == ([(g.name, g.node, g.resources) for g in sorted(a, key=lambda g: g.name)]
                       == [(g.name, g.node, g.resources) for g in sorted(b, key=lambda g: g.name)])


def test_diff_names_what_changed():
    a = groups("ha1 10.0.0.1 httpd\nha2 10.0.0.2 mysql\nha1 10.0.0.3\n")
    b = groups("ha1 10.0.0.1 httpd\nha1 10.0.0.2 mysql\nha2 IPaddr2::10.0.0.9/24/eth0\n")
    d = diff_groups(a, b)
    assert [g.name for g in d.added] == ["IPaddr2::10.0.0.9/24/eth0"]
    assert [g.name for g in d.removed] == ["10.0.0.3"]
    assert [(o.node, n.node) for o, n in d.changed] == [("ha2", "ha1")]        # another owner
    assert d.unchanged == ("10.0.0.1",)
    assert d.describe() == "added IPaddr2::10.0.0.9/24/eth0; removed 10.0.0.3; changed 10.0.0.2; 1 unchanged"
    # the spelling of an address does not change a group (IPaddr::ip is what a bare ip means)
    assert diff_groups(groups("ha1 10.0.0.1 IPaddr::10.0.0.5\n"), groups("ha1 10.0.0.1 10.0.0.5\n")).empty


# --- the ha.cf diff -------------------------------------------------------------------------------

def test_config_diff_sorts_changes_by_what_a_reload_does():
    old = parse_ha_config(HACF)
    assert diff_config(old, parse_ha_config(HACF)).empty
    new = parse_ha_config(HACF.replace("deadtime 10", "deadtime 12").replace("bcast eth0", "ucast eth0 10.0.0.2")
                          + "ping 10.0.0.254\n")
    d = diff_config(old, new)
    assert d.live == ("deadtime 10s -> 12s", "bcast eth0 -> (none)", "ucast (none) -> eth0 10.0.0.2")
    assert d.media and not d.logging and d.restart == ()
    assert d.unused == ("ping (none) -> 10.0.0.254", "deadping 10s -> 12s")     # deadping follows deadtime
    d = diff_config(old, parse_ha_config(HACF.replace("node ha1 ha2", "node ha1 ha3") + "logfile /tmp/x\n"))
    assert d.restart == ("node ha1 ha2 -> ha1 ha3",) and d.logging


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["keepalive 2", "deadtime 15", "warntime 9", "initdead 40", "udpport 700",
                                 "auto_failback off", "ping 10.1.1.1", "logfile /var/log/x", "debug 1",
                                 "mcast eth0 239.0.0.1 694 1 0", "respawn hacluster /bin/true"]), max_size=6))
def test_config_diff_with_itself_is_empty_and_every_change_is_sorted(extra):
    new = parse_ha_config(HACF + "\n".join(extra) + "\n")
    assert diff_config(new, new).empty
    d = diff_config(parse_ha_config(HACF), new)
    assert len(d.live) + len(d.restart) + len(d.unused) == sum(
        getattr(parse_ha_config(HACF), f.name) != getattr(new, f.name) for f in dataclasses.fields(new)
        if f.name not in ("path", "warnings"))


# --- the group changes, on a real GroupManager ----------------------------------------------------

class Target:
    """The part of a daemon the reload's group step touches; scripts succeed at once."""

    def __init__(self, text, peer_up=True):
        self.groups_cfg = groups(text)
        self.by_key = {g.name: g for g in self.groups_cfg}
        self.g = GroupManager("ha1", ("ha1", "ha2"), self.groups_cfg, auto_failback="on",
                              stonith_configured=False, initdead_s=10, now=0.0)
        self.ops = []
        if peer_up:
            self.g.node_up("ha2", 0.0)
            self.g.receive_message("ha2", "resource", {"rsc_hold": "local", "isstable": "1"}, 0.0)
        else:
            self.g.node_dead("ha2", 0.0)
        self.run()
        self.ops.clear()

    def kick(self):
        pass

    def run(self):
        while (a := self.g.next_action()) is not None:
            if isinstance(a, StartGroup):
                self.ops.append(("start", a.key, a.reason, self.by_key[a.key].resources))
                self.g.group_started(a.key, True, 1.0)
            elif isinstance(a, StopGroup):
                self.ops.append(("stop", a.key, a.reason, self.by_key[a.key].resources))
                self.g.group_stopped(a.key, True, 1.0)

    def held(self):
        return {k for k, s in self.g.state.items() if s is GroupState.STARTED}


OLD = "ha1 10.0.0.1 httpd\nha1 10.0.0.3 mysql\nha2 10.0.0.2\n"


def test_reload_stops_removed_restarts_changed_starts_new_and_leaves_the_rest():
    t = Target(OLD)
    assert t.held() == {"10.0.0.1", "10.0.0.3"}
    new = "# reloaded\nha1 10.0.0.1 httpd\nha1 10.0.0.3 datadisk::r0\nha1 10.0.0.4\nha2 10.0.0.2\nha2 10.0.0.5\n"
    r = Reloader(t, load=None)
    r.pending = groups(new)
    r.maybe_apply_groups()
    t.run()
    ip = lambda a: ResourceSpec("IPaddr", (a,))  # noqa: E731
    assert t.ops == [   # the changed group stops with its old definition and starts with the new one
        ("stop", "10.0.0.3", CHANGED_REASON, (ip("10.0.0.3"), ResourceSpec("mysql"))),
        ("start", "10.0.0.4", ADDED_REASON, (ip("10.0.0.4"),)),
        ("start", "10.0.0.3", CHANGED_REASON, (ip("10.0.0.3"), ResourceSpec("datadisk", ("r0",)))),
    ]
    assert t.held() == {"10.0.0.1", "10.0.0.3", "10.0.0.4"}     # 10.0.0.5 is ha2's: it starts it
    assert [g.line for g in t.g.groups] == [2, 3, 4, 5, 6]
    assert t.by_key["10.0.0.3"].resources[1] == ResourceSpec("datadisk", ("r0",))
    # removing a held group stops it with its old definition, then it is gone
    t.ops.clear()
    r.pending = groups("ha1 10.0.0.1 httpd\nha2 10.0.0.2\n")
    r.maybe_apply_groups()
    t.run()
    assert [(op, k, why) for op, k, why, _ in t.ops] == [("stop", "10.0.0.4", REMOVED_REASON),
                                                        ("stop", "10.0.0.3", REMOVED_REASON)]
    assert set(t.g.state) == {"10.0.0.1", "10.0.0.2"} and t.held() == {"10.0.0.1"}


def test_reload_with_the_peer_dead_takes_every_new_group():
    t = Target(OLD, peer_up=False)
    assert t.held() == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    r = Reloader(t, load=None)
    r.pending = groups(OLD + "ha2 10.0.0.5\n")
    r.maybe_apply_groups()
    t.run()
    assert [(op, k) for op, k, _, _ in t.ops] == [("start", "10.0.0.5")]


def test_reload_waits_for_stable_groups():
    t = Target(OLD)
    t.g.request_standby("all", 2.0)            # a standby exchange in flight: not stable
    r = Reloader(t, load=None)
    r.pending = groups(OLD + "ha1 10.0.0.6\n")
    r.maybe_apply_groups()
    assert r.pending is not None and "10.0.0.6" not in t.g.state
    t.g.negotiation.cancel_standby()
    r.maybe_apply_groups()
    t.run()
    assert r.pending is None and t.held() >= {"10.0.0.6"}


def test_group_definition_is_not_its_line_number():
    a = ResourceGroup("ha1", (ResourceSpec("httpd"),), 1)
    b = ResourceGroup("ha1", (ResourceSpec("httpd"),), 7)
    assert diff_groups((a,), (b,)).empty


# --- hbctl reload over the control socket (a stand-in hbd answering) ---------------------------

def test_hbctl_reload_prints_the_changes_or_the_error(tmp_path, capsys):
    from hacommon.control import ControlServer
    from hbd import ctl
    answers = [{"ok": True, "changes": ["ha.cf: deadtime 1s -> 3s", "haresources: added x; 1 unchanged"],
                "groups_waiting": True},
               {"ok": True, "changes": [], "groups_waiting": False},
               {"ok": False, "error": "configuration invalid: /etc/ha.d/ha.cf:3: unknown directive 'x': "
                                      "keeping the running configuration"}]
    asked = []

    def answer(req):
        asked.append(req)
        return answers[len(asked) - 1]
    server = ControlServer(str(tmp_path / "hbd.sock"), answer, name="hbd")
    try:
        assert ctl.main(["--run-dir", str(tmp_path), "reload"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "ha.cf: deadtime 1s -> 3s", "haresources: added x; 1 unchanged",
            "haresources changes wait until the groups are stable (see `hbctl status`)", "configuration reloaded"]
        assert ctl.main(["--run-dir", str(tmp_path), "reload"]) == 0
        assert capsys.readouterr().out == "nothing changed\n"
        assert ctl.main(["--run-dir", str(tmp_path), "reload"]) == 1
        assert capsys.readouterr().err == ("hbctl: reload: configuration invalid: /etc/ha.d/ha.cf:3: unknown "
                                           "directive 'x': keeping the running configuration\n")
    finally:
        server.close()
    assert asked == [{"cmd": "reload"}] * 3


# --- Membership.set_timing: the reload's timing, with a fake clock --------------------------------

def test_set_timing_keepalive_and_deadtime_take_effect_on_both_sides():
    from hbd.protocol.membership import NodeDead
    from tests.unit.test_hbd_membership import Net, make
    net = Net(make("ha1"), make("ha2", gen=7))
    net.transfer()
    net.run_until(3)
    assert net.m["ha2"].peer_dead_s("ha1") == 5.0
    sent = lambda: sum(1 for src, _dst, _d in net.wire if src == "ha1")  # noqa: E731
    before = sent()
    net.run_until(5)
    assert sent() - before == 2                        # keepalive 1 s
    other = parse_authkeys_both()
    net.m["ha1"].set_timing(keepalive_s=0.25, warntime_s=4.0, deadtime_s=8.0, initdead_s=10.0,
                            max_rexmit_delay_s=0.25, authkeys=other, now=net.t)
    net.m["ha2"].set_timing(keepalive_s=1.0, warntime_s=4.0, deadtime_s=8.0, initdead_s=10.0,
                            max_rexmit_delay_s=0.25, authkeys=other, now=net.t)
    before = sent()
    net.run_until(7)
    assert 7 <= sent() - before <= 9                   # keepalive 0.25 s from now on
    assert net.m["ha2"].peer_dead_s("ha1") == 8.0      # ha1's next status carried dt=8000 ms
    assert net.m["ha1"].peer_dead_s("ha2") == 8.0
    # the new deadtime is the one in force: 6 s of silence (> the old 5) is no death, 8 s is
    net.cut.add(("ha1", "ha2"))
    net.run_until(13.05)
    assert net.of("ha2", NodeDead) == []
    net.run_until(15.1)
    assert [e for _t, e in net.of("ha2", NodeDead)] == [NodeDead("ha1")]


def parse_authkeys_both():
    """authkeys rolled over: signs with 3 (md5), still accepts 2 (the peer's until it reloads)."""
    from hbd.authkeys import parse_authkeys
    return parse_authkeys("auth 3\n2 sha1 mahnamahna\n3 md5 newkey\n")
