# SPDX-License-Identifier: GPL-2.0-or-later
"""A real hbd booting alone (the seed's configuration in the two-node lab, ha2 never started):
after initdead it acquires the group, and neither its metrics nor `hbctl availability` call that
a failover or ha2 a death (test_metrics_endpoint's pair test shows a real failover counted)."""
import json
import os

import pytest

from scripts.waiting import wait_for
from tests.hbd_netns import ADDRS, running_lab

pytestmark = pytest.mark.root

PORT = 19943
GROUP = "10.0.17.26"


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip", "curl")


def test_boot_alone_after_initdead_is_no_failover(lab):
    lab.write_config("ha1", timing={"keepalive": "200ms", "deadtime": "1", "initdead": "2", "auto_failback": "on"})
    lab.start_hbd("ha1", "--metrics", f"{ADDRS['ha1']}:{PORT}")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the group after initdead", 20, details=lab.logs_text)

    def scrape():
        r = lab.exec("ha1", "curl", "-sS", "--max-time", "5", f"http://{ADDRS['ha1']}:{PORT}/metrics")
        lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in r.stdout.splitlines()
                 if line and not line.startswith("#")}
        return lines if lines.get(f'hbd_group_state{{group="{GROUP}",state="started"}}') == 1 else None
    m = wait_for(scrape, "the scrape to show the group started", 10, details=lab.logs_text)
    assert m[f'hbd_failovers_total{{group="{GROUP}"}}'] == 0
    assert m['hbd_node_deaths_total{node="ha2"}'] == 0
    assert m['hbd_node_status{node="ha2",status="dead"}'] == 1      # heartbeat's status is unchanged

    from hbd.journal import read_journal
    recs = read_journal(os.path.join(lab.run_dir("ha1"), "journal.jsonl"))
    [dead] = [r for r in recs if r["event"] == "node" and r.get("peer") == "ha2"]
    assert dead["state"] == "dead" and dead["initdead"] is True and "since" not in dead
    assert dead["why"] == "not heard within initdead_s=2 of start-up"
    starting = [r for r in recs if r["event"] == "group" and r["new"] == "starting"]
    assert [r["reason"] for r in starting] == ["initial acquisition after initdead: ha2 never heard"]
    assert "node ha2: not heard within initdead_s=2 of start-up: taking it as dead" in lab.log_text("ha1")

    r = lab.hbctl("ha1", "availability", "--json")
    assert r.returncode == 0, r.stderr
    subjects = {(s["kind"], s["name"]): s for s in json.loads(r.stdout)["subjects"]}
    assert subjects[("group", GROUP)]["failures"] == 0
    assert ("node", "ha2") not in subjects          # never seen: not counted at all
