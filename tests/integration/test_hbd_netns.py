# SPDX-License-Identifier: GPL-2.0-or-later
"""Two real hbd daemons in two network namespaces with the seed's ha.cf/haresources/authkeys.

Only the timing lines of ha.cf are replaced (keepalive 200ms, deadtime 1 s, initdead 2 s, and
auto_failback where a test is about it); interface (eth0), addresses (10.0.17.0/24, VIP 10.0.17.26),
node names (ha1/ha2 via --node), haresources and authkeys are the seed's.  See scripts/hbd_lab.py.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scripts.waiting import wait_for
from tests.hbd_netns import running_lab

pytestmark = pytest.mark.root

FAST = {"keepalive": "200ms", "deadtime": "1", "initdead": "2"}
DEADTIME_S = 1.0


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip", "ping")


def boot(lab, auto_failback="on", **kw):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST, auto_failback=auto_failback), **kw)
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 15, details=lab.logs_text)
    wait_for(lambda: both_active(lab), "both nodes active, ha2 holding nothing", 15, details=lab.logs_text)
    assert lab.holds_none("ha2")


def joined(lab):
    return (lab.hbctl("ha1", "nodestatus", "ha2").stdout.strip() == "active"
            and lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active")


def both_active(lab):
    return joined(lab) and lab.hbctl("ha2", "rscstatus").stdout.strip() == "none"


def assert_takeover(lab, node, since, bound_s=None):
    """`node` holds VIP + services; the daemon finished the takeover within deadtime + 1 s of
    `since` (CLOCK_MONOTONIC, as the journal's "mono"), not counting this harness's polling."""
    bound_s = DEADTIME_S + 1.0 if bound_s is None else bound_s
    wait_for(lambda: lab.holds_all(node), f"{node} to hold the VIP, disk and services", bound_s + 5,
             details=lab.logs_text)

    def started():   # the journal line follows the last resource's start by a moment
        return [r["mono"] for r in journal(lab, node)
                if r["event"] == "group" and r["new"] == "started" and r["mono"] > since]
    wait_for(started, f"{node}'s journal to record the group started", 5, details=lab.logs_text)
    done = started()
    assert done and done[0] - since <= bound_s, (done, since, lab.log_text(node))
    return done[0] - since


def journal(lab, n):
    from hbd.journal import read_journal
    return read_journal(os.path.join(lab.run_dir(n), "journal.jsonl"))


def test_vip_and_services_on_ha1_kill9_failover_then_failback(lab):
    boot(lab, auto_failback="on")
    assert lab.ping_vip()
    assert lab.cli_neighbor_mac() == lab.mac("ha1")
    st = lab.hbctl("ha1", "status")
    assert st.returncode == 0 and "Heartbeat is running on this machine." in st.stdout
    assert "group 10.0.17.26 (preferred ha1): started" in st.stdout
    assert lab.hbctl("ha1", "rscstatus").stdout.strip() == "local"
    assert lab.hbctl("ha2", "rscstatus").stdout.strip() == "none"
    assert lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active"

    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGKILL)
    assert_takeover(lab, "ha2", t0)
    # gratuitous ARP moved the client's neighbour entry to ha2 (ha1's kernel still has the VIP)
    wait_for(lambda: lab.cli_neighbor_mac() == lab.mac("ha2"), "the client's ARP entry for the VIP to name ha2", 2, details=lab.logs_text)
    assert lab.ping_vip()
    assert lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "dead"
    events = [(r["event"], r.get("peer"), r.get("state")) for r in journal(lab, "ha2")]
    assert ("node", "ha1", "dead") in events

    # ha1 comes back: it releases what the killed daemon left behind, then auto_failback on
    lab.start_hbd("ha1")
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group and ha2 nothing", 15, details=lab.logs_text)
    wait_for(lambda: lab.cli_neighbor_mac() == lab.mac("ha1"), "the client's ARP entry for the VIP to name ha1", 3, details=lab.logs_text)
    assert lab.ping_vip()
    assert "non-idle at start-up" in lab.log_text("ha1")


def test_link_down_failover_and_partition_heal(lab):
    boot(lab, auto_failback="off")
    t0 = time.monotonic()
    lab.link("ha1", up=False)
    assert_takeover(lab, "ha2", t0)
    assert lab.ping_vip(timeout_s=2)            # ha1 is unreachable: the answer comes from ha2
    assert lab.cli_neighbor_mac() == lab.mac("ha2")
    # heal: both held the group; the non-preferred side (ha2) gives way, exactly one holder remains
    lab.link("ha1", up=True)
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group and ha2 nothing", 15, details=lab.logs_text)
    assert "returning after partition" in lab.log_text("ha2")
    wait_for(lambda: lab.ping_vip(), "the VIP to answer ping", 5, details=lab.logs_text)


def test_auto_failback_off_stays_then_takeover_and_standby(lab):
    boot(lab, auto_failback="off")
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGKILL)
    assert_takeover(lab, "ha2", t0)
    lab.start_hbd("ha1")
    wait_for(lambda: lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active", "ha2 to see ha1 active", 10,
             details=lab.logs_text)
    time.sleep(3)
    assert lab.holds_all("ha2") and lab.holds_none("ha1")          # auto_failback off: stays
    t0 = time.monotonic()
    r = lab.hbctl("ha1", "takeover")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Taking over [all]." in r.stdout
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group and ha2 nothing", 10, details=lab.logs_text)
    moved_s = time.monotonic() - t0
    assert lab.ping_vip()
    r = lab.hbctl("ha1", "standby")
    assert r.returncode == 0 and "Going standby [all]." in r.stdout, r.stdout + r.stderr
    wait_for(lambda: lab.holds_all("ha2") and lab.holds_none("ha1"), "ha2 to hold the group and ha1 nothing", 10, details=lab.logs_text)
    assert lab.ping_vip()
    r = lab.hbctl("ha1", "standby")
    assert r.returncode == 1 and "holds no all resources to give up" in r.stderr
    reqs = [(r["what"], r["result"]) for r in journal(lab, "ha1") if r["event"] == "request"]
    assert reqs == [("takeover", "ok"), ("standby", "ok"), ("standby", "refused")]
    assert moved_s < 10


def test_clean_sigterm_peer_takes_over_at_once(lab):
    slow = {"keepalive": "1", "deadtime": "10", "initdead": "10", "auto_failback": "on"}
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(slow))
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 20, details=lab.logs_text)
    wait_for(lambda: both_active(lab), "both nodes active, ha2 holding nothing", 20, details=lab.logs_text)
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGTERM, wait=False)
    # far less than deadtime (10 s)
    wait_for(lambda: lab.holds_all("ha2"), "ha2 to hold the VIP, disk and services", 5, details=lab.logs_text)
    lab.procs["ha1"].wait(timeout=20)
    assert lab.procs["ha1"].returncode == 0
    assert lab.holds_none("ha1")
    assert "shut down cleanly" in lab.log_text("ha2")
    dead = [r for r in journal(lab, "ha2") if r["event"] == "node" and r["state"] == "dead"]
    assert dead and dead[0]["graceful"] is True
    assert time.monotonic() - t0 < 10


def test_failed_start_is_rolled_back_and_reported(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST, auto_failback="on"))
    open(os.path.join(lab.config_dir("ha1"), "fail-mysql"), "w").close()
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    failed = lambda: any(r["event"] == "group" and r["new"] == "failed" for r in journal(lab, "ha1"))  # noqa
    wait_for(failed, "ha1's journal to record the group failed", 15, details=lab.logs_text)
    wait_for(lambda: joined(lab), "ha1 and ha2 to see each other active", 15, details=lab.logs_text)
    assert lab.holds_none("ha1")                       # VIP, datadisk and httpd were stopped again
    with open(os.path.join(lab.run_dir("ha1"), "svc-log")) as f:
        log = f.read().split("\n")
    assert [x for x in log if x] == ["primary all", "httpd start", "httpd stop", "secondary all"]
    text = lab.log_text("ha1")
    assert "resource 'mysql': start failed" in text and "giving up group '10.0.17.26'" in text
    rec = [r for r in journal(lab, "ha1") if r["event"] == "resource" and r["result"] == "failed"]
    assert rec[0]["resource"] == "mysql" and rec[0]["action"] == "start"


def test_wrong_authkeys_nodes_do_not_join(lab):
    lab.write_config("ha1", timing=dict(FAST))
    lab.write_config("ha2", timing=dict(FAST), authkeys="auth 2\n2 sha1 wrongkey\n")
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    time.sleep(3.5)
    assert lab.hbctl("ha1", "nodestatus", "ha2").stdout.strip() == "dead"
    assert lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "dead"
    st = lab.hbctl("ha1", "status").stdout
    assert "bad_auth=" in st, st
    assert not any(r["event"] == "node" and r["state"] == "up" for r in journal(lab, "ha1"))


def test_forged_and_replayed_packets_change_nothing(lab):
    boot(lab, auto_failback="on")
    # listen on the client namespace (same LAN) and record ha1's real datagrams
    rec = subprocess.run(
        ["ip", "netns", "exec", lab.ns["cli"], sys.executable, "-c",
         "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('',694))\ns.settimeout(0.5)\n"
         "out=[]\nend=time.time()+1.5\nwhile time.time()<end:\n"
         "    try:\n        d,a=s.recvfrom(65536)\n    except socket.timeout:\n        continue\n"
         "    if a[0]=='10.0.17.1': out.append(d.hex())\nprint('\\n'.join(out))"],
        capture_output=True, text=True, timeout=20)
    captured = [bytes.fromhex(x) for x in rec.stdout.split()]
    assert captured, rec.stderr
    before = json.loads(json.dumps(journal(lab, "ha2")))
    # a forged shutdone claiming to be ha1, signed with a wrong key, then a replay of real packets
    from hbd.authkeys import parse_authkeys
    from hbd.protocol.packets import encode_message
    bad = parse_authkeys("auth 2\n2 sha1 notthekey\n")
    forged = encode_message([("t", "shutdone"), ("st", "dead"), ("src", "ha1"), ("seq", "ffff"),
                             ("hg", "ffffffff"), ("ts", "0"), ("ttl", "3")], bad)
    sender = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "for h in sys.stdin.read().split():\n    s.sendto(bytes.fromhex(h),('10.0.17.2',694))\n")
    payload = "\n".join(d.hex() for d in [forged] + captured * 3)
    subprocess.run(["ip", "netns", "exec", lab.ns["cli"], sys.executable, "-c", sender], input=payload,
                   text=True, check=True, timeout=20)
    time.sleep(1.5)
    assert lab.holds_all("ha1") and lab.holds_none("ha2")
    after = journal(lab, "ha2")
    assert [r for r in after if r["event"] in ("node", "group")] == \
        [r for r in before if r["event"] in ("node", "group")]
    st = lab.hbctl("ha2", "status").stdout
    assert "bad_auth=1" in st, st


def test_stonith_external_fences_before_takeover_and_withholds_while_failing(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST, auto_failback="on"),
                         extra_hacf=f"stonith_host * external/testfence ha1 {lab.node_dir(n)}")
        lab.write_stonith_plugin(n)
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 15, details=lab.logs_text)
    wait_for(lambda: both_active(lab), "both nodes active, ha2 holding nothing", 15, details=lab.logs_text)
    fail_flag = os.path.join(lab.node_dir("ha2"), "stonith-fail")
    calls = os.path.join(lab.node_dir("ha2"), "stonith-calls")
    open(fail_flag, "w").close()
    lab.kill("ha1", signal.SIGKILL)
    time.sleep(DEADTIME_S + 3)
    assert lab.holds_none("ha2"), "took over without a successful fence"
    with open(calls) as f:
        assert f.read().splitlines()[0] == "reset ha1"
    os.unlink(fail_flag)
    wait_for(lambda: lab.holds_all("ha2"), "ha2 to hold the VIP, disk and services", 10, details=lab.logs_text)
    with open(calls) as f:
        assert len(f.read().splitlines()) >= 2
    results = [r["result"] for r in journal(lab, "ha2") if r["event"] == "stonith"]
    assert results[0] == "failed" and results[-1] == "ok"
    assert "takeover withheld" in lab.log_text("ha2")


def test_seed_default_legacy_auto_failback(lab):
    """The seed's ha.cf has no auto_failback line: heartbeat's default 'legacy' (failback by ip-request)."""
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST))
    with open(os.path.join(lab.config_dir("ha1"), "ha.cf")) as f:
        assert "auto_failback" not in f.read()
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 15, details=lab.logs_text)
    wait_for(lambda: both_active(lab), "both nodes active, ha2 holding nothing", 15, details=lab.logs_text)
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGKILL)
    assert_takeover(lab, "ha2", t0)
    lab.start_hbd("ha1")
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group and ha2 nothing", 15, details=lab.logs_text)
    assert "legacy failback" in lab.log_text("ha1")
    assert "asks for group '10.0.17.26': giving it up" in lab.log_text("ha2")
    wait_for(lambda: lab.ping_vip(), "the VIP to answer ping", 3, details=lab.logs_text)


def test_frozen_node_sigstop_then_resume_converges(lab):
    """A hung hbd (SIGSTOP) is declared dead; when it resumes both sides hold the group for a moment,
    the non-preferred side gives way and the VIP is re-announced from the preferred node."""
    boot(lab, auto_failback="on")
    assert lab.ping_vip() and lab.cli_neighbor_mac() == lab.mac("ha1")
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGSTOP, wait=False)
    try:
        assert_takeover(lab, "ha2", t0)
        wait_for(lambda: lab.cli_neighbor_mac() == lab.mac("ha2"), "the client's ARP entry for the VIP to name ha2", 2, details=lab.logs_text)
    finally:
        lab.kill("ha1", signal.SIGCONT, wait=False)
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group and ha2 nothing", 15, details=lab.logs_text)
    wait_for(lambda: lab.cli_neighbor_mac() == lab.mac("ha1"), "the client's ARP entry for the VIP to name ha1", 5, details=lab.logs_text)
    assert lab.ping_vip()
    time.sleep(2)
    assert lab.holds_all("ha1") and lab.holds_none("ha2")


@pytest.mark.parametrize("medium", ["mcast eth0 239.0.17.1 694 1 0", "ucast eth0 {peer}"])
def test_mcast_and_ucast_media(lab, medium):
    for n, peer in (("ha1", "10.0.17.2"), ("ha2", "10.0.17.1")):
        lab.write_config(n, timing=dict(FAST, auto_failback="on"))
        path = os.path.join(lab.config_dir(n), "ha.cf")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("\nbcast eth0\n", "\n" + medium.format(peer=peer) + "\n"))
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 15, details=lab.logs_text)
    wait_for(lambda: both_active(lab), "both nodes active, ha2 holding nothing", 15, details=lab.logs_text)
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGKILL)
    assert_takeover(lab, "ha2", t0)
