# SPDX-License-Identifier: GPL-2.0-or-later
"""The resource's block device as DRBD users know it: it exists on the Primary only, under
/dev/replica/RES and the `device` line's /dev/drbdN; demotion and `down` are refused while it is
mounted or open (naming who holds it); ext4 made on one node mounts on the other after a
switchover; `down --force` releases it even after replicad died under a mounted filesystem.

This kernel has no nbd.ko, so the device is a loop device on replicad's FUSE file
(`device-kind fuse`); tests/e2e/test_kernel_nbd_vm.py runs the kernel-NBD kind in a VM.
"""
import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.integration.netns import TwoNodes, sh

pytestmark = pytest.mark.root
BIN = Path(sys.executable).parent
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _needs():
    requires_root()
    requires_commands("mkfs.ext4", "e2fsck", "losetup", "mount", "umount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: the FUSE+loop device cannot be made here")


def backing_loop(kernel: str) -> str | None:
    """The backing file of loop device `kernel`, or None when it is detached."""
    try:
        return Path(f"/sys/block/{os.path.basename(kernel)}/loop/backing_file").read_text().strip()
    except OSError:
        return None


class Mounted:
    """mount DEVICE on a fresh directory; umount (lazily if it must) on exit, even on failure."""

    def __init__(self, device: str, where: Path):
        self.dir = where
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", device, str(where))

    def __enter__(self):
        return self.dir

    def __exit__(self, *exc):
        if sh("umount", str(self.dir), check=False).returncode != 0:
            sh("umount", "-l", str(self.dir), check=False)


