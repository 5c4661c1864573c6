# SPDX-License-Identifier: GPL-2.0-or-later
"""Wire-level interop: Debian's real heartbeat 3.0.6 and our Membership see each other.

Layout (all created here, removed in the fixture's finally):

    netns hbw<N>a: eth0 10.98.<N>.1/24  <-- veth -->  netns hbw<N>b: eth0 10.98.<N>.2/24
      real heartbeat as node ha1                        python driver: Membership as node ha2
      (own mount+UTS namespace, private /etc/ha.d,       (UDP 694, ucast to 10.98.<N>.1)
       /var/lib/heartbeat, /run, /var/log bind-mounted
       from a temp dir: heartbeat-wire.md section 1)

Checks: the driver's Membership emits NodeUp(ha1); the real daemon's
`cl_status nodestatus ha2` says `active` and its log has no authentication
complaint; after SIGKILL of every process in the daemon's mount namespace the
driver emits NodeDead(ha1) within deadtime + 1 s of ha1's last packet.
"""
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.real_heartbeat_ns import copy_heartbeat_state, kill_namespace, pin_mount_namespace, veth_namespace_pair

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEARTBEAT = "/usr/libexec/heartbeat/heartbeat"
DEADTIME_S = 5
KEY = "mahnamahna"

DRIVER = r'''
import json, os, select, socket, sys, time
sys.path.insert(0, sys.argv[1])
from hbd.authkeys import parse_authkeys
from hbd.protocol.membership import Membership, NodeDead
peer_ip, run_s, dump_dir = sys.argv[2], float(sys.argv[3]), sys.argv[4]
keys = parse_authkeys(open(sys.argv[5]).read())
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)   # bcast medium: peer_ip is x.y.z.255
sock.bind(("0.0.0.0", 694))
now = time.monotonic()
m = Membership("ha2", ["ha1", "ha2"], keepalive_s=1, warntime_s=3, deadtime_s=%(dead)d, initdead_s=10,
               authkeys=keys, generation=int(time.time()), now=now,
               wall_clock_offset=time.time() - now)
end = now + run_s
last_packet = None
TRACE = bool(os.environ.get("HBW_TRACE"))   # print every datagram as a "trace" event
blackout_until = 0.0     # "blackout S" on stdin: lose every datagram both ways for S seconds
dumped = 0
def say(**kw):
    print(json.dumps(kw), flush=True)
say(event="ready")
while True:
    now = time.monotonic()
    if now >= end:
        break
    for d in m.datagrams_to_send(now):
        if TRACE:
            say(event="trace", dir="out", lost=now < blackout_until, t=now, pkt=d[:200].decode("latin-1"))
        if now >= blackout_until:
            sock.sendto(d, (peer_ip, 694))
    timer = m.get_timer()
    timeout = max(0.0, min(end, timer if timer is not None else end) - now)
    ready, _, _ = select.select([sock, sys.stdin], [], [], timeout)
    now = time.monotonic()
    if sys.stdin in ready:
        cmd = sys.stdin.readline().split()
        if not cmd:
            break
        if cmd[0] == "blackout":
            blackout_until = now + float(cmd[1])
        elif cmd[0] == "shutdone":
            m.send_shutdone()
        elif cmd[0] == "counters":
            say(event="counters", counters=m.counters, snapshot=m.snapshot())
    if sock in ready:
        data, addr = sock.recvfrom(300000)
        if TRACE:
            say(event="trace", dir="in", lost=now < blackout_until, t=now, pkt=data[:200].decode("latin-1"))
        if now >= blackout_until:
            before = m.counters["accepted"]
            m.receive_datagram(data, addr, now)
            if m.counters["accepted"] != before:
                last_packet = now
            if dump_dir != "-" and dumped < 40:
                dumped += 1
                open("%%s/pkt%%03d.bin" %% (dump_dir, dumped), "wb").write(data)
    timer = m.get_timer()
    if timer is not None and timer <= now:
        m.handle_timer(now)
    while (e := m.next_event()) is not None:
        # the smallest R1 resource protocol for a node holding nothing: announce ourselves and
        # answer heartbeat's "starting" so it becomes stable (hbd.groups does this for real)
        if type(e).__name__ == "NodeUp" and not m.closed:
            m.send_message("starting", {})
        if type(e).__name__ == "MessageReceived" and e.msg.type == "starting" and not m.closed:
            m.send_message("resource", {"rsc_hold": "none", "rtype": "full", "isstable": "1"})
        kw = {"event": type(e).__name__, "t": time.monotonic()}
        kw.update({k: getattr(e, k) for k in e.__slots__ if k not in ("msg", "addr")})
        if hasattr(e, "msg"):
            kw["type"] = e.msg.type
        if isinstance(e, NodeDead) and last_packet is not None:
            kw["since_last_packet"] = time.monotonic() - last_packet
        say(**kw)
say(event="exit", counters=m.counters)
''' % {"dead": DEADTIME_S}


