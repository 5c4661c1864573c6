# SPDX-License-Identifier: GPL-2.0-or-later
"""hbmon with real services in network namespaces, Debian mon's own monitors and alerts.

1. One namespace: a TCP service and `python -m http.server` (started by a heartbeat-style
   resource script), watched by Debian's unchanged tcp.monitor and http.monitor, alerts by
   Debian's file.alert.  The TCP service is killed and started again by the test: the failure
   is journaled within interval + timeout, alerted once, then upalerted; a service depending
   on it is neither checked nor alerted meanwhile.  The HTTP server is killed: hbmon restarts
   it through the resource script and it answers again.
2. The seed's hbd pair (scripts/hbd_lab.py): httpd dies on ha1 and will not start again:
   after restart_max restarts hbmon asks hbd for standby and ha2 takes the group over.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from scripts.lab import NetLab
from scripts.waiting import wait_for
from tests.hbd_netns import PYTHON, REPO, running_lab

pytestmark = pytest.mark.root

MONDIR = "/usr/lib/mon/mon.d"
ALERTDIR = "/usr/lib/mon/alert.d"
INTERVAL_S, TIMEOUT_S = 1.0, 2.0

TCP_SERVER = """import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""

WEB_SCRIPT = """#!/bin/sh
# resource script: python -m http.server on 8080 serving $DOCROOT, pid in $PIDFILE
PIDFILE=%(pidfile)s
case "$1" in
  start) cd %(docroot)s && setsid %(python)s -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &
         echo $! > $PIDFILE; n=0
         while [ $n -lt 50 ]; do %(python)s -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 1)' \
             2>/dev/null && exit 0; n=$((n+1)); sleep 0.1; done; exit 1 ;;
  stop) [ -e $PIDFILE ] && kill $(cat $PIDFILE) 2>/dev/null; rm -f $PIDFILE; exit 0 ;;
  status) [ -e $PIDFILE ] && kill -0 $(cat $PIDFILE) 2>/dev/null && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
exit 2
"""


