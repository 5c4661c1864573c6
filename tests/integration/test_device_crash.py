# SPDX-License-Identifier: GPL-2.0-or-later
"""Crash safety of ext4 on the replicated block device (FUSE+loop, protocol C): issue 11 item 5.

Two nodes in network namespaces (tests/integration/netns.py), `device-kind fuse`. Each round:

    Primary P                                         Secondary S
    ip netns exec P: mount DEV, writer creates files:
      begin NAME SHA  (about to write)
      write .tmp, fsync, rename, fsync dir
      done  NAME SHA  (only after fsync returned)
    -- mid-stream: SIGSTOP every process of P, SIGKILL replicad, then SIGKILL the rest
       (a power cut: the filesystem never gets a clean unmount) --
                                                      primary; dumpe2fs: needs_recovery
                                                      mount (the journal replays), every file
                                                      reported "done" holds its last done
                                                      content (or a later begun one); umount
                                                      e2fsck -fn: clean
    replicactl down --force (what the dead replicad left: loop device, dead FUSE mount, links),
    up: resync from S; the roles swap for the next round

Files of earlier rounds are checked again in every later round (after resyncs both ways), and
the two disks must be identical at the end. The fixture releases everything even when a test
fails: devices (`down --force` while the daemons live, again after they are killed), the
namespaces and their processes, the tmpfs directory; the test then checks nothing is left: no
loop device over our files, no FUSE mount, no daemon, no /dev link.

A second test: replicad dies under a mounted filesystem that someone is using; heartbeat's
Filesystem stop (scripts/resource.d/Filesystem) still unmounts it, and `down --force` releases
the device.
"""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.lab import kill_namespace_processes, namespace_pids
from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.integration.netns import BIN, NODES, MiB, TwoNodes

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
FILESYSTEM = REPO / "scripts" / "resource.d" / "Filesystem"
ROUNDS = 3
MKFS = ("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")

# The writer: files in MNT/DIR, each durable (fsync, rename, fsync dir) before "done" is printed.
# About one write in five replaces an earlier file, so the replay of renames is checked too.
WRITER = r"""
import hashlib, json, os, random, sys
mnt, sub, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
d = os.path.join(mnt, sub)
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
os.makedirs(d, exist_ok=True)
fsync_dir(d)
fsync_dir(mnt)
names, i = [], 0
while True:
    if names and rnd.random() < 0.2:
        name = rnd.choice(names)
    else:
        name, i = f"f{i:05d}", i + 1
    data = rnd.randbytes(rnd.randint(1, 48) * 1024 - rnd.randint(0, 1023))
    digest = hashlib.sha256(data).hexdigest()
    print(json.dumps(["begin", name, digest]), flush=True)
    tmp = os.path.join(d, ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, os.path.join(d, name))
    fsync_dir(d)
    print(json.dumps(["done", name, digest]), flush=True)
    if name not in names:
        names.append(name)
"""

# The checker: stdin {"REL": {"done": SHA, "later": [SHA...]}}; prints what it found.
CHECKER = r"""
import hashlib, json, os, sys
mnt = sys.argv[1]
found, bad = {}, []
for rel, want in json.load(sys.stdin).items():
    try:
        with open(os.path.join(mnt, rel), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        bad.append(f"{rel}: {e}")
        continue
    found[rel] = got
    if got != want["done"] and got not in want["later"]:
        bad.append(f"{rel}: sha256 {got[:16]}, fsynced {want['done'][:16]}")
print(json.dumps({"found": found, "bad": bad}))
"""


def requires_fuse_backend() -> None:
    requires_root()
    requires_commands("ip", "losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "dumpe2fs",
                      "nsenter", "fuser")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (the FUSE+loop block device)")
    try:
        from replica.fuse_device import FuseLoopBackend
    except ImportError as e:
        pytest.skip(f"the FUSE+loop backend is not there: {e}")
    why = FuseLoopBackend.available()
    if why is not None:
        pytest.skip(f"device-kind fuse: {why}")


