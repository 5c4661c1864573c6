# SPDX-License-Identifier: GPL-2.0-or-later
"""The seed's cluster end to end: `make demo` (scripts/demo_cluster.sh), and the tour's act 4.

demo_cluster.sh builds three network namespaces, runs replicad, hbd and hbmon on two nodes with
haresources "ha1 VIP datadisk::r0 Filesystem::/dev/drbd0::/data::ext4 nginx mariadb" (Debian's
nginx and mariadbd, their data on the replicated ext4), has a client commit rows and upload files
through the VIP, power-fails ha1 mid-stream, prints the timeline, verifies on ha2 and again on ha1
after resync and failback that every acknowledged row and file is there, and ends with a summary.
These tests run it as a user does: to the end (zero loss, a timeline, the summary, under two
minutes, nothing left behind), interrupted by Ctrl-C (nothing left behind), and with --keep then
--down (the cluster answers in between, nothing left after).

demo_failover.sh (`make demo ARGS=--tour`, act 4) is the same shape with a toy database of
fsynced files, plus resource-level fencing when the replication link breaks: `fencing
resource-only` and the shipped replica-fence-peer make ha1 outdate ha2 through the heartbeat path
(fence-peer exit 4), the resync runs unfence-peer, and after ha1's death hbd tells ha2's replicad
at once, so ha2 is Primary within 0.5 s of hbd's dead declaration.
"""
import glob
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
DEMO = SCRIPTS / "demo_cluster.sh"
STATE = "/run/replica-ha-demo.env"
LOCK = "/run/lock/replica-ha-drbd0.lock"
ENV = {**os.environ, "TERM": "dumb"}
# Debian's packages: `make test-deps` (run by `make demo` and `make test`) installs them (Makefile APT_TEST)
DEMO_COMMANDS = ("nginx", "mariadbd", "mariadb", "mariadb-install-db", "mariadb-admin", "my_print_defaults",
                 "curl", "mkfs.ext4", "chattr", "e2fsck", "nsenter", "findmnt", "flock", "perl")


def requires_demo():
    requires_root()
    requires_commands("ip", *DEMO_COMMANDS)
    if not os.path.exists("/usr/lib/mon/mon.d/http.monitor"):
        pytest.skip("needs Debian's mon (/usr/lib/mon/mon.d/http.monitor): make deps installs it")


def loop_backing_files() -> list[str]:
    out = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            out.append(Path(path).read_text().strip())
        except OSError:
            pass
    return out


def footprint() -> dict:
    """What a demo run may leave behind, to compare before and after."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {
        "namespaces": sorted(re.findall(r"^(dm\d+-\w+)", netns, re.M)),
        # (not /dev/replica/r0: other tests name their resources r0 too, on other minors)
        "paths": {p: os.path.lexists(p) for p in ("/data", "/dev/drbd0", STATE)},
        "work": sorted(glob.glob("/tmp/dm-demo.*") + glob.glob("/dev/shm/dm-demo.*")),
        "loops": sorted(f for f in loop_backing_files() if "dm-demo" in f),
        "mounts": sorted(line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                         if "dm-demo" in line),
    }


def lock_holders() -> list[str]:
    """Processes holding the demo's lock file open (a daemon must not keep it after the script)."""
    out = []
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == LOCK:
                out.append(fd.split("/")[2])
        except OSError:
            pass
    return out