def journal(run_dir):
    try:
        with open(os.path.join(run_dir, "hbmon.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def alerts_in(path):
    try:
        with open(path) as f:
            return [ln for ln in f.read().splitlines() if ln.split(" ")[0] in ("failure", "up")]
    except FileNotFoundError:
        return []


@pytest.fixture
def netlab():
    from tests.conftest import requires_commands, requires_root
    requires_root()
    requires_commands("ip", "perl")
    if not os.access(os.path.join(MONDIR, "tcp.monitor"), os.X_OK):
        pytest.skip("needs Debian's mon package (/usr/lib/mon/mon.d; make deps installs it)")
    lab = NetLab(f"hbm{os.getpid() % 100000}")
    try:
        lab.add_namespace("srv")
        yield lab
    finally:
        lab.close()


def start_hbmon(lab_popen, ns, tmp, cfg_text, ha_dir, hbd_run_dir):
    cfg_dir, run_dir = os.path.join(tmp, "mon"), os.path.join(tmp, "hbmon-run")
    os.makedirs(cfg_dir, exist_ok=True)
    with open(os.path.join(cfg_dir, "mon.cf"), "w") as f:
        f.write(cfg_text)
    env = dict(os.environ, PYTHONPATH=REPO)
    log = open(os.path.join(tmp, "hbmon.log"), "w")
    p = lab_popen(ns, [PYTHON, "-m", "hbmon", "-f", "--config-dir", cfg_dir, "--node", "ha1", "--run-dir", run_dir,
                       "--ha-dir", ha_dir, "--hbd-run-dir", hbd_run_dir], stdout=log, stderr=subprocess.STDOUT,
                  env=env, cwd=REPO)
    return p, run_dir, log


def test_debian_monitors_alert_once_upalert_dependency_and_restart(netlab, tmp_path):
    tmp = str(tmp_path)
    ns = netlab.ns("srv")
    ha_dir = os.path.join(tmp, "ha.d")
    os.makedirs(os.path.join(ha_dir, "resource.d"))
    docroot = os.path.join(tmp, "www")
    os.makedirs(docroot)
    with open(os.path.join(docroot, "index.html"), "w") as f:
        f.write("<html>hbmon-marker</html>\n")
    script = os.path.join(ha_dir, "resource.d", "websvc")
    with open(script, "w") as f:
        f.write(WEB_SCRIPT % {"pidfile": os.path.join(tmp, "web.pid"), "docroot": docroot, "python": PYTHON})
    os.chmod(script, 0o755)
    tcp_alerts, dep_alerts, web_alerts = (os.path.join(tmp, n) for n in ("tcp.alerts", "dep.alerts", "web.alerts"))
    tcp = netlab.popen(ns, [PYTHON, "-c", TCP_SERVER, "8081"])
    assert netlab.run(ns, script, "start").returncode == 0
    cfg = f"""alertdir = {ALERTDIR}
mondir = {MONDIR}
maxprocs = 10

hostgroup local 127.0.0.1

watch local
    service tcp
        interval 1s
        timeout 2s
        monitor tcp.monitor -p 8081 -t 1
        period wd {{Sun-Sat}}
            alert file.alert {tcp_alerts}
            alertevery 1h
            upalert file.alert {tcp_alerts}
    service behind-tcp
        interval 1s
        monitor tcp.monitor -p 8081 -t 1
        depend SELF:tcp
        dep_behavior m
        period
            alertafter 2
            alert file.alert {dep_alerts}
    service http
        interval 1s
        timeout 2s
        monitor http.monitor -p 8080 -t 1
        restart websvc
        restart_max 2
        failover no
        period
            alert file.alert {web_alerts}
            upalert file.alert {web_alerts}
    service page
        interval 1s
        monitor httpbody.monitor -p 8080 -u /index.html -r hbmon-marker
"""
    hbmon, run_dir, log = start_hbmon(netlab.popen, ns, tmp, cfg, ha_dir, os.path.join(tmp, "no-hbd"))
    try:
        def up(service):
            return [r for r in journal(run_dir) if r["event"] == "service" and r["service"] == service
                    and r["state"] == "up"]
        for svc in ("tcp", "behind-tcp", "http", "page"):
            wait_for(lambda s=svc: up(s), f"{svc} checked up", 15, details=lambda: open(log.name).read())
        time.sleep(1.5)
        # --- kill the TCP service: down within interval + timeout, one alert, dependent suppressed
        killed = time.time()
        tcp.kill()
        tcp.wait()

        def down(service):
            return [r for r in journal(run_dir) if r["event"] == "service" and r["service"] == service
                    and r["state"] == "down"]
        wait_for(lambda: down("tcp"), "tcp down in the journal", 10, details=lambda: open(log.name).read())
        noticed = down("tcp")[0]["time"] - killed
        assert noticed <= INTERVAL_S + TIMEOUT_S, noticed
        wait_for(lambda: alerts_in(tcp_alerts), "file.alert to write the failure", 10)
        time.sleep(4)                                   # four more failing checks: no second alert
        lines = alerts_in(tcp_alerts)
        assert len(lines) == 1 and lines[0].startswith("failure local tcp ") and "127.0.0.1" in lines[0], lines
        # the dependent may have failed once before tcp did; from then on it is not checked
        assert alerts_in(dep_alerts) == [] and len(down("behind-tcp")) <= 1
        with open(os.path.join(run_dir, "hbmon.json")) as f:
            behind = [s for s in json.load(f)["services"] if s["service"] == "behind-tcp"][0]
        assert behind["depend_ok"] is False and behind["consec_failures"] <= 1, behind
        tcp = netlab.popen(ns, [PYTHON, "-c", TCP_SERVER, "8081"])
        wait_for(lambda: len(alerts_in(tcp_alerts)) == 2, "the upalert", 10, details=lambda: open(log.name).read())
        assert alerts_in(tcp_alerts)[1].startswith("up local tcp "), alerts_in(tcp_alerts)
        assert len(up("tcp")) == 2
        # --- kill the web server: hbmon restarts it through websvc
        with open(os.path.join(tmp, "web.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        wait_for(lambda: down("http"), "http down", 10, details=lambda: open(log.name).read())
        wait_for(lambda: len(up("http")) == 2 and len(up("page")) >= 1, "http back up after the restart", 15,
                 details=lambda: open(log.name).read())
        recs = [r for r in journal(run_dir) if r["event"] == "recovery"]
        assert recs and recs[0]["action"] == "restart" and recs[0]["result"] == "ok", recs
        wait_for(lambda: len(alerts_in(web_alerts)) == 2, "http's upalert", 10)
        assert [ln.split(" ")[0] for ln in alerts_in(web_alerts)] == ["failure", "up"]
        st = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c",
                             "import sys; from hacommon.control import exchange; "
                             f"print(__import__('json').dumps(exchange('{run_dir}/hbmon.sock', {{'cmd': 'status'}})))"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=30)
        status = json.loads(st.stdout)
        assert {s["service"]: s["status"] for s in status["services"]} == \
            {"tcp": "ok", "behind-tcp": "ok", "http": "ok", "page": "ok"}
        for rec in journal(run_dir):
            if rec["event"] == "service":
                assert {"time", "mono", "node", "service", "group", "state", "planned"} <= rec.keys()
    finally:
        hbmon.send_signal(signal.SIGTERM)
        try:
            hbmon.wait(timeout=15)
        finally:
            log.close()
            subprocess.run(["ip", "netns", "exec", ns, script, "stop"], capture_output=True, timeout=30)
    assert hbmon.returncode == 0


@pytest.fixture
def lab(tmp_path):
    yield from running_lab(tmp_path, "ip", "ping")


def test_service_that_will_not_restart_fails_the_group_over(lab, tmp_path):
    fast = {"keepalive": "200ms", "deadtime": "1", "initdead": "2", "auto_failback": "off"}
    for n in ("ha1", "ha2"):
        lab.write_config(n, timing=dict(fast))
    lab.start_hbd("ha1")
    lab.start_hbd("ha2")
    wait_for(lambda: lab.holds_all("ha1"), "ha1 to hold the group", 20, details=lab.logs_text)
    wait_for(lambda: lab.hbctl("ha2", "rscstatus").stdout.strip() == "none"
             and lab.hbctl("ha1", "nodestatus", "ha2").stdout.strip() == "active", "ha2 joined", 20,
             details=lab.logs_text)
    cfg = """hostgroup ha1 ha1

watch ha1
    service httpd
        interval 1s
        monitor lsb.monitor httpd ;;
        restart httpd
        restart_max 1
        period
            alert file.alert %s
""" % os.path.join(str(tmp_path), "httpd.alerts")
    hbmon, run_dir, log = start_hbmon(lab.net.popen, lab.ns["ha1"], os.path.join(str(tmp_path), "ha1"), cfg,
                                      lab.config_dir("ha1"), lab.run_dir("ha1"))
    try:
        wait_for(lambda: any(r["event"] == "service" and r["state"] == "up" for r in journal(run_dir)),
                 "httpd checked up", 15, details=lambda: open(log.name).read())
        open(os.path.join(lab.config_dir("ha1"), "fail-httpd"), "w").close()   # start fails from now on
        os.unlink(os.path.join(lab.run_dir("ha1"), "svc-httpd"))               # httpd dies
        wait_for(lambda: lab.holds_all("ha2"), "ha2 to take the group over", 30,
                 details=lambda: open(log.name).read() + lab.logs_text())
        recs = [(r["action"], r["result"]) for r in journal(run_dir) if r["event"] == "recovery"]
        assert recs[:2] == [("restart", "failed"), ("failover", "ok")], recs
        down = [r for r in journal(run_dir) if r["event"] == "service" and r["state"] == "down"]
        assert down and down[0]["group"] == "10.0.17.26" and down[0]["planned"] is False
        st = subprocess.run([PYTHON, "-m", "hbd.ctl", "--run-dir", lab.run_dir("ha1"), "status"], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO, HBMON_RUN_DIR=run_dir), timeout=30)
        assert "hbmon: running" in st.stdout and "service ha1/httpd (group 10.0.17.26): fail" in st.stdout, st.stdout
    finally:
        hbmon.send_signal(signal.SIGTERM)
        try:
            hbmon.wait(timeout=15)
        finally:
            log.close()
