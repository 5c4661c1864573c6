# SPDX-License-Identifier: GPL-2.0-or-later
"""hbmon restarts a service only when hbd has started its group here, before and after the check.

Found by `make demo`: hbmon began a check (http.monitor -t 2 against the virtual IP) while hbd
was still starting the group; the check ended two seconds later, after hbd had started nginx and
mariadb, and hbmon restarted both: the client lost the service for two seconds right after the
start. The daemon runs against a fake hbd (its control socket replaced by a function) and a
monitor script that fails or succeeds as the test says; the restart script logs each action.
"""
import asyncio
import os
import stat

import pytest

from hbmon import daemon as hbmon_daemon
from hbmon.config import parse_mon_config

HA_CF = "node ha1\nnode ha2\nkeepalive 1\ndeadtime 5\nbcast eth0\n"
HARESOURCES = "ha1 10.0.17.26 web\n"
MON_CF = """mondir = {mondir}
hostgroup web 10.0.17.26

watch web
    service http
        interval 1s
        monitor fail.monitor
        restart web
        restart_max 2
"""


def script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    ha, mondir, run = tmp_path / "ha.d", tmp_path / "mon.d", tmp_path / "run"
    for d in (ha / "resource.d", mondir, run):
        d.mkdir(parents=True)
    (ha / "ha.cf").write_text(HA_CF)
    (ha / "haresources").write_text(HARESOURCES)
    (ha / "authkeys").write_text("auth 1\n1 crc\n")
    os.chmod(ha / "authkeys", 0o600)
    actions, state, later = tmp_path / "actions", tmp_path / "state", tmp_path / "later"
    script(ha / "resource.d" / "web", f"#!/bin/sh\necho \"$1\" >> {actions}\n")
    # the group's state changes while the check runs: the monitor moves it on, then fails
    script(mondir / "fail.monitor", f"#!/bin/sh\ncp {later} {state}\necho 10.0.17.26\nexit 1\n")
    cfg = parse_mon_config(MON_CF.format(mondir=mondir))
    d = hbmon_daemon.Daemon(cfg, node="ha1", run_dir=str(run), ha_dir=str(ha), hbd_run_dir=str(run))

    def fake_hbd(req):
        now = state.read_text()
        if now == "no answer":
            return None
        return {"ok": True, "groups": {"groups": [{"key": "10.0.17.26", "node": "ha1", "state": now}]}}

    def states(at_start, after):
        state.write_text(at_start or "no answer")
        later.write_text(after or "no answer")

    monkeypatch.setattr(d, "_hbd", fake_hbd)
    yield d, states, actions
    d.journal.close()


def recoveries(d):
    import json
    with open(d.journal.path) as f:
        return [r for r in map(json.loads, f) if r["event"] == "recovery"]


@pytest.mark.parametrize("at_start, now, restarted", [
    ("started", "started", True),         # a service that fails under a started group: restart
    ("starting", "started", False),       # the check began while hbd was starting it
    ("stopped", "started", False),        # ... or before hbd began to
    (None, "started", False),             # hbd did not answer yet when the check began
    ("started", "stopping", False),       # hbd is stopping the group now
    (None, None, True),                   # hbd answers neither time: as without a group
])
def test_restart_only_when_the_group_was_started_before_and_after_the_check(daemon, at_start, now, restarted):
    d, states, actions = daemon
    states(at_start, now)
    st = d.states["web/http"]
    asyncio.run(d.check_once(st))
    rec = recoveries(d)
    assert len(rec) == 1 and rec[0]["action"] == "restart"
    assert (rec[0]["result"] == "ok") == restarted, rec
    assert (actions.read_text().split() if actions.exists() else []) == (["stop", "start"] if restarted else [])
    if not restarted:
        assert "nothing to recover" in rec[0]["detail"]