def run_demo(*args, timeout=400):
    return subprocess.run(["bash", str(DEMO), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def check_zero_loss(out: str) -> None:
    """The verification lines and the summary say nothing acknowledged was lost, and there was
    something to lose: rows and files acknowledged before the failure and after it."""
    for what in ("rows", "files"):
        counts = [int(n) for n in re.findall(rf"acknowledged {what} lost: 0 of (\d+)", out)]
        assert len(counts) == 2, f"{what}: expected a verification on ha2 and one on ha1:\n{out[-4000:]}"
        assert counts[0] > 0 and counts[1] > counts[0], (what, counts)
        assert not re.search(rf"acknowledged {what} lost: [1-9]", out)
        summary = re.findall(rf"{what} verified\s+(\d+) of (\d+) acknowledged on (ha\d) after the \w+; lost 0", out)
        assert [(int(a), int(b), n) for a, b, n in summary] == [(counts[0], counts[0], "ha2"),
                                                               (counts[1], counts[1], "ha1")], summary


def check_timeline(out: str) -> None:
    """Every step of the failover, with times relative to the power failure, in causal order."""
    steps = {"heartbeat": r"last heartbeat from ha1", "kill": r"ha1 power-failed", "dead": r"ha2's hbd declares ha1 dead",
             "fence": r"fence: ha2's replicad marks ha1's disk Outdated",
             "promote": r"promote: ha2's replicad: role Secondary -> Primary",
             "replay": r"kernel: EXT4-fs \(\w+\): recovery complete", "mounted": r"/data mounted",
             "nginx": r"nginx up", "mariadb": r"mariadb up", "sql": r"VIP answering: .*\(SQL\)",
             "http": r"VIP answering: .*\(HTTP\)"}
    t = {}
    for name, step in steps.items():
        m = re.search(r"^\s+([+-]\d+\.\d+) s  " + step, out, re.M)
        assert m, f"no timeline line for {step!r}:\n{out[-5000:]}"
        t[name] = float(m.group(1))
    for chain in (("heartbeat", "kill", "dead", "fence", "promote", "replay", "mounted", "nginx", "http"),
                  ("mounted", "mariadb", "sql")):
        times = [t[c] for c in chain]
        assert times == sorted(times), dict(zip(chain, times, strict=True))
    assert "mariadbd: InnoDB: Starting crash recovery" in out, out[-5000:]
    back = re.search(r"failover time\s+power failure -> VIP answering: SQL (\S+) s, HTTP (\S+) s", out)
    assert back, out[-3000:]
    # deadtime 2 s, then promotion, mount, services: measured 3.4-4.7 s on 2 busy vCPUs
    assert 2.0 < float(back.group(1)) < 15 and 2.0 < float(back.group(2)) < 15, back.group(0)


def test_make_demo_loses_no_acknowledged_row_or_file_and_leaves_nothing():
    requires_demo()
    before = footprint()
    run = run_demo()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    check_zero_loss(out)
    check_timeline(out)
    assert re.search(r"ha1's hbd sees: /dev/\S+ /data\s+ext4", out), out[-4000:]
    assert re.search(r"ha2's hbd sees: /dev/\S+ /data\s+ext4", out), out[-4000:]
    assert "client: GET / -> replica-ha demo: served by ha1" in out
    assert "rows in the database served by ha2:" in out and "rows in the database served by ha1:" in out
    resync = re.search(r"resync\s+(\d+) bytes", out)
    assert resync and int(resync.group(1)) > 0, out[-3000:]
    assert re.search(r"availability \(SQL\)\s+client: \d+\.\d+ %", out)
    assert re.search(r"hbctl availability\s+group 10\.0\.17\.26: \d+\.\d+ %", out)
    assert re.search(r"hbctl availability\s+service db/sql: \d+\.\d+ %", out)
    assert re.search(r"disks\s+ha1 and ha2 identical after the clean stop", out)
    assert re.search(r"e2fsck -fn\s+clean", out)
    total = float(re.search(r"total time\s+(\S+) s", out).group(1))
    print(f"make demo: {total:.1f} s")
    assert total < 120, f"the demo took {total} s (the issue: under 2 minutes)"
    assert out.rstrip().endswith("demo finished")
    assert "Killed" not in out, "bash reported a killed job: a daemon is still a job of the script"
    assert footprint() == before


def test_ctrl_c_cleans_up():
    """SIGINT to the demo's process group, as a terminal sends it, while the client runs."""
    requires_demo()
    before = footprint()
    log = Path(f"/tmp/dm-test-{os.getpid()}.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", str(DEMO)], stdout=f, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "the client commits rows" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=90)
        out = log.read_text()
        assert rc == 130, out[-3000:]
        assert "demo: interrupted: cleaning up" in out
        assert footprint() == before
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            subprocess.run(["bash", str(DEMO), "--down"], capture_output=True)
        log.unlink(missing_ok=True)


def test_keep_leaves_a_cluster_to_poke_at_and_down_removes_it():
    requires_demo()
    before = footprint()
    try:
        run = run_demo("--keep")
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-5000:]
        check_zero_loss(out)
        assert os.path.exists(STATE)
        assert not lock_holders(), f"processes keep the demo's lock: {lock_holders()}"
        # the printed commands work: the page through the VIP, the database, hbctl
        page = re.search(r"^  (ip netns exec dm\d+-cli curl -s http://10\.0\.17\.26/)$", out, re.M)
        assert page, out[-3000:]
        assert "served by ha1" in subprocess.run(page.group(1).split(), capture_output=True, text=True).stdout
        hbctl = re.search(r"^  (\S+/hbctl --run-dir \S+ status)$", out, re.M)
        assert hbctl, out[-3000:]
        status = subprocess.run(hbctl.group(1).split(), capture_output=True, text=True).stdout
        assert "service db/sql (group 10.0.17.26): ok" in status, status
        again = run_demo()
        assert again.returncode == 1 and "a cluster kept with --keep is running" in again.stderr
    finally:
        down = run_demo("--down", timeout=120)
    assert down.returncode == 0 and "demo: removed" in down.stdout, down.stdout + down.stderr
    assert footprint() == before