class DevicePair(TwoNodes):
    """TwoNodes whose r0 has a block device (`device minor N; device-kind fuse;`), torn down
    without leaving a device behind, whatever state the test left it in."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.minor = 900 + self.subnet      # /dev/drbd9NN: no clash with a demo's /dev/drbd0
        self.device = f"device minor {self.minor}; device-kind fuse;"

    def host_ctl(self, node: str, *args: str) -> subprocess.CompletedProcess:
        """replicactl outside the namespaces (they may be gone): for `down --force` after the
        daemon died, which needs no daemon."""
        return subprocess.run([str(BIN / "replicactl"), "--config", str(self.config(node)),
                               "--node", node, "--run-dir", str(self.run_dir(node)), *args],
                              capture_output=True, text=True, timeout=60)

    def close(self) -> None:
        try:
            if self.dir.exists():
                for node in NODES:            # daemons alive: a proper forced down
                    if self.daemon_pid(node):
                        self.ctl(node, "down", "--force", "r0", check=False)
        finally:
            super().close()                   # kills the rest, releases what dead daemons left

    # --- the device ---------------------------------------------------------------------------

    def kernel_device(self, node: str) -> str:
        """The kernel device behind the node's r0 (it must be Primary)."""
        dev = self.status(node).get("device") or {}
        assert dev.get("kernel"), f"{node}: no block device in status: {dev}"
        return dev["kernel"]

    def mnt(self, node: str) -> Path:
        path = self.dir / node / "mnt"
        path.mkdir(exist_ok=True)
        return path

    def leftovers(self) -> list[str]:
        """What of ours still exists: loop devices over files under our directory, mounts of
        it in any mount namespace, processes naming it, the /dev names."""
        ours = str(self.dir)
        left = []
        for path in glob.glob("/sys/block/loop*/loop/backing_file"):
            try:
                backing = Path(path).read_text().strip()
            except OSError:
                continue
            if ours in backing:
                left.append(f"loop device {path.split('/')[3]} over {backing}")
        seen: set[int] = set()
        for proc in glob.glob("/proc/[0-9]*"):
            try:
                ns = os.stat(f"{proc}/ns/mnt").st_ino
                cmdline = Path(f"{proc}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if ours in cmdline and int(proc[6:]) != os.getpid():
                    left.append(f"process {proc[6:]}: {cmdline.strip()}")
                if ns in seen:
                    continue
                seen.add(ns)
                mounts = Path(f"{proc}/mountinfo").read_text().splitlines()
            except (OSError, ValueError):
                continue
            left += [f"mount {line.split()[4]} (seen by {proc})" for line in mounts
                     if ours in line.split()[4]]
        for name in (f"/dev/drbd{self.minor}",):
            if os.path.lexists(name):
                left.append(f"{name} -> {os.readlink(name) if os.path.islink(name) else '?'}")
        return left


@pytest.fixture
def pair() -> Iterator[DevicePair]:
    requires_fuse_backend()
    p = DevicePair(size=48 * MiB, disk="resync-rate 200M;")
    try:
        with p:
            yield p
    finally:
        left = p.leftovers()
        assert not left, f"left behind: {left}"


def crash(p: DevicePair, node: str) -> None:
    """A power cut on `node`: freeze every process of its namespace, SIGKILL replicad (the
    device now fails every request, as a dead disk), then SIGKILL the rest (the writer; its
    mount namespace dies with it and the kernel drops the mount without a clean unmount)."""
    ns = p.ns[node]
    pids = namespace_pids(ns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    daemon = p.daemon_pid(node)
    assert daemon in pids, f"{node}: replicad pid {daemon} is not in {ns}: {pids}"
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{daemon}").exists(), f"{node}: replicad pid {daemon} gone", 10)
    kill_namespace_processes(ns, timeout_s=10)
    assert not namespace_pids(ns)


def start_writer(p: DevicePair, node: str, sub: str, seed: int) -> subprocess.Popen:
    dev, mnt = p.kernel_device(node), p.mnt(node)
    script = 'mount -t ext4 "$1" "$2" && exec "$3" -c "$4" "$2" "$5" "$6"'
    return p.lab.popen(p.ns[node], ["sh", "-c", script, "sh", dev, str(mnt), sys.executable,
                                    WRITER, sub, str(seed)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_files(p: DevicePair, node: str, expected: dict[str, dict]) -> dict[str, str]:
    """Mount on `node` (journal replay), check every expected file, unmount; what was found."""
    dev, mnt = p.kernel_device(node), p.mnt(node)
    script = ('mount -t ext4 "$1" "$2" || exit 90; "$3" -c "$4" "$2"; rc=$?; '
              'umount "$2" || exit 91; exit $rc')
    res = subprocess.run(["ip", "netns", "exec", p.ns[node], "sh", "-c", script, "sh", dev,
                          str(mnt), sys.executable, CHECKER], input=json.dumps(expected),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{node}: mount/check/umount of {dev}: exit {res.returncode}: " \
                                f"{res.stderr.strip()}"
    out = json.loads(res.stdout)
    assert not out["bad"], f"{node}: {len(out['bad'])} of {len(expected)} fsynced files " \
                           f"damaged after the crash: {out['bad'][:10]}"
    return out["found"]


def blank_pair_primary(p: DevicePair, node: str = "alpha") -> None:
    """Two blank disks need no initial sync (DRBD's new-current-uuid --clear-bitmap)."""
    p.create_and_up()
    p.ctl(node, "new-current-uuid", "--clear-bitmap", "r0")
    p.wait_synced(30)
    p.ctl(node, "primary", "r0")


def test_fsynced_files_survive_kill_9_of_the_primary(pair):
    p = pair
    blank_pair_primary(p)
    r = p.lab.run(p.ns["alpha"], *MKFS, p.kernel_device("alpha"), timeout=60)
    assert r.returncode == 0, r.stderr
    expected: dict[str, dict] = {}
    rng = random.Random(os.getpid())
    primary, secondary = "alpha", "beta"
    for rnd in range(ROUNDS):
        sub = f"round{rnd}"
        writer = start_writer(p, primary, sub, rng.randrange(1 << 30))
        target, done = rng.randint(15, 60), 0
        events: list[list[str]] = []
        t0 = time.monotonic()
        assert writer.stdout is not None
        while done < target:
            line = writer.stdout.readline()
            assert line, f"{primary}: the writer ended early: {writer.stderr.read() if writer.stderr else ''}"
            events.append(json.loads(line))
            done += events[-1][0] == "done"
        crash(p, primary)                       # mid-stream: the writer is still writing
        events += [json.loads(line) for line in writer.stdout.read().splitlines() if line.strip()]
        writer.wait(timeout=10)
        elapsed = time.monotonic() - t0
        for kind, name, digest in events:
            rel = f"{sub}/{name}"
            if kind == "done":
                expected[rel] = {"done": digest, "later": []}
            elif rel in expected:
                expected[rel]["later"].append(digest)
        reported = sum(1 for e in events if e[0] == "done")
        print(f"round {rnd}: {primary} killed after {reported} fsynced files in {elapsed:.1f} s")

        # the survivor: promote, the journal needs replaying, every fsynced file is intact
        p.wait(secondary, lambda s: s["connection"] != "Connected", "peer gone", 30)
        p.ctl(secondary, "primary", "r0")
        dev = p.kernel_device(secondary)
        head = p.lab.run(p.ns[secondary], "dumpe2fs", "-h", dev)
        features = next((ln for ln in head.stdout.splitlines() if ln.startswith("Filesystem features")), "")
        assert "needs_recovery" in features, f"no crash to recover from? {features!r}"
        found = check_files(p, secondary, expected)
        assert len(found) == len(expected)
        expected = {rel: {"done": sha, "later": []} for rel, sha in found.items()}
        fsck = p.lab.run(p.ns[secondary], "e2fsck", "-fn", dev, timeout=120)
        assert fsck.returncode == 0, f"e2fsck -fn {dev} after round {rnd}:\n{fsck.stdout}{fsck.stderr}"

        # the dead node: release what its replicad left, come back, resync, swap roles
        p.ctl(primary, "down", "--force", "r0")
        assert not [x for x in p.leftovers() if "loop device" in x and f"/{primary}/" in x]
        # ...and only its own: the survivor's device (maybe the same loop number, reused) stays
        link = f"/dev/drbd{p.minor}"
        assert os.path.islink(link) and os.readlink(link) == dev, \
            f"{primary}'s down --force took {secondary}'s {link} -> {dev}: " \
            f"{os.readlink(link) if os.path.islink(link) else 'gone'}"
        assert p.kernel_device(secondary) == dev
        assert not p.status(secondary)["device"].get("stats", {}).get("errors", 0)
        p.ctl(primary, "up", "r0")
        p.wait_synced(60)
        primary, secondary = secondary, primary

    size = p.data_size()
    p.ctl(primary, "secondary", "r0")
    for node in NODES:
        p.ctl(node, "down", "r0")
    assert p.disks_equal(size), f"disks differ at byte {p.first_difference(size)}"
    # a daemon left with nothing in use exits by itself after `down`: give it the moment
    wait_for(lambda: not p.leftovers(), "nothing of ours left after down", 15,
             details=lambda: "\n".join(p.leftovers()))


def test_filesystem_stop_after_replicad_died_under_the_mount(pair):
    """The dead replicad case of heartbeat's Filesystem stop: the device fails every request,
    a process sits in the mount point, stop kills it and unmounts; down --force releases."""
    p = pair
    blank_pair_primary(p)
    dev = p.kernel_device("alpha")
    assert p.lab.run(p.ns["alpha"], *MKFS, dev, timeout=60).returncode == 0
    mnt = p.mnt("alpha")
    fs = [str(FILESYSTEM), dev, str(mnt), "ext4"]
    # a shell that owns a mount namespace (as hbd does) and sits in the mount point
    holder = p.lab.popen(p.ns["alpha"], ["sh", "-c", '"$@" start && cd "$3" && echo ready && '
                                         'exec sleep 600', "sh", *fs], stdout=subprocess.PIPE,
                         text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    in_ns = ["nsenter", "-t", str(holder.pid), "-m"]
    assert subprocess.run([*in_ns, *fs, "status"], capture_output=True).returncode == 0
    refused = p.ctl("alpha", "secondary", "r0", check=False)
    assert refused.returncode != 0 and "held open" in refused.stderr and str(mnt) in refused.stderr
    os.kill(p.daemon_pid("alpha"), signal.SIGKILL)
    # a busy mount on a dead device: Filesystem stop must still unmount it (and kill the user)
    stop = subprocess.run([*in_ns, *fs, "stop"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert holder.wait(timeout=10) != 0
    down = p.host_ctl("alpha", "down", "--force", "r0")
    assert down.returncode == 0, down.stderr
    assert not [x for x in p.leftovers() if "/alpha/" in x or "drbd" in x]
