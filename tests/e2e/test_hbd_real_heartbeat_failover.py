# SPDX-License-Identifier: GPL-2.0-or-later
"""Resource failover between Debian's real heartbeat 3.0.6 (v1 haresources mode) and hbd.

    netns A: real heartbeat as ha1 (own mount+UTS namespace, private /etc/ha.d, /var/lib/heartbeat,
             /run, /var/log bind-mounted from a temp dir, as heartbeat-wire.md section 1 describes)
    netns B: hbd as ha2
    haresources (identical on both):  ha1 hbsvc1      ha2 hbsvc2
    hbsvc1/hbsvc2: test LSB services writing STATE_DIR/<node>-<name>; sha1 keys; auto_failback
    "on" (nice_failback protocol: starting/resource/ask_resources) and "legacy" (ip-request).

Checks: each side starts its own group; killing the real daemon makes hbd take hbsvc1 over; when
the real daemon comes back hbd hands hbsvc1 back (standby protocol, or giving way when the real
daemon takes its group back itself in legacy mode and tells itself so with an ip-request-resp,
which hbd sees and acts on at once); a clean
SIGTERM of hbd makes the real heartbeat take hbsvc2 at once (shutdone), and when hbd returns the
real heartbeat hands hbsvc2 back.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.real_heartbeat_ns import copy_heartbeat_state, kill_namespace, pin_mount_namespace, veth_namespace_pair

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = pathlib.Path(__file__).resolve().parents[2]
HEARTBEAT = "/usr/libexec/heartbeat/heartbeat"
KEYS = "auth 2\n2 sha1 mahnamahna\n"
DEADTIME_S = 5

SERVICE = """#!/bin/sh
# LSB test service for heartbeat's ResourceManager and hbd (status: stdout "running"/"stopped")
F="{state}/${{HBD_NODE:-$(uname -n)}}-$(basename "$0")"
case "$1" in
  start) date +%s > "$F"; exit 0 ;;
  stop) rm -f "$F"; exit 0 ;;
  status) if [ -e "$F" ]; then echo running; exit 0; fi; echo stopped; exit 3 ;;
