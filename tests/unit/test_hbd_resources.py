# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.resources and scripts/resource.d: search path, LSB codes, group start/stop/rollback, timeouts."""
import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from hacommon.errors import ConfigError
from hbd.haresources import parse_haresources
from hbd.resources import (
    ResourceRunner,
    ScriptResult,
    builtin_resource_dir,
    find_script,
    resource_dirs,
    run_script,
    script_env,
    status_says_running,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts", "resource.d")

RECORDER = """#!/bin/sh
# records "$0 args..." and honours $DIR/fail-<name>-<action>, $DIR/slow-<name>
name=$(basename "$0")
eval "act=\\${$#}"
echo "$name $*" >> "$DIR/calls"
[ -e "$DIR/slow-$name" ] && [ "$act" = start ] && sleep 30
case "$act" in
  start) [ -e "$DIR/fail-$name-start" ] && exit 1; touch "$DIR/run-$name"; exit 0 ;;
  stop) [ -e "$DIR/fail-$name-stop" ] && exit 1; rm -f "$DIR/run-$name"; exit 0 ;;
  status) [ -e "$DIR/run-$name" ] && { echo running; exit 0; }; echo stopped; exit 3 ;;
esac
exit 2
"""


def make_scripts(tmp_path, names):
    d = tmp_path / "resource.d"
    d.mkdir(exist_ok=True)
    for n in names:
        p = d / n
        p.write_text(RECORDER)
        p.chmod(0o755)
    return str(d)


def runner_for(tmp_path, **kw):
    logs = []
    env = dict(os.environ, DIR=str(tmp_path))
    r = ResourceRunner(dirs=(str(tmp_path / "resource.d"),), env=env, log=lambda lv, t: logs.append((lv, t)),
                       stop_retry_interval_s=0.01, **kw)
    return r, logs


def calls(tmp_path):
    p = tmp_path / "calls"
    return p.read_text().splitlines() if p.exists() else []


def group(text):
    return parse_haresources(text)[0]


@pytest.mark.parametrize("rc,out,expected", [
    (0, "running", True), (0, "", True), (0, "httpd is not running", False), (0, "stopped (Secondary)", False),
    (3, "", False), (1, "dead", False), (2, "", False), (4, "may be running", True), (4, "", None),
    (5, "", None), (-1, "", None),
])
def test_status_interpretation(rc, out, expected):
    assert status_says_running(ScriptResult(("x", "status"), rc, out, False, 0.0)) is expected


def test_status_timeout_is_unknown():
    assert status_says_running(ScriptResult(("x", "status"), -1, "", True, 1.0)) is None


def test_search_path_order_and_errors(tmp_path, monkeypatch):
    cfg = tmp_path / "ha.d"
    (cfg / "resource.d").mkdir(parents=True)
    mine = cfg / "resource.d" / "IPaddr"
    mine.write_text("#!/bin/sh\nexit 0\n")
    mine.chmod(0o755)
    monkeypatch.delenv("HBD_RESOURCE_DIRS", raising=False)
    dirs = resource_dirs(str(cfg))
    assert dirs[0] == str(cfg / "resource.d") and dirs[-1] == "/etc/init.d"
    assert dirs[1] == builtin_resource_dir() == os.path.normpath(SCRIPTS)
    assert find_script("IPaddr", dirs) == str(mine)           # the admin's copy wins
    assert find_script("Filesystem", dirs) == os.path.join(dirs[1], "Filesystem")
    with pytest.raises(ConfigError, match=r"^resources: script 'nosuch' not found: searched "):
        find_script("nosuch", dirs)
    with pytest.raises(ConfigError, match="bad script name"):
        find_script("../etc/passwd", dirs)
    (cfg / "resource.d" / "notexec").write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not found"):
        find_script("notexec", dirs)
    assert resource_dirs(str(cfg), {"HBD_RESOURCE_DIRS": "/a:/b"}) == (str(cfg / "resource.d"), "/a", "/b",
                                                                        "/etc/init.d")


def test_group_starts_in_order_with_args_before_action(tmp_path):
    make_scripts(tmp_path, ["disk", "web", "db"])
    r, _ = runner_for(tmp_path)
    g = group("ha1 disk::r0::x web db\n")
    assert asyncio.run(r.start_group(g)) is True
    starts = [c for c in calls(tmp_path) if c.endswith("start")]
    assert starts == ["disk r0 x start", "web start", "db start"]
    # status was asked first for each (already-running resources are skipped)
    assert calls(tmp_path)[0] == "disk r0 x status"


def test_group_stops_in_reverse(tmp_path):
    make_scripts(tmp_path, ["disk", "web", "db"])
    r, _ = runner_for(tmp_path)
    g = group("ha1 disk web db\n")
    asyncio.run(r.start_group(g))
    (tmp_path / "calls").unlink()
    assert asyncio.run(r.stop_group(g)) is True
    assert calls(tmp_path) == ["db stop", "web stop", "disk stop"]


def test_already_running_resource_is_not_started_again(tmp_path):
    make_scripts(tmp_path, ["web"])
    (tmp_path / "run-web").touch()
    r, logs = runner_for(tmp_path)
    assert asyncio.run(r.start_group(group("ha1 web\n"))) is True
    assert "web start" not in calls(tmp_path)
    assert any("already running" in t for _, t in logs)


def test_failed_start_rolls_back_in_reverse_and_reports(tmp_path):
    make_scripts(tmp_path, ["disk", "web", "db"])
    (tmp_path / "fail-db-start").touch()
    journal = []
    r, logs = runner_for(tmp_path, journal=lambda ev, **f: journal.append((ev, f)))
    assert asyncio.run(r.start_group(group("ha1 disk web db\n"))) is False
    seq = [c for c in calls(tmp_path) if not c.endswith("status")]
    assert seq == ["disk start", "web start", "db start", "web stop", "disk stop"]
    assert not (tmp_path / "run-disk").exists() and not (tmp_path / "run-web").exists()
    crit = [t for lv, t in logs if lv == "crit"]
    assert crit and crit[0].startswith("resource 'db': start failed:") and "giving up group 'disk'" in crit[0]
    assert ("resource", {"group": "disk", "resource": "db", "action": "start", "result": "failed", "rc": 1,
                         "timed_out": False}) in journal


def test_failed_stop_is_retried_then_reported(tmp_path):
    make_scripts(tmp_path, ["web"])
    (tmp_path / "run-web").touch()
    (tmp_path / "fail-web-stop").touch()
    r, logs = runner_for(tmp_path, stop_retry_max=3)
    assert asyncio.run(r.stop_group(group("ha1 web\n"))) is False
    assert calls(tmp_path).count("web stop") == 3
    assert any(lv == "crit" and "stop failed 3 times" in t for lv, t in logs)


def test_failed_stop_but_status_stopped_counts_as_stopped(tmp_path):
    make_scripts(tmp_path, ["web"])
    (tmp_path / "fail-web-stop").touch()
    r, logs = runner_for(tmp_path, stop_retry_max=2)
    assert asyncio.run(r.stop_group(group("ha1 web\n"))) is True
    assert any("not LSB-compliant" in t for _, t in logs)


def test_start_timeout_kills_the_script(tmp_path):
    make_scripts(tmp_path, ["web"])
    (tmp_path / "slow-web").touch()
    r, logs = runner_for(tmp_path, start_timeout_s=0.5)
    res = asyncio.run(r.run(group("ha1 web\n").resources[0], "start"))
    assert res.timed_out and not res.ok and res.duration_s < 5
    assert "timed out" in res.describe()


def test_missing_script_fails_the_start_with_a_clear_reason(tmp_path):
    make_scripts(tmp_path, [])
    r, logs = runner_for(tmp_path)
    assert asyncio.run(r.start_group(group("ha1 nosuch\n"))) is False
    assert any("script 'nosuch' not found" in t for _, t in logs)
    with pytest.raises(ConfigError, match=r"^haresources:1: resource 'nosuch': resources: script 'nosuch'"):
        r.check_group(group("ha1 nosuch\n"))


def test_run_script_cannot_execute():
    res = asyncio.run(run_script(["/nonexistent/x"], timeout_s=1, env={}))
    assert res.rc == -1 and "cannot execute" in res.output


def test_script_env_carries_heartbeat_variables():
    class Cfg:
        gratuitous_arp_count, gratuitous_arp_interval_ms = 3, 100
        logfacility, logfile, debugfile = "local0", None, "/tmp/d"
    env = script_env({"PATH": "/bin"}, config_dir="/etc/ha.d", node="ha1", run_dir="/run/hbd", cfg=Cfg)
    assert env["HA_CURHOST"] == "ha1" and env["HA_RESOURCEDIR"] == "/etc/ha.d/resource.d"
    assert env["HBD_GARP_COUNT"] == "3" and env["HBD_GARP_INTERVAL_MS"] == "100"
    assert env["HA_LOGFACILITY"] == "local0" and env["HA_DEBUGLOG"] == "/tmp/d" and "HA_LOGFILE" not in env
    assert env["HBD_PYTHON"] == sys.executable and env["PYTHONPATH"].split(os.pathsep)[0] == REPO


# --- the shipped scripts ---------------------------------------------------------------------

FAKE_REPLICACTL = """#!/bin/sh
echo "$*" >> "$STATE/calls"
case "$1" in
  primary) n=$(cat "$STATE/fails" 2>/dev/null || echo 0)
           if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$STATE/fails"; exit 11; fi
           echo Primary > "$STATE/role-$2" ;;
  secondary) echo Secondary > "$STATE/role-$2" ;;
  role) [ -e "$STATE/broken" ] && exit 1
        if [ "$2" = all ]; then for f in "$STATE"/role-*; do echo "$(cat $f)/Secondary"; done
        else echo "$(cat "$STATE/role-$2" 2>/dev/null || echo Secondary)/Secondary"; fi ;;
esac
"""


@pytest.fixture
def replicactl(tmp_path):
    p = tmp_path / "replicactl"
    p.write_text(FAKE_REPLICACTL)
    p.chmod(0o755)
    return dict(os.environ, REPLICACTL=str(p), STATE=str(tmp_path))


def script(name, *args, env=None, timeout=30):
    return subprocess.run([os.path.join(SCRIPTS, name), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_replicadisk_promotes_with_retries_and_demotes(tmp_path, replicactl):
    (tmp_path / "fails").write_text("2")
    r = script("replicadisk", "r0", "status", env=replicactl)
    assert r.returncode == 3 and r.stdout.strip() == "stopped (Secondary)"
    assert script("replicadisk", "r0", "start", env=replicactl).returncode == 0
    assert (tmp_path / "calls").read_text().count("primary r0") == 3      # 2 failures, then success
    r = script("replicadisk", "r0", "status", env=replicactl)
    assert r.returncode == 0 and r.stdout.strip() == "running (Primary)"
    assert script("replicadisk", "r0", "start", env=replicactl).returncode == 0   # idempotent
    assert script("replicadisk", "r0", "stop", env=replicactl).returncode == 0
    assert (tmp_path / "role-r0").read_text().strip() == "Secondary"
    assert script("replicadisk", "r0", "stop", env=replicactl).returncode == 0    # stop of stopped


def test_replicadisk_gives_up_after_six_tries(tmp_path, replicactl):
    (tmp_path / "fails").write_text("99")
    r = script("replicadisk", "r0", "start", env=replicactl)
    assert r.returncode == 1 and "failed 6 times" in r.stderr
    assert (tmp_path / "calls").read_text().count("primary r0") == 6


def test_replicadisk_unknown_role_may_be_running(tmp_path, replicactl):
    (tmp_path / "broken").touch()
    r = script("replicadisk", "r0", "status", env=replicactl)
    assert r.returncode == 4 and "may be running" in r.stdout


def test_datadisk_means_all_resources(tmp_path, replicactl):
    assert script("datadisk", "start", env=replicactl).returncode == 0
    assert "primary all" in (tmp_path / "calls").read_text()
    assert script("datadisk", "r1", "r2", "start", env=replicactl).returncode == 0
    assert script("datadisk", "r1", "r2", "stop", env=replicactl).returncode == 0
    lines = (tmp_path / "calls").read_text().splitlines()
    assert [c for c in lines if c.startswith("secondary")] == ["secondary r2", "secondary r1"]


def test_mailto_uses_sendmail_and_tracks_state(tmp_path):
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat >> {tmp_path}/mail\n")
    sendmail.chmod(0o755)
    env = dict(os.environ, SENDMAIL=str(sendmail), HBD_RUN_DIR=str(tmp_path), HBD_NODE="ha1")
    assert script("MailTo", "root@example.org", "web", "status", env=env).returncode == 3
    assert script("MailTo", "root@example.org", "web", "start", env=env).returncode == 0
    assert script("MailTo", "root@example.org", "web", "status", env=env).returncode == 0
    mail = (tmp_path / "mail").read_text()
    assert "To: root@example.org" in mail and "Subject: web Takeover in progress" in mail and "ha1" in mail
    assert script("MailTo", "root@example.org", "web", "stop", env=env).returncode == 0
    assert script("MailTo", "root@example.org", "web", "stop", env=env).returncode == 0
    assert (tmp_path / "mail").read_text().count("Subject: web Migrating resource away") == 1


def test_mailto_without_sendmail_logs_and_succeeds(tmp_path):
    env = dict(os.environ, SENDMAIL=str(tmp_path / "none"), HBD_RUN_DIR=str(tmp_path))
    r = script("MailTo", "root", "start", env=env)
    assert r.returncode == 0 and "no sendmail" in r.stderr


def test_filesystem_argument_checks_and_unmounted_status(tmp_path):
    mnt = tmp_path / "mnt"
    r = script("Filesystem", "/dev/x", str(mnt), "ext4", "status")
    assert r.returncode == 3 and r.stdout.strip() == "stopped"
    assert script("Filesystem", "/dev/x", str(mnt), "ext4", "stop").returncode == 0
    assert script("Filesystem", "/dev/x", "relative", "ext4", "start").returncode == 6
    assert script("Filesystem", "/dev/x", "start").returncode == 2


@pytest.mark.parametrize("name", ["IPaddr", "IPaddr2", "replicadisk", "datadisk", "Filesystem", "MailTo"])
def test_shipped_scripts_are_executable_posix_sh(name):
    path = os.path.join(SCRIPTS, name)
    assert os.access(path, os.X_OK)
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", path]).returncode == 0


def test_ipaddr_script_rejects_bad_spec_with_lsb_codes():
    env = dict(os.environ, PYTHONPATH=REPO, HBD_PYTHON=sys.executable)
    r = script("IPaddr", "10.0.0.300/24", "start", env=env)
    assert r.returncode == 6 and "is not an IPv4 address" in r.stderr
    assert script("IPaddr", "10.0.0.300/24", "stop", env=env).returncode == 0
    assert script("IPaddr", "start", env=env).returncode == 2