def run(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30, **kw)


def kill_node(master_pid, mntns_link):
    """SIGKILL the daemon and every child in its mount namespace (heartbeat-wire.md 1)."""
    kill_namespace(mntns_link)


@pytest.fixture
def two_namespaces():
    requires_root()
    requires_commands("ip", "unshare", "nsenter", "cl_status")
    if not os.access(HEARTBEAT, os.X_OK):
        pytest.skip(f"needs the real heartbeat daemon at {HEARTBEAT} (apt-get install heartbeat)")
    with veth_namespace_pair("hbw", 98) as namespaces:
        yield namespaces


def make_node_dir(base: pathlib.Path, peer_ip: str, method_line: str, medium: str = "ucast") -> pathlib.Path:
    """A private copy of the package's /etc/ha.d, /var/lib/heartbeat and /run/heartbeat."""
    etc, _, _, _ = copy_heartbeat_state(base)
    (etc / "ha.cf").write_text(
        "logfile /var/log/ha-log\ndebugfile /var/log/ha-debug\nuse_logd no\n"
        f"keepalive 1\ndeadtime {DEADTIME_S}\nwarntime 3\ninitdead 10\nudpport 694\n"
        + (f"ucast eth0 {peer_ip}\n" if medium == "ucast" else "bcast eth0\n")
        + "node ha1\nnode ha2\nauto_failback on\ncrm no\n")
    (etc / "authkeys").write_text(f"auth {method_line.split()[0]}\n{method_line}\n")
    os.chmod(etc / "authkeys", 0o600)
    (etc / "haresources").write_text("# no resources: this test is about membership on the wire\n")
    return base