esac
exit 2
"""


def run(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


class RealHeartbeat:
    def __init__(self, ns, base: pathlib.Path, peer_ip, state, mode):
        self.ns, self.base = ns, base
        self.proc = None
        self.mntns = None
        etc, _, _, _ = copy_heartbeat_state(base)
        (etc / "ha.cf").write_text(
            "logfile /var/log/ha-log\ndebugfile /var/log/ha-debug\nuse_logd no\n"
            f"keepalive 1\ndeadtime {DEADTIME_S}\nwarntime 3\ninitdead 10\nudpport 694\n"
            f"ucast eth0 {peer_ip}\nnode ha1\nnode ha2\nauto_failback {mode}\ncrm no\n")
        (etc / "authkeys").write_text(KEYS)
        os.chmod(etc / "authkeys", 0o600)
        (etc / "haresources").write_text("ha1 hbsvc1\nha2 hbsvc2\n")
        for svc in ("hbsvc1", "hbsvc2"):
            (etc / "resource.d" / svc).write_text(SERVICE.format(state=state))
            os.chmod(etc / "resource.d" / svc, 0o755)

    def start(self):
        b = self.base
        script = (f"mount --bind {b}/etc /etc/ha.d && mount --bind {b}/lib /var/lib/heartbeat && "
                  f"mount --bind {b}/run /run && mount --bind {b}/log /var/log && "
                  f"hostname ha1 && exec {HEARTBEAT} -f")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "unshare", "-m", "-u", "--propagation",
                                      "private", "sh", "-c", script],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            try:
                if pathlib.Path(f"/proc/{self.proc.pid}/comm").read_text().strip() == "heartbeat":
                    self.mntns = pin_mount_namespace(self.proc.pid)
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("real heartbeat did not start in its own mount namespace")

    def kill(self):
        kill_namespace(self.mntns)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = self.mntns = None

    def log(self):
        p = self.base / "log" / "ha-log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""


@pytest.fixture
def pair(tmp_path):
    requires_root()
    requires_commands("ip", "unshare")
    if not os.access(HEARTBEAT, os.X_OK) or not os.path.isdir("/etc/ha.d/resource.d"):
        pytest.skip(f"needs the real heartbeat daemon at {HEARTBEAT} (apt-get install heartbeat)")
    with veth_namespace_pair("hbx", 97) as namespaces:
        yield namespaces


@pytest.mark.parametrize("mode", ["on", "legacy"])
def test_real_heartbeat_and_hbd_fail_over_to_each_other(pair, tmp_path, mode):
    ns_a, ns_b, ip_a, ip_b = pair
    state = tmp_path / "state"
    state.mkdir()
    real = RealHeartbeat(ns_a, tmp_path / "ha1", ip_b, state, mode)
    cfg = tmp_path / "ha2" / "ha.d"
    (cfg / "resource.d").mkdir(parents=True)
    (cfg / "ha.cf").write_text(f"keepalive 1\ndeadtime {DEADTIME_S}\nwarntime 3\ninitdead 10\nudpport 694\n"
                               f"ucast eth0 {ip_a}\nnode ha1\nnode ha2\nauto_failback {mode}\n")
    (cfg / "authkeys").write_text(KEYS)
    os.chmod(cfg / "authkeys", 0o600)
    (cfg / "haresources").write_text("ha1 hbsvc1\nha2 hbsvc2\n")
    for svc in ("hbsvc1", "hbsvc2"):
        (cfg / "resource.d" / svc).write_text(SERVICE.format(state=state))
        os.chmod(cfg / "resource.d" / svc, 0o755)
    rundir = tmp_path / "ha2" / "run"
    hbd_log = open(tmp_path / "ha2" / "hbd.log", "w")
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def start_hbd():
        return subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-m", "hbd", "-f", "--config-dir",
                                 str(cfg), "--node", "ha2", "--run-dir", str(rundir)],
                                stdout=hbd_log, stderr=subprocess.STDOUT, env=env)

    def has(node, svc):
        return (state / f"{node}-{svc}").exists()

    def logs():
        return f"--- real ha1:\n{real.log()}\n--- hbd ha2:\n{(tmp_path / 'ha2' / 'hbd.log').read_text()[-4000:]}"

    ours = None
    try:
        ours = start_hbd()
        real.start()
        wait_for(lambda: has("ha1", "hbsvc1") and has("ha2", "hbsvc2"), "each node to run its own service", 40, details=logs)
        assert not has("ha2", "hbsvc1") and not has("ha1", "hbsvc2")

        # the real daemon dies: hbd takes hbsvc1 over after deadtime
        real.kill()
        (state / "ha1-hbsvc1").unlink()            # the "node" is gone with its service
        t0 = time.monotonic()
        wait_for(lambda: has("ha2", "hbsvc1"), "hbd (ha2) to take hbsvc1 over", DEADTIME_S + 3, details=logs)
        assert time.monotonic() - t0 <= DEADTIME_S + 3

        # it comes back: hbd hands hbsvc1 back
        real.start()
        wait_for(lambda: has("ha1", "hbsvc1"), "the real heartbeat (ha1) to start hbsvc1 again", 60, details=logs)
        t_real = time.monotonic()
        wait_for(lambda: not has("ha2", "hbsvc1"), "hbd (ha2) to give hbsvc1 back", 60, details=logs)
        overlap_s = time.monotonic() - t_real
        assert has("ha1", "hbsvc1") and has("ha2", "hbsvc2") and not has("ha1", "hbsvc2")
        if mode == "legacy":
            # the real daemon either asks (ip-request) or, having seen no active peer, takes hbsvc1 and
            # says so with an ip-request-resp addressed to itself: hbd acts on that message at once,
            # never on its LEGACY_ASK_WAIT_S (5 s) fallback
            text = (tmp_path / "ha2" / "hbd.log").read_text()
            assert ("node 'ha1' acquired its group 'hbsvc1' while we hold it" in text
                    or "node 'ha1' asks for group 'hbsvc1'" in text), logs()
            assert "did not ask for" not in text, logs()
            assert overlap_s < 3.0, f"hbsvc1 ran on both nodes for {overlap_s:.1f} s\n{logs()}"

        # hbd stops cleanly: the real heartbeat takes hbsvc2 at once (shutdone), not after deadtime
        time.sleep(2)
        ours.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        wait_for(lambda: has("ha1", "hbsvc2"), "the real heartbeat (ha1) to take hbsvc2 over", DEADTIME_S, details=logs)
        assert time.monotonic() - t0 < DEADTIME_S
        assert ours.wait(timeout=20) == 0 and not has("ha2", "hbsvc2")

        # hbd comes back: the real heartbeat hands hbsvc2 back to it
        ours = start_hbd()
        wait_for(lambda: has("ha2", "hbsvc2") and not has("ha1", "hbsvc2"), "hbsvc2 to move back to hbd (ha2)", 60, details=logs)
        assert has("ha1", "hbsvc1") and not has("ha2", "hbsvc1")
    finally:
        real.kill()
        if ours is not None and ours.poll() is None:
            ours.kill()
            ours.wait()
        hbd_log.close()
