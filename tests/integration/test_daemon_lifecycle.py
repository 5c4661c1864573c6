# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's life as replicactl starts it (issue 9, item 5): a failed `up` leaves no daemon
behind; each command acts on the --config it was given (a corrected or edited file, another
path), not on the file the daemon started with."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.netns import MiB
from tests.integration.replica_fixtures import BIN, write_config


def daemons_of(run_dir: Path) -> list[int]:
    """PIDs of live replicad processes serving `run_dir` (found by their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"replica.daemon" in argv and str(run_dir).encode() in argv:
            pids.append(int(entry))
    return pids


def no_daemon_within(run_dir: Path, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (pids := daemons_of(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture
def node(tmp_path):
    """A run dir for node alpha; every replicad left serving it is killed at the end."""
    run_dir = tmp_path / "run"

    def ctl(config: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "replicactl"), "--config", str(config), "--node", "alpha",
                               "--run-dir", str(run_dir), *args],
                              capture_output=True, text=True, timeout=60)
    try:
        yield ctl, run_dir
    finally:
        for pid in daemons_of(run_dir):     # ours: the run dir is this test's tmp_path
            os.kill(pid, signal.SIGKILL)


def disk(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    return path


def test_failed_up_leaves_no_daemon_and_a_corrected_config_is_used(node, tmp_path):
    ctl, run_dir = node
    # the case: no 'on' section for this node; reported by replicactl with file:line
    wrong = tmp_path / "wrong.conf"
    wrong.write_text(f"resource r0 {{\n  on beta {{ disk {disk(tmp_path, 'd0')}; }}\n}}\n")
    res = ctl(wrong, "up", "r0")
    assert res.returncode == 1
    assert res.stderr == (f"replicactl: up: {wrong}:1: resource 'r0' has no 'on alpha' section "
                          f"(hosts: beta)\n")
    assert no_daemon_within(run_dir) == []

    # a failure inside the daemon (the disk is missing): the daemon it started goes too
    missing = tmp_path / "missing.conf"
    write_config(missing, tmp_path / "absent.img", f"unix:{tmp_path}/r0.sock")
    res = ctl(missing, "up", "r0")
    assert res.returncode == 1 and "absent.img" in res.stderr, res.stderr
    assert daemons_of(run_dir) == []        # replicactl waited for it

    # corrected config, another path, same run dir: it is what comes up
    fixed = tmp_path / "fixed.conf"
    write_config(fixed, disk(tmp_path, "d0"), f"unix:{tmp_path}/r0.sock")
    assert ctl(fixed, "up", "r0").returncode == 0
    assert ctl(fixed, "role", "r0").stdout == "Primary/Unknown\n"
    assert len(daemons_of(run_dir)) == 1

    # the file edited on disk while the daemon runs: a new resource in it comes up too
    text = fixed.read_text()
    fixed.write_text(text + text.replace("resource r0", "resource r1")
                     .replace(str(tmp_path / "d0"), str(disk(tmp_path, "d1")))
                     .replace("r0.sock", "r1.sock").replace("/dev/nbd0", "/dev/nbd1"))
    res = ctl(fixed, "up", "r1")
    assert res.returncode == 0, res.stderr
    # another file naming r2, same run dir: r2 comes from it; r0 and r1 keep running
    other = tmp_path / "other.conf"
    write_config(other, disk(tmp_path, "d2"), f"unix:{tmp_path}/r2.sock", name="r2")
    res = ctl(other, "up", "r2")
    assert res.returncode == 0, res.stderr
    assert ctl(other, "status", "r2").stdout == "r2 role:Primary\n  disk:UpToDate\n\n"
    assert ctl(fixed, "status").stdout == ("r0 role:Primary\n  disk:UpToDate\n\n"
                                           "r1 role:Primary\n  disk:UpToDate\n\n")
    assert len(daemons_of(run_dir)) == 1

    for config, res in ((fixed, "r0"), (fixed, "r1"), (other, "r2")):
        assert ctl(config, "down", res).returncode == 0
    assert no_daemon_within(run_dir) == []  # the last down ends it, as before