def start_real_heartbeat(ns: str, node_dir: pathlib.Path) -> subprocess.Popen:
    script = (f"mount --bind {node_dir}/etc /etc/ha.d && "
              f"mount --bind {node_dir}/lib /var/lib/heartbeat && "
              f"mount --bind {node_dir}/run /run && "
              f"mount --bind {node_dir}/log /var/log && "
              f"hostname ha1 && exec {HEARTBEAT} -f")
    return subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "-m", "-u", "--propagation", "private",
                             "sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Driver:
    """Our Membership in the second namespace, reporting events as JSON lines."""

    def __init__(self, ns, peer_ip, run_s, tmp, keyfile, dump_dir="-"):
        path = tmp / "driver.py"
        path.write_text(DRIVER)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(path), str(ROOT), peer_ip,
                                      str(run_s), str(dump_dir), str(keyfile)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events = []
        self._buf = b""

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def next_event(self, event, timeout, after=0):
        """The first event named `event` among those after index `after`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e["event"] == event:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"driver exited early: {self.proc.stderr.read()[-2000:]}")
                self._buf += chunk
                *lines, self._buf = self._buf.split(b"\n")
                self.events.extend(json.loads(line) for line in lines if line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def pin_heartbeat_namespace(hb):
    """Pin the mount namespace of the real heartbeat once it runs (ip netns exec -> unshare -> sh ->
    exec heartbeat, all the same PID); returns the pinned link."""
    def comm_is_heartbeat():
        try:
            return pathlib.Path(f"/proc/{hb.pid}/comm").read_text().strip() == "heartbeat"
        except OSError:
            return False
    wait_for(comm_is_heartbeat, "the real heartbeat to enter its own mount namespace", 5, interval_s=0.1)
    return pin_mount_namespace(hb.pid)


def cl_status(master_pid, *args):
    r = subprocess.run(["nsenter", "-t", str(master_pid), "-m", "-u", "-n", "cl_status", *args],
                       capture_output=True, text=True, timeout=20)
    return r.stdout.strip() or r.stderr.strip()


@pytest.mark.parametrize("method_line, medium", [(f"2 sha1 {KEY}", "ucast"), (f"3 md5 {KEY}", "ucast"),
                                                  ("1 crc", "ucast"), (f"2 sha1 {KEY}", "bcast")])
def test_real_heartbeat_and_our_membership_see_each_other(two_namespaces, tmp_path, method_line, medium):
    ns_a, ns_b, ip_a, ip_b = two_namespaces
    node_dir = make_node_dir(tmp_path / "ha1", ip_b, method_line, medium)
    if medium == "bcast":   # both sides broadcast on the veth subnet; each hears its own packets too
        ip_a = ip_a.rsplit(".", 1)[0] + ".255"
    keyfile = tmp_path / "authkeys-ours"
    keyfile.write_text(f"auth {method_line.split()[0]}\n{method_line}\n")
    hb = driver = None
    mntns = None
    try:
        driver = Driver(ns_b, ip_a, 60, tmp_path, keyfile)
        assert driver.next_event("ready", 10), "driver did not start"
        hb = start_real_heartbeat(ns_a, node_dir)
        started = time.monotonic()
        mntns = pin_heartbeat_namespace(hb)
        up = driver.next_event("NodeUp", 20)
        log = node_dir / "log" / "ha-log"
        assert up is not None, f"our Membership never saw ha1; ha-log tail:\n{log.read_text()[-3000:] if log.exists() else '-'}"
        assert up["node"] == "ha1"
        wait_for(lambda: cl_status(hb.pid, "nodestatus", "ha2") == "active", "real heartbeat to see ha2 active", 15,
                 interval_s=0.5, details=lambda: f"cl_status: {cl_status(hb.pid, 'nodestatus', 'ha2')!r}; ha-log tail:\n"
                                                 f"{log.read_text()[-3000:] if log.exists() else '-'}")
        text = log.read_text() if log.exists() else ""
        assert "failed authentication" not in text and "authtoken does not match" not in text, text[-3000:]
        assert "Link ha2:eth0 up" in text, text[-3000:]
        assert driver.next_event("NodeDead", 0.1) is None, "ha1 declared dead while running"

        # heartbeat announces dt = deadtime + 2 s during its first 5 s (heartbeat-wire.md 4) and
        # receivers honour it, as we do; kill it once it announces the plain deadtime
        time.sleep(max(0.0, started + 7 - time.monotonic()))
        kill_node(hb.pid, mntns)
        killed_at = time.monotonic()
        dead = driver.next_event("NodeDead", DEADTIME_S + 5)
        assert dead is not None, "our Membership never declared ha1 dead after it was killed"
        assert dead["node"] == "ha1" and dead["graceful"] is False
        assert dead["since_last_packet"] <= DEADTIME_S + 1.0, dead
        assert dead["t"] - killed_at <= DEADTIME_S + 2.0, (dead, killed_at)
    finally:
        if hb is not None:
            kill_node(hb.pid, mntns)
            if hb.poll() is None:
                hb.kill()
            hb.wait(timeout=10)
        if driver is not None:
            driver.stop()


def start_pair(ns_a, ns_b, ip_a, ip_b, tmp_path, method_line=f"2 sha1 {KEY}"):
    """Our driver in ns_b, then the real daemon in ns_a; returns (driver, popen, mntns, log path)."""
    node_dir = make_node_dir(tmp_path / "ha1", ip_b, method_line)
    keyfile = tmp_path / "authkeys-ours"
    keyfile.write_text(f"auth {method_line.split()[0]}\n{method_line}\n")
    driver = Driver(ns_b, ip_a, 90, tmp_path, keyfile)
    assert driver.next_event("ready", 10), "driver did not start"
    hb = start_real_heartbeat(ns_a, node_dir)
    try:
        mntns = pin_heartbeat_namespace(hb)
    except BaseException:
        stop_pair(driver, hb, None)
        raise
    return driver, hb, mntns, node_dir / "log" / "ha-log"


def stop_pair(driver, hb, mntns):
    if hb is not None:
        kill_node(hb.pid, mntns)
        if hb.poll() is None:
            hb.kill()
        hb.wait(timeout=10)
    if driver is not None:
        driver.stop()


def test_real_heartbeat_rexmit_both_ways_and_its_graceful_shutdown(two_namespaces, tmp_path):
    """A 2.2 s blackout is repaired by NS_rexmit in both directions; heartbeat's shutdone is a graceful death."""
    driver = hb = mntns = None
    try:
        driver, hb, mntns, log = start_pair(*two_namespaces, tmp_path)
        started = time.monotonic()
        assert mntns, "real heartbeat did not start"
        assert driver.next_event("NodeUp", 20), "our Membership never saw ha1"
        time.sleep(max(0.0, started + 7 - time.monotonic()))
        assert cl_status(hb.pid, "nodestatus", "ha2") == "active"

        mark = len(driver.events)
        driver.command("blackout 2.2")   # loses 2 datagrams each way
        time.sleep(4.0)
        driver.command("counters")
        c = driver.next_event("counters", 5, after=mark)
        assert c is not None
        text = log.read_text()
        assert driver.next_event("NodeDead", 0, after=mark) is None
        assert c["counters"]["rexmit_requested"] >= 1, c          # we asked ha1 for what we missed
        assert c["counters"]["rexmit_sent"] >= 1, (c, text[-2000:])  # and answered ha1's NS_rexmit
        assert c["snapshot"]["peers"]["ha1"]["missing"] == [], c
        assert c["counters"]["lost_packets"] == 0, c
        assert "lost packet(s) for [ha2]" in text, text[-2000:]
        assert "No pkts missing from ha2!" in text, text[-2000:]
        assert cl_status(hb.pid, "nodestatus", "ha2") == "active"

        # its goodbye: SIGTERM makes heartbeat send shutdone; we see a graceful death at once
        mark = len(driver.events)
        os.kill(hb.pid, signal.SIGTERM)
        sent_at = time.monotonic()
        dead = driver.next_event("NodeDead", 5, after=mark)
        assert dead is not None and dead["node"] == "ha1" and dead["graceful"] is True, driver.events[mark:]
        assert dead["t"] - sent_at < 3.0
        got = [e.get("type") for e in driver.events[mark:] if e["event"] == "MessageReceived"]
        assert "shutdone" in got, got
    finally:
        stop_pair(driver, hb, mntns)


