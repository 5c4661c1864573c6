# SPDX-License-Identifier: GPL-2.0-or-later
"""The real Linux NBD client (nbd.ko + Debian's nbd-client) against replicad, in a qemu guest.

The host kernel has no nbd module, so Debian's cloud kernel boots under qemu TCG (tests/e2e/vm/)
and attaches replicad's TCP export on the host's 127.0.0.1 (10.0.2.2 in the guest). The guest
makes ext4, writes files with fsync and with a sync after each (FLUSH-heavy), checks them, runs
e2fsck, disconnects, reconnects and reads them back. The host then proves the bytes reached
replicad's backing file: `e2fsck -fn` on it, and a read-only loop mount whose md5s must equal
the guest's. One boot, ~20 s under TCG on 2 cores.
"""
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import requires_commands, requires_root
from tests.e2e.vm.guest import run_guest
from tests.e2e.vm.image import build_boot_image, ImageUnavailable
from tests.integration.replica_fixtures import serve_resource

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
DISK_SIZE = 128 * MiB
DATA_FILES = 4          # fsync'd files ...
DATA_KIB = 4096         # ... of 4 MiB random data each
SYNC_FILES = 24         # small files, each followed by a whole-system sync (NBD FLUSH)
GUEST_TIMEOUT_S = 90
SCRIPT = Path(__file__).resolve().parent / "vm" / "nbd_ext4.sh"


@pytest.fixture(scope="module")
def boot_image():
    requires_root()
    requires_commands("timeout", "mount", "umount", "losetup", "e2fsck")
    try:
        return build_boot_image()
    except ImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def scratch():
    """A directory on tmpfs; anything mounted or loop-attached below it is released afterwards."""
    path = Path(tempfile.mkdtemp(prefix="replica-vm-", dir="/dev/shm"))
    try:
        yield path
    finally:
        for mnt in reversed(_mounts_under(path)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        for img in path.glob("*.img"):
            _detach_loops(img)
        shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path) + "/")]


def _loops_of(img: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def _detach_loops(img: Path) -> None:
    for dev in _loops_of(img):
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_kernel_nbd_client_ext4_data_reaches_replicad_disk(boot_image, scratch):
    port = _free_port()
    env = {"NBD_HOST": "10.0.2.2", "NBD_PORT": port, "NBD_EXPORT": "r0",
           "DATA_FILES": DATA_FILES, "DATA_KIB": DATA_KIB, "SYNC_FILES": SYNC_FILES}
    serve = contextlib.contextmanager(serve_resource)
    with serve(scratch, size=DISK_SIZE, export=f"127.0.0.1:{port}") as served:
        run = run_guest(boot_image, SCRIPT, env, scratch, GUEST_TIMEOUT_S)
        pid = served.daemon_pid()
        assert pid is not None and Path(f"/proc/{pid}").exists(), "replicad died while serving the VM"
        disk = served.disk
    # The resource is down and replicad gone: only its backing file is left to inspect.
    report = f"guest verdict {run.verdict!r}, qemu exit {run.returncode}, {run.elapsed_s:.1f} s; console tail:\n{run.tail()}"
    assert run.values("INIT"), f"the guest never reached /init: {report}"
    assert run.passed, report
    assert run.values("SIZE") == [str(DISK_SIZE)], report
    steps = [s.split()[0] for s in run.values("STEP")]
    assert steps == ["connect", "mkfs", "fsync-writes", "flush-writes", "checksum", "umount",
                     "e2fsck", "disconnect", "reconnect", "done"], report
    guest_md5 = run.md5s()
    expected = {f"fsync/data{i}" for i in range(DATA_FILES)} | {f"flush/small{i}" for i in range(SYNC_FILES)}
    assert set(guest_md5) == expected, report

    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True, timeout=60)
    assert fsck.returncode == 0, f"host e2fsck -fn {disk}: exit {fsck.returncode}\n{fsck.stdout}{fsck.stderr}"

    mnt = scratch / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro,loop,noload", "-t", "ext4", str(disk), str(mnt)],
                   check=True, capture_output=True, timeout=30)
    try:
        host_files = {str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file()}
        host_md5 = {rel: _md5(mnt / rel) for rel in sorted(host_files - {"lost+found"})}
        sizes = {rel: (mnt / rel).stat().st_size for rel in host_md5}
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=30)
    assert not _loops_of(disk), "the loop device outlived the read-only mount"
    assert host_md5 == guest_md5, "the backing file's files differ from what the guest wrote"
    assert sizes["fsync/data0"] == DATA_KIB * 1024
    assert sizes[f"flush/small{SYNC_FILES - 1}"] == 1000 + (SYNC_FILES - 1) * 777
