# SPDX-License-Identifier: GPL-2.0-or-later
"""The FUSE+loop block device (replica.fuse_device): ext4 on /dev/loopN over the FUSE file that
C serves through the request layer.

Each test leaves nothing behind, even when it fails: the `cleanup_after` fixture unmounts what
the test mounted (lazily), force-detaches its backends and then fails the test if a loop device
still serves a file under the test's run dir or a mount is left there.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import pytest

from replica.errors import ReplicaError
from replica.fuse_device import FuseLoopBackend, _is_fuse_mount, _loop_backing, _mounts, _umount_lazy
from replica.mirror import Engine
from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.unit.test_mirror_peer import SIZE as PAIR_SIZE
from tests.unit.test_mirror_peer import Pair

pytestmark = [pytest.mark.root]

SIZE = 64 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loops_serving(file_ids) -> list[str]:
    """Loop devices bound to one of `file_ids` ((st_dev, st_ino) of FUSE files). Not by path:
    once the FUSE mount is lazily unmounted, sysfs shows the file as "/r0"."""
    wanted = {tuple(i) for i in file_ids if i}
    found = []
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith("loop") and os.path.exists(f"/sys/block/{name}/loop") and \
                _loop_backing(f"/dev/{name}") in wanted:
            found.append(f"/dev/{name}")
    return found


def mounts_under(prefix: str) -> list[str]:
    return [point for point, _ in _mounts() if point.startswith(prefix)]


class Env:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.run_dir = str(tmp_path / "run")
        self.backends: list[FuseLoopBackend] = []
        self.engines: list[tuple[Engine, int, str]] = []
        self.file_ids: list = []   # FUSE files of processes that died (the kill test)

    def engine(self, size=SIZE) -> Engine:
        """An engine over a fresh, fully written tmpfs file."""
        path = f"/dev/shm/replica-test-fuse-{uuid.uuid4().hex}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        eng = Engine(fd, size)
        self.engines.append((eng, fd, path))
        return eng

    def backend(self, name="r0") -> FuseLoopBackend:
        b = FuseLoopBackend(name, self.run_dir)
        self.backends.append(b)
        return b

    def mount(self, dev: str, name="ext4", *options: str) -> str:
        point = str(self.tmp / "run" / "mnt" / name)
        os.makedirs(point, exist_ok=True)
        subprocess.run(["mount", *options, dev, point], check=True)
        return point

    def close(self):
        for point in reversed(mounts_under(self.run_dir)):
            if not _is_fuse_mount(point):
                _umount_lazy(point)
        for b in self.backends:
            b.detach(force=True)
            self.file_ids.append(b.record()["file_id"])
        for eng, fd, path in self.engines:
            eng.close()
            os.close(fd)
            os.unlink(path)


@pytest.fixture
def env(tmp_path):
    requires_root()
    requires_commands("mkfs.ext4", "e2fsck", "mount", "umount")
    if (reason := FuseLoopBackend.available()) is not None:
        pytest.skip(reason)
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()
        # autoclear frees a loop device at its last close, which an unmount may finish a little
        # after it returned
        try:
            wait_for(lambda: not loops_serving(e.file_ids), timeout_s=10, what="loop devices released")
        finally:
            left = loops_serving(e.file_ids) + mounts_under(e.run_dir)
            assert left == [], f"left behind: {left}"


def mkfs(dev: str) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)


def write_files(point: str, count: int, size: int) -> dict[str, str]:
    sums = {}
    for i in range(count):
        data = os.urandom(size + i * 4097)
        with open(os.path.join(point, f"file{i}"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        sums[f"file{i}"] = hashlib.sha256(data).hexdigest()
    return sums


def read_sums(point: str, names) -> dict[str, str]:
    out = {}
    for name in names:
        with open(os.path.join(point, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_ext4_on_the_loop_device_reaches_the_backing_file(env):
    eng = env.engine()
    b = env.backend()
    dev = b.attach(eng, SIZE)
    assert dev.startswith("/dev/loop") and b.path == dev
    assert b.stats()["loop_direct_io"] is True
    with open(f"/sys/block/{os.path.basename(dev)}/queue/logical_block_size") as f:
        assert f.read().strip() == "4096"
    mkfs(dev)
    point = env.mount(dev)
    sums = write_files(point, 12, 100_000)
    subprocess.run(["umount", point], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    b.detach()
    assert b.path is None and not os.path.exists(b.mountpoint)
    assert eng.stats()["bytes_written"] > 12 * 100_000
    # the backing file alone holds the same files
    backing = env.engines[0][2]
    point = env.mount(backing, "backing", "-o", "ro,loop")
    try:
        assert read_sums(point, sums) == sums
    finally:
        subprocess.run(["umount", point], check=True)


def test_fsync_reaches_the_peer_before_it_returns_under_protocol_c(env, tmp_path):
    pair = Pair(tmp_path, "C")
    try:
        b = env.backend()
        dev = b.attach(pair.primary, PAIR_SIZE)
        mkfs(dev)
        point = env.mount(dev)
        flushes = pair.primary.stats()["flushes"]
        data = os.urandom(256 << 10)
        with open(os.path.join(point, "data"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            # right now, without waiting: protocol C answered the writes and the flush only
            # once the peer had them
            assert data in os.pread(pair.sfd, PAIR_SIZE, 0)
        assert pair.primary.stats()["flushes"] > flushes
        assert pair.secondary.stats()["peer_frames_applied"] > 0
        subprocess.run(["umount", point], check=True)
        b.detach()
    finally:
        env.close()
        env.backends.clear()
        pair.close()


def test_the_fuse_file_refuses_what_a_disk_cannot_do(env):
    eng = env.engine()
    b = env.backend()
    b.attach(eng, SIZE)
    with pytest.raises(PermissionError):
        os.truncate(b.file, SIZE // 2)
    fd = os.open(b.file, os.O_RDWR)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        os.posix_fallocate(fd, 0, 4096)   # preallocation inside the disk: nothing to do
        trims = eng.stats()["trims"]
        subprocess.run(["fallocate", "--punch-hole", "--offset", "0", "--length", "8192", b.file], check=True)
        assert eng.stats()["trims"] == trims + 1
        eng.set_read_only(True)
        with pytest.raises(OSError) as excinfo:
            os.pwrite(fd, b"y" * 4096, 0)
        assert excinfo.value.errno == 30   # EROFS
        assert os.pread(fd, 4, 0) == b"\0\0\0\0"   # reads still work: the hole was punched
    finally:
        os.close(fd)
        eng.set_read_only(False)
    assert b.stats()["refused"] >= 2 and eng.stats()["refused"] >= 2


def test_force_detach_while_ext4_is_mounted_does_not_hang(env):
    eng = env.engine()
    b = env.backend()
    dev = b.attach(eng, SIZE)
    mkfs(dev)
    point = env.mount(dev)
    write_files(point, 2, 10_000)
    with pytest.raises(ReplicaError, match="still held"):
        b.detach()   # held by the mount: refused without force
    done = threading.Event()
    t = threading.Thread(target=lambda: (b.detach(force=True), done.set()), daemon=True)
    t.start()
    assert done.wait(10), "detach(force=True) hung"
    assert not _is_fuse_mount(b.mountpoint)
    # the mounted ext4 now sees a pulled disk; unmounting it frees the loop device (autoclear)
    subprocess.run(["umount", point], capture_output=True)
    if point in mounts_under(point):
        _umount_lazy(point)


CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from replica.mirror import Engine
from scripts.waiting import wait_for
from replica.fuse_device import FuseLoopBackend
fd = os.open({disk!r}, os.O_RDWR)
eng = Engine(fd, {size})
b = FuseLoopBackend("r0", {run_dir!r})
b.attach(eng, {size})
print(json.dumps(b.record()), flush=True)
time.sleep(600)
"""


def test_cleanup_after_the_serving_process_was_killed_with_ext4_mounted(env):
    disk = f"/dev/shm/replica-test-fuse-{uuid.uuid4().hex}"
    with open(disk, "wb") as f:
        f.truncate(SIZE)
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT, disk=disk, size=SIZE,
                                                                 run_dir=env.run_dir)],
                             stdout=subprocess.PIPE, text=True)
    try:
        record = json.loads(child.stdout.readline())
        dev = record["loop"]
        mkfs(dev)
        point = env.mount(dev)
        write_files(point, 3, 50_000)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        lines = FuseLoopBackend.cleanup(json.loads(json.dumps(record)))
        assert any(dev in line for line in lines), lines
        assert any("unmounted" in line for line in lines), lines
        subprocess.run(["umount", point], capture_output=True)   # a disk that vanished: errors, but it goes
        if point in mounts_under(point):
            _umount_lazy(point)
        env.file_ids.append(record["file_id"])
        wait_for(lambda: not loops_serving([record["file_id"]]), timeout_s=10, what="the loop device released")
        assert not _is_fuse_mount(record["mountpoint"]) and not os.path.exists(record["mountpoint"])
        assert FuseLoopBackend.cleanup(record) == []   # idempotent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.unlink(disk)
