# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd as a real daemon: daemonizes without -f (pid file), logfile/debugfile from ha.cf, SIGUSR1
state dump, SIGHUP config check, refuses a second instance, SIGTERM releases everything."""
import os
import signal
import subprocess

import pytest

from scripts.waiting import wait_for
from tests.hbd_netns import PYTHON, REPO, running_lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip")


def hbd(lab, n, *extra):
    env = dict(os.environ, PYTHONPATH=REPO, REPLICACTL=os.path.join(lab.node_dir(n), "replicactl"))
    return subprocess.run(["ip", "netns", "exec", lab.ns[n], PYTHON, "-m", "hbd", "--config-dir",
                           lab.config_dir(n), "--node", n, "--run-dir", lab.run_dir(n), *extra],
                          capture_output=True, text=True, env=env, timeout=30)


def test_daemonized_hbd_lifecycle(lab):
    logfile = os.path.join(lab.node_dir("ha1"), "ha-log")
    debugfile = os.path.join(lab.node_dir("ha1"), "ha-debug")
    lab.write_config("ha1", timing={"keepalive": "200ms", "deadtime": "1", "initdead": "1"},
                     extra_hacf=f"logfile {logfile}\ndebugfile {debugfile}")
    r = hbd(lab, "ha1")
    assert r.returncode == 0, r.stderr            # the parent returns once the daemon is forked
    pidfile = os.path.join(lab.run_dir("ha1"), "hbd.pid")
    def read_pid():
        try:
            with open(pidfile) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None
    wait_for(lambda: read_pid() is not None, "hbd's pid file", 10, details=lab.logs_text)
    pid = read_pid()
    try:
        # alone: after initdead it takes every group (peer never heard)
        wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the VIP, disk and services", 10, details=lab.logs_text)
        r2 = hbd(lab, "ha1")
        assert r2.returncode == 1 and r2.stderr.startswith(f"hbd: already running: pid {pid} ("), r2.stderr
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "reload (SIGHUP): nothing changed" in open(logfile).read(), "the SIGHUP reload in the log", 5,
                 details=lab.logs_text)
        text = open(logfile).read()
        assert "state dump: groups" in text and "node ha2: not heard within initdead_s=1 of start-up" in text
        assert "hbd[" in text.splitlines()[0]
        assert lab.hbctl("ha1", "rscstatus").stdout.strip() == "local"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"hbd pid {pid} to exit", 15, details=lab.logs_text)
    assert lab.holds_none("ha1") and not os.path.exists(pidfile)
    assert not os.path.exists(os.path.join(lab.run_dir("ha1"), "hbd.sock"))
    assert os.path.getsize(debugfile) >= os.path.getsize(logfile) > 0
