# SPDX-License-Identifier: GPL-2.0-or-later
"""Both CPUs busy for 60 s with keepalive 1 / deadtime 5: no false failover (a too-small deadtime
under load is heartbeat's classic split-brain cause, heartbeat-reference.md section 6 item 1)."""
import os
import signal
import subprocess
import time

import pytest

from scripts.waiting import wait_for
from tests.hbd_netns import running_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]
BUSY_S = 60


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip")


def test_busy_cpus_do_not_cause_false_failover(lab):
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing={"keepalive": "1", "deadtime": "5", "initdead": "10", "auto_failback": "on"})
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 30, details=lab.logs_text)
    ncpu = os.cpu_count() or 2
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(ncpu)]
    try:
        end = time.monotonic() + BUSY_S
        while time.monotonic() < end:
            assert lab.holds_all("ha1") and lab.holds_none("ha2")
            assert all(p.poll() is None for p in lab.procs.values())
            time.sleep(2)
    finally:
        for p in hogs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    from hbd.journal import read_journal
    for n in ("ha1", "ha2"):
        recs = read_journal(os.path.join(lab.run_dir(n), "journal.jsonl"))
        assert not [r for r in recs if r["event"] == "node" and r["state"] in ("dead", "restarted")], n
        assert not [r for r in recs if r["event"] == "group" and r["new"] == "failed"], n
    assert lab.hbctl("ha2", "nodestatus", "ha1").stdout.strip() == "active"