def test_tour_act4_toy_database_fencing_and_failback():
    requires_root()
    requires_commands("ip", "curl", "mkfs.ext4", "e2fsck", "nsenter", "findmnt", "flock", "fuser")
    had = {p: os.path.lexists(p) for p in ("/data", "/dev/drbd0")}   # (other tests have an r0 too)
    run = subprocess.run(["bash", str(SCRIPTS / "demo_failover.sh")], capture_output=True, text=True, timeout=400,
                         env=ENV)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "records lost in the failover: 0 of 20" in out
    assert re.search(r"ha1's hbd sees: /dev/\S+ /data\s+ext4", out), out[-4000:]
    assert re.search(r"ha2's hbd sees: /dev/\S+ /data\s+ext4", out), out[-4000:]
    assert re.search(r"kernel: EXT4-fs \(\w+\): recovery complete", out), out[-4000:]   # replayed
    assert re.search(r"GET / -> 20 records, served by ha2", out), out[-4000:]
    assert re.search(r"GET / -> 25 records, served by ha1", out), out[-4000:]
    assert "ha1: r0: fence-peer helper returned 4 (peer was fenced)" in out, out[-4000:]
    assert "answering 4 (peer was fenced)" in out
    assert "ha1's hbd: unfence-peer r0 on ha2" in out
    assert "cluster manager: peer ha1 is dead" in out
    delay = float(re.search(r"ha2 Primary (\S+) s after hbd declared ha1 dead", out).group(1))
    # The target (0.5 s: 0.24 s measured on a quiet machine) is reported, not asserted: wall
    # clock here moves with the machine's load (0.7-0.8 s seen with other work running). What
    # is asserted is that the promotion did not wait for a second failure detector (replicad's
    # own ping-int + ping-timeout, several seconds) nor retry `primary` (1 s apart).
    print(f"promotion {delay:.3f} s after hbd declared the peer dead (target 0.5 s)")
    assert 0 <= delay < 0.95, f"promotion {delay} s after the dead declaration"
    assert "the two disks are identical" in out
    assert "e2fsck -fn on ha1's disk: clean" in out
    # nothing left behind: namespaces, the device names, loop devices over the run's files, /data
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hafo" not in left
    assert not [f for f in loop_backing_files() if "ha-demo" in f]
    assert {p: os.path.lexists(p) for p in had} == had
