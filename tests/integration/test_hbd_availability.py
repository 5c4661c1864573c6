# SPDX-License-Identifier: GPL-2.0-or-later
"""`hbctl availability` on the journals of a real failover run: two hbd in two namespaces (the
seed's configuration, fast timing as in test_hbd_netns), a planned standby, then ha2 killed."""
import json
import os
import re
import signal
import time

import pytest

from scripts.waiting import wait_for
from tests.hbd_netns import VIP, running_lab

pytestmark = pytest.mark.root

FAST = {"keepalive": "200ms", "deadtime": "1", "initdead": "2", "auto_failback": "off"}
DEADTIME_S = 1.0


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip", "ping")


def availability(lab, n, *argv):
    r = lab.hbctl(n, "availability", "--json", *argv)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    return rep, {(s["kind"], s["name"]): s for s in rep["subjects"]}


def test_standby_for_a_failure_a_planned_standby_and_a_killed_node_are_counted(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(FAST))
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1") and lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active"
             and lab.hbctl("ha2", "rscstatus").stdout.strip() == "none",
             "ha1 holding the group and ha2 active with nothing", 20, details=lab.logs_text)
    time.sleep(0.5)

    r = lab.hbctl("ha1", "standby")                                   # maintenance: planned
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: lab.holds_all("ha2") and lab.holds_none("ha1"), "ha2 to hold the group", 15,
             details=lab.logs_text)
    time.sleep(0.5)
    r = lab.hbctl("ha2", "standby", "--failure", "httpd failing")   # recovery (as hbmon does): unplanned
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"), "ha1 to hold the group again", 15,
             details=lab.logs_text)
    time.sleep(1.0)
    killed_at = time.time()
    lab.kill("ha1", signal.SIGKILL)                                   # unplanned: ha2 takes it over
    wait_for(lambda: lab.holds_all("ha2"), "ha2 to take the group over", 10, details=lab.logs_text)
    time.sleep(0.5)

    # ha2's journal alone (the survivor's) knows all three stops
    rep, subj = availability(lab, "ha2")
    assert rep["skipped_lines"] == 0
    g = subj[("group", VIP)]
    assert (g["failures"], g["planned_failures"]) == (3, 1), json.dumps(g, indent=1)
    downs = [seg for seg in g["timeline"] if seg["state"] != "up"]
    assert [seg["state"] for seg in downs] == ["planned", "down", "down"], downs
    outage = downs[2]
    # the outage begins when ha1 stopped answering (detection - deadtime), ends at ha2's start
    assert abs(outage["start"] - killed_at) < 0.6, (outage, killed_at)
    assert DEADTIME_S * 0.5 < outage["end"] - outage["start"] < DEADTIME_S + 3
    assert 0 < g["availability"] < 1 and g["mttr_s"] == pytest.approx(g["downtime_s"] / 3)
    assert g["availability_unplanned"] > g["availability"]
    ha1 = subj[("node", "ha1")]
    assert ha1["failures"] == 1 and ha1["planned_failures"] == 0
    assert subj[("node", "ha2")]["failures"] == 0
    reqs = [(r["what"], r.get("planned", True), r.get("why")) for r in journal(lab, "ha2") if r["event"] == "request"]
    assert reqs == [("standby", False, "httpd failing")]

    # merged with the killed node's journal: the same stops, nothing counted twice
    rep2, subj2 = availability(lab, "ha2", "--journal", os.path.join(lab.run_dir("ha1"), "journal.jsonl"))
    g2 = subj2[("group", VIP)]
    assert (g2["failures"], g2["planned_failures"]) == (3, 1), json.dumps(g2, indent=1)
    assert g2["downtime_s"] == pytest.approx(g["downtime_s"], abs=0.5)
    # ha2 counts ha1's holding from ha1's stable report: close to ha1's own "started"
    assert 0 < g["planned_downtime_s"] and abs(g2["planned_downtime_s"] - g["planned_downtime_s"]) < 0.2, (g, g2)

    # the text report and its timeline
    svg = os.path.join(lab.node_dir("ha2"), "availability.svg")
    r = lab.hbctl("ha2", "availability", "--plot", svg)
    assert r.returncode == 0 and f"group {VIP}" in r.stdout, r.stdout
    assert re.search(r"group 10\.0\.17\.26 .* 3 │ +1 │", r.stdout), r.stdout
    with open(svg) as f:
        assert f.read().startswith("<svg")


def journal(lab, n):
    from hbd.journal import read_journal
    return read_journal(os.path.join(lab.run_dir(n), "journal.jsonl"))
