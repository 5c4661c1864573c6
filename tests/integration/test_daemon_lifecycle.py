# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's life as replicactl starts it (issue 9, item 5): a failed `up` leaves no daemon
behind; each command acts on the --config it was given (a corrected or edited file, another
path), not on the file the daemon started with; an `address` that is not on this host is
reported with file:line before anything binds or connects."""
import os
import signal
import subprocess
from pathlib import Path

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.integration.netns import NODES, MiB, TwoNodes
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
    """[] once no replicad of `run_dir` is left; raises naming the survivors otherwise."""
    wait_for(lambda: not daemons_of(run_dir), f"every replicad of {run_dir} to exit", timeout,
             details=lambda: f"still running: {daemons_of(run_dir)}")
    return []


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


@pytest.mark.root
@pytest.mark.parametrize("who", NODES)      # alpha connects (silent before), beta listens
def test_address_not_on_this_host_is_reported_at_up(who):
    requires_root()
    requires_commands("ip")
    with TwoNodes(size=8 * MiB) as t:
        conf = t.config(who)
        good = conf.read_text()
        stray = f"10.99.{t.subnet}.9"       # in the veth's subnet, on no interface
        conf.write_text(good.replace(f"address {t.addr[who]}:7789", f"address {stray}:7789"))
        line = next(i for i, text in enumerate(conf.read_text().splitlines(), 1)
                    if stray in text)
        t.ctl(who, "create-md", "r0")
        res = t.ctl(who, "up", "r0", check=False)
        assert res.returncode == 1
        assert res.stderr == (f"replicactl: up: {conf}:{line}: resource 'r0': on '{who}': address "
                              f"{stray}:7789: IP {stray} not found on this host (no interface of "
                              f"this network namespace has it)\n")
        assert daemons_of(t.run_dir(who)) == []
        assert t.ctl(who, "status", "r0", check=False).returncode == 10   # nothing is up

        conf.write_text(good)               # corrected in place: the next up uses it
        t.ctl(NODES[1] if who == NODES[0] else NODES[0], "create-md", "r0")
        for n in NODES:
            t.ctl(n, "up", "r0")
        t.wait_connected()


@pytest.mark.root
def test_wildcard_address_is_not_checked():
    requires_root()
    requires_commands("ip")
    with TwoNodes(size=8 * MiB) as t:
        conf = t.config("beta")             # beta listens: 0.0.0.0 accepts alpha too
        conf.write_text(conf.read_text().replace(f"address {t.addr['beta']}:7789",
                                                 "address 0.0.0.0:7789"))
        t.ctl("beta", "create-md", "r0")
        t.ctl("beta", "up", "r0")
        assert t.status("beta")["connection"] == "Connecting"