def write_files(root: Path, n: int, size: int = 256 << 10) -> dict[str, str]:
    sums = {}
    for i in range(n):
        data = os.urandom(size)
        p = root / f"f{i:03d}"
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        sums[p.name] = hashlib.sha256(data).hexdigest()
    fd = os.open(root, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return sums


def read_sums(root: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


@pytest.fixture
def pair():
    with TwoNodes(size=64 * MiB, device="device minor 41; device-kind fuse;") as nodes:
        for node in ("alpha", "beta"):
            nodes.ctl(node, "create-md", "--force", "r0")
        for node in ("alpha", "beta"):
            nodes.ctl(node, "up", "r0")
        nodes.wait_connected()
        nodes.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        nodes.wait_synced()
        yield nodes
        for node in ("alpha", "beta"):
            nodes.ctl(node, "down", "--force", "r0", check=False)


def test_device_exists_on_the_primary_only_and_ext4_survives_a_switchover(pair, tmp_path):
    assert not os.path.lexists("/dev/drbd41") and not os.path.lexists("/dev/replica/r0")
    # a Secondary has no device to open: mount says so
    (tmp_path / "m").mkdir()
    res = sh("mount", "/dev/drbd41", str(tmp_path / "m"), check=False)
    assert res.returncode != 0 and "does not exist" in res.stderr

    pair.ctl("alpha", "primary", "r0")
    st = pair.status("alpha")["device"]
    kernel = st["kernel"]
    assert st["path"] == "/dev/drbd41" and st["kind"] == "fuse" and st["holders"] == []
    assert os.readlink("/dev/drbd41") == kernel == os.readlink("/dev/replica/r0")
    assert stat.S_ISBLK(os.stat("/dev/drbd41").st_mode) and backing_loop(kernel)
    sh("mkfs.ext4", "-q", "/dev/drbd41")
    mnt = tmp_path / "alpha"
    with Mounted("/dev/drbd41", mnt):
        sums = write_files(mnt, 12)
        # mounted: demotion and down are refused, with DRBD's sentence and the mount point
        for verb in ("secondary", "down"):
            res = pair.ctl("alpha", verb, "r0", check=False)
            assert res.returncode == 17, res.stderr
            assert "State change failed: Device is held open by someone" in res.stderr
            assert f"mounted on {mnt}" in res.stderr
        text = pair.ctl("alpha", "status", "r0").stdout
        assert f"device:/dev/drbd41 kernel:{kernel} (fuse) mounted on {mnt}" in text
        assert pair.status("alpha")["device"]["holders"] == [f"mounted on {mnt}"]
    # open by a process (not mounted): the pid is named
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open('/dev/drbd41','rb'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        res = pair.ctl("alpha", "secondary", "r0", check=False)
        assert res.returncode == 17 and f"open by pid {holder.pid} (python" in res.stderr
    finally:
        holder.kill()
        holder.wait()
    pair.ctl("alpha", "secondary", "r0")
    assert not os.path.lexists("/dev/drbd41") and not os.path.lexists("/dev/replica/r0")
    assert backing_loop(kernel) is None
    assert pair.status("alpha")["device"] is None

    pair.ctl("beta", "primary", "r0")
    with Mounted("/dev/drbd41", tmp_path / "beta") as m:
        assert read_sums(m, sums) == sums
    res = sh("e2fsck", "-fn", "/dev/drbd41", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    pair.ctl("beta", "secondary", "r0")
    assert pair.disks_equal()


def test_nbd_kind_on_a_kernel_without_nbd_is_refused_with_the_hint(tmp_path):
    if os.path.exists("/sys/module/nbd"):
        pytest.skip("this kernel has NBD: the refusal cannot be seen")
    conf = tmp_path / "replica.conf"
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
    conf.write_text(f"resource rnbd {{\n  on n1 {{\n    device minor 42;\n    device-kind nbd;\n"
                    f"    disk {disk};\n    export unix:{tmp_path}/sock;\n  }}\n}}\n")
    args = [str(BIN / "replicactl"), "--config", str(conf), "--node", "n1", "--run-dir", str(tmp_path / "run")]
    res = subprocess.run([*args, "up", "rnbd"], capture_output=True, text=True, timeout=60)
    try:
        assert res.returncode != 0
        assert "device-kind nbd" in res.stderr and "modprobe nbd" in res.stderr
        assert not os.path.lexists("/dev/drbd42")
    finally:
        subprocess.run([*args, "down", "--force", "rnbd"], capture_output=True, timeout=60)


def test_down_force_releases_the_device_after_replicad_died_under_a_mount(tmp_path):
    conf = tmp_path / "replica.conf"
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    conf.write_text(f"resource rcrash {{\n  on n1 {{\n    device /dev/drbd43;\n    device-kind fuse;\n"
                    f"    disk {disk};\n    export unix:{tmp_path}/sock;\n  }}\n}}\n")
    run = tmp_path / "run"
    args = [str(BIN / "replicactl"), "--config", str(conf), "--node", "n1", "--run-dir", str(run)]

    def ctl(*a, check=True):
        res = subprocess.run([*args, *a], capture_output=True, text=True, timeout=60)
        assert not check or res.returncode == 0, res.stderr
        return res
    ctl("up", "rcrash")               # standalone: Primary at once, with its device
    kernel = os.readlink("/dev/drbd43")
    try:
        sh("mkfs.ext4", "-q", "/dev/drbd43")
        mnt = tmp_path / "mnt"
        with Mounted("/dev/drbd43", mnt):
            sums = write_files(mnt, 4)
            res = ctl("down", "rcrash", check=False)
            assert res.returncode == 17 and f"mounted on {mnt}" in res.stderr
            os.kill(int((run / "replicad.pid").read_text()), signal.SIGKILL)
            wait_for(lambda: not os.path.exists(f"/proc/{int((run / 'replicad.pid').read_text())}"),
                     "replicad to die", 10)
            # without --force, down only says what is left
            res = ctl("down", "rcrash")
            assert "left its block device" in res.stderr and os.path.lexists("/dev/drbd43")
            res = ctl("down", "--force", "rcrash")
            assert f"removed /dev/drbd43 -> {kernel}" in res.stdout
            assert not os.path.lexists("/dev/drbd43") and not os.path.lexists("/dev/replica/rcrash")
        # the mount let go (umount of an ext4 whose device died): the loop device is gone too
        wait_for(lambda: backing_loop(kernel) is None, f"{kernel} to be detached", 10)
        assert not (run / "rcrash.device.json").exists()
        # what fsync returned is on the backing disk: mount it (the journal replays), check
        loop = sh("losetup", "--find", "--show", str(disk)).stdout.strip()
        try:
            with Mounted(loop, tmp_path / "check") as m:
                assert read_sums(m, sums) == sums
            res = sh("e2fsck", "-fn", loop, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
        finally:
            sh("losetup", "-d", loop, check=False)
    finally:
        ctl("down", "--force", "rcrash", check=False)
        for name in ("/dev/drbd43", "/dev/replica/rcrash"):
            if os.path.islink(name):
                os.unlink(name)
