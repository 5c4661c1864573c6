# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd reload on two real daemons in namespaces (scripts/hbd_lab.py, the seed's configuration plus
groups of a test resource that logs every start and stop): SIGHUP on ha1 and `hbctl reload` on ha2
add, remove and change groups and change deadtime; the unchanged group (the seed's VIP, datadisk,
httpd, mysql) is not touched; a broken ha.cf is logged with file and line and ignored."""
import os
import signal
import time

import pytest

from hacommon.control import exchange
from scripts.waiting import wait_for
from tests.hbd_netns import running_lab

pytestmark = pytest.mark.root

FAST = {"keepalive": "200ms", "deadtime": "1", "initdead": "2", "auto_failback": "on"}
SEED_LINE = "ha1 10.0.17.26 datadisk httpd mysql\n"
BEFORE = SEED_LINE + "ha1 rltrack::old\nha1 rltrack::chg\n"
AFTER = "# reloaded\n" + SEED_LINE + "ha1 rltrack::chg rltrack::chg2\nha1 rltrack::new\n"

# a resource script that logs each call: rltrack::NAME start|stop|status
TRACK = """#!/bin/sh
S="$HBD_RUN_DIR/rltrack-$1"
case "$2" in
  start) touch "$S"; echo "$1 start" >> "$HBD_RUN_DIR/rltrack-log" ;;
  stop) rm -f "$S"; echo "$1 stop" >> "$HBD_RUN_DIR/rltrack-log" ;;
  status) [ -e "$S" ] && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