def test_our_shutdone_is_a_clean_goodbye_for_the_real_heartbeat(two_namespaces, tmp_path):
    """After our shutdone the real daemon takes over at once and never sees us 'return after partition'."""
    driver = hb = mntns = None
    try:
        driver, hb, mntns, log = start_pair(*two_namespaces, tmp_path)
        started = time.monotonic()
        assert mntns, "real heartbeat did not start"
        assert driver.next_event("NodeUp", 20), "our Membership never saw ha1"
        time.sleep(max(0.0, started + 7 - time.monotonic()))
        assert cl_status(hb.pid, "nodestatus", "ha2") == "active"
        driver.command("shutdone")
        time.sleep(1.0)
        text = log.read_text()
        assert "Received shutdown notice from 'ha2'." in text, text[-2000:]
        assert "Resources being acquired from ha2." in text, text[-2000:]
        time.sleep(DEADTIME_S + 1.5)
        text = log.read_text()
        after = text[text.index("Received shutdown notice from 'ha2'."):]
        assert "node ha2: is dead" in after, after[-2000:]
        assert "returning after partition" not in after, after[-2000:]
        assert "Link ha2:eth0 up" not in after, after[-2000:]
        assert cl_status(hb.pid, "nodestatus", "ha2") == "dead"
    finally:
        stop_pair(driver, hb, mntns)
