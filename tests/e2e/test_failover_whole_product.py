# SPDX-License-Identifier: GPL-2.0-or-later
"""The seed's setup end to end: hbd moves the VIP, the replicated disk, ext4 and a database.

scripts/demo_failover.sh builds three network namespaces, runs replicad and hbd on two nodes
(haresources "ha1 VIP datadisk::r0 Filesystem::/dev/drbd0::/data::ext4 kvstore"), makes ext4 on
the first Primary, stores records through the VIP (each an fsynced file), kills ha1 the hard
way, and checks that ha2 mounts the filesystem (journal replay) and serves every acknowledged
record; then ha1 returns, resyncs and takes the service back, the two disks must be identical
and e2fsck clean. With `fencing resource-only` and the shipped replica-fence-peer: a broken
replication link makes ha1 outdate ha2 through the heartbeat path (fence-peer exit 4), the resync
runs unfence-peer, and after ha1's death hbd tells ha2's replicad at once, so ha2 is Primary
within 0.5 s of hbd's dead declaration (hbd's journal vs replicad's log). The script exits non-zero on any of it; this test also checks that it leaves
nothing behind: namespaces, /dev/drbd0, loop devices over its files, /data.
"""
import glob
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_root

pytestmark = pytest.mark.root

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_failover.sh"


def loop_backing_files() -> list[str]:
    out = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            out.append(Path(path).read_text().strip())
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_failover_keeps_every_acknowledged_record_and_fails_back():
    requires_root()
    requires_commands("ip", "curl", "mkfs.ext4", "e2fsck", "nsenter", "findmnt", "flock", "fuser")
    had = {p: os.path.lexists(p) for p in ("/data", "/dev/drbd0", "/dev/replica/r0")}
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=400,
                         env={**os.environ, "TERM": "dumb"})
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
    assert 0 <= delay < 0.5, f"promotion {delay} s after the dead declaration"
    assert "the two disks are identical" in out
    assert "e2fsck -fn on ha1's disk: clean" in out
    # nothing left behind: namespaces, the device names, loop devices over the run's files, /data
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hafo" not in left
    assert not [f for f in loop_backing_files() if "ha-demo" in f]
    assert {p: os.path.lexists(p) for p in had} == had