exit 0
"""


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip")


def write(lab, n, name, text):
    path = os.path.join(lab.config_dir(n), name)
    with open(path, "w") as f:
        f.write(text)


def read(lab, n, name):
    try:
        with open(os.path.join(lab.run_dir(n), name)) as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []


def status(lab, n):
    return exchange(os.path.join(lab.run_dir(n), "hbd.sock"), {"cmd": "status"}, 10)


def test_reload_adds_removes_changes_groups_and_deadtime_leaving_the_rest_running(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST), haresources=BEFORE)
        write(lab, n, "resource.d/rltrack", TRACK)
        os.chmod(os.path.join(lab.config_dir(n), "resource.d/rltrack"), 0o755)
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1") and sorted(read(lab, "ha1", "rltrack-log")) == ["chg start", "old start"],
             "ha1 to hold its three groups", 20, details=lab.logs_text)
    wait_for(lambda: lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active"
             and lab.hbctl("ha1", "nodestatus", "ha2").stdout.strip() == "active", "both nodes active", 15,
             details=lab.logs_text)
    svc_before = read(lab, "ha1", "svc-log")
    assert svc_before == ["primary all", "httpd start", "mysql start"]
    assert status(lab, "ha2")["membership"]["peers"]["ha1"]["dead_s"] == 1.0

    # the new configuration on both nodes: groups changed, deadtime 1 -> 3 s
    for n in ("ha1", "ha2"):
        write(lab, n, "haresources", AFTER)
        with open(os.path.join(lab.config_dir(n), "ha.cf"), "a") as f:
            f.write("deadtime 3\ninitdead 3\n")
    t0 = time.monotonic()
    lab.kill("ha1", signal.SIGHUP, wait=False)
    r = lab.hbctl("ha2", "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["ha.cf: deadtime 1s -> 3s", "ha.cf: warntime 0.5s -> 1.5s",
                                     "ha.cf: initdead 2s -> 3s", "ha.cf: deadping 1s -> 3s (not used by hbd)",
                                     "haresources: added rltrack::new; removed rltrack::old; changed rltrack::chg; "
                                     "1 unchanged", "configuration reloaded"]

    wait_for(lambda: read(lab, "ha1", "rltrack-log")[2:] == ["old stop", "chg stop", "new start", "chg start",
                                                             "chg2 start"],
             "ha1 to stop the removed and changed groups, then start the new and changed ones", 10,
             details=lab.logs_text)
    applied_s = time.monotonic() - t0
    wait_for(lambda: status(lab, "ha2")["membership"]["peers"]["ha1"]["dead_s"] == 3.0,
             "ha2 to apply ha1's new deadtime (ha1's next heartbeat carries dt=3000 ms)", 5, details=lab.logs_text)
    wait_for(lambda: status(lab, "ha1")["membership"]["peers"]["ha2"]["dead_s"] == 3.0,
             "ha1 to apply ha2's new deadtime", 5, details=lab.logs_text)
    # the unchanged group: no stop, no start, still held
    assert read(lab, "ha1", "svc-log") == svc_before
    assert lab.holds_all("ha1") and lab.holds_none("ha2")
    assert read(lab, "ha2", "rltrack-log") == []          # ha2 held none of them and starts none
    groups = {g["key"]: g["state"] for g in status(lab, "ha1")["groups"]["groups"]}
    assert groups == {"10.0.17.26": "started", "rltrack::chg": "started", "rltrack::new": "started"}
    log1 = lab.log_text("ha1")
    assert "reload (SIGHUP): ha.cf: deadtime 1s -> 3s" in log1
    assert "reload (SIGHUP): configuration reloaded" in log1
    from hbd.journal import read_journal
    recs = read_journal(os.path.join(lab.run_dir("ha1"), "journal.jsonl"))
    assert [(r["source"], r["result"]) for r in recs if r["event"] == "reload"] == [("SIGHUP", "ok")]
    stops = {(r["group"], r["new"]): r["planned"] for r in recs if r["event"] == "group"   # planned stops
             and r["new"] in ("stopping", "stopped")}
    assert stops == {("rltrack::old", "stopping"): True, ("rltrack::old", "stopped"): True,
                     ("rltrack::chg", "stopping"): True, ("rltrack::chg", "stopped"): True}
    assert applied_s < 5, applied_s

    # the new deadtime is the one in force: a 2 s silence of ha1 (> the old 1 s) is no death
    lab.kill("ha1", signal.SIGSTOP, wait=False)
    try:
        time.sleep(2.0)
    finally:
        lab.kill("ha1", signal.SIGCONT, wait=False)
    time.sleep(0.5)
    assert lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active"
    assert lab.holds_none("ha2")

    # a broken ha.cf: logged with file and line, the running configuration stays, hbd lives
    path = os.path.join(lab.config_dir("ha1"), "ha.cf")
    with open(path) as f:
        nlines = len(f.read().splitlines())
    with open(path, "a") as f:
        f.write("keepalvie 1\n")
    lab.kill("ha1", signal.SIGHUP, wait=False)
    expect = f"reload (SIGHUP): configuration invalid: {path}:{nlines + 1}: unknown directive 'keepalvie': " \
             f"keeping the running configuration"
    wait_for(lambda: expect in lab.log_text("ha1"), "the broken ha.cf to be logged", 5, details=lab.logs_text)
    r = lab.hbctl("ha1", "reload")
    assert r.returncode == 1 and f"{path}:{nlines + 1}: unknown directive 'keepalvie'" in r.stderr, r.stderr
    assert lab.procs["ha1"].poll() is None
    assert lab.holds_all("ha1") and read(lab, "ha1", "svc-log") == svc_before
    assert len(read(lab, "ha1", "rltrack-log")) == 7
    assert status(lab, "ha1")["membership"]["peers"]["ha2"]["dead_s"] == 3.0


def udp_ports(lab, n):
    out = lab.exec(n, "ss", "-Hulnp").stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if "python" in line}


def test_reload_moves_the_media_and_refuses_a_node_list_change(lab):
    slow = {"keepalive": "200ms", "deadtime": "3", "initdead": "3", "auto_failback": "on"}
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(slow))
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1") and lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active",
             "ha1 holding the group, ha2 seeing it active", 20, details=lab.logs_text)
    assert 694 in udp_ports(lab, "ha1")
    # bcast on udpport 694 -> ucast to the peer on 695, on both nodes (within deadtime of each other)
    for n, peer in (("ha1", "10.0.17.2"), ("ha2", "10.0.17.1")):
        path = os.path.join(lab.config_dir(n), "ha.cf")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("\nbcast eth0\n", f"\nucast eth0 {peer}\n").replace("udpport 694", "udpport 695"))
    logfile = os.path.join(lab.node_dir("ha1"), "ha-log")      # and logging set up again
    with open(os.path.join(lab.config_dir("ha1"), "ha.cf"), "a") as f:
        f.write(f"logfile {logfile}\n")
    for n in ("ha1", "ha2"):
        r = lab.hbctl(n, "reload")
        assert r.returncode == 0, r.stderr
        assert "ha.cf: udpport 694 -> 695" in r.stdout and "ha.cf: bcast eth0 -> (none)" in r.stdout, r.stdout
    assert f"ha.cf: logfile (none) -> {logfile}" in lab.log_text("ha1")
    with open(logfile) as f:
        assert "reload (hbctl reload): configuration reloaded" in f.read()
    wait_for(lambda: udp_ports(lab, "ha1") == {695} and udp_ports(lab, "ha2") == {695},
             "the old sockets closed, the new ones bound", 5, details=lab.logs_text)
    received = status(lab, "ha2")["membership"]["counters"]["accepted"]
    time.sleep(4.0)        # more than deadtime: only the new medium carries heartbeats now
    st = status(lab, "ha2")
    assert st["membership"]["counters"]["accepted"] >= received + 10
    assert st["membership"]["peers"]["ha1"]["status"] == "active"
    assert lab.holds_all("ha1") and lab.holds_none("ha2")
    assert not any(r["event"] == "node" and r["state"] == "dead" for r in journal(lab, "ha2"))
    # a node list change needs a restart: refused whole, nothing else applied
    path = os.path.join(lab.config_dir("ha1"), "ha.cf")
    with open(path, "a") as f:
        f.write("node ha3\nkeepalive 300ms\n")
    r = lab.hbctl("ha1", "reload")
    assert r.returncode == 1
    assert f"{path}: node ha1 ha2 -> ha1 ha2 ha3: needs a restart of hbd (heartbeat restarts itself for it " \
           f"too); nothing reloaded: keeping the running configuration" in r.stderr, r.stderr
    assert [(r["source"], r["result"]) for r in journal(lab, "ha1") if r["event"] == "reload"] == \
        [("hbctl reload", "ok"), ("hbctl reload", "refused")]
    assert lab.procs["ha1"].poll() is None and lab.holds_all("ha1")


def journal(lab, n):
    from hbd.journal import read_journal
    return read_journal(os.path.join(lab.run_dir(n), "journal.jsonl"))
