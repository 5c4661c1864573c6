# SPDX-License-Identifier: GPL-2.0-or-later
"""The FUSE+loop block-device backend: the resource as `/dev/loopN`, where the kernel has no NBD.

    ext4 ─ /dev/loopN ──(direct I/O)── RUN_DIR/fuse/RES/RES ── FUSE ── C workers ── request layer
                                       (one file, a FUSE mount)       (csrc/fuse_frontend.c)

attach() mounts the FUSE file (Engine.serve_fuse: C threads serve every request through the
request layer, never Python) and attaches a loop device to it with LOOP_CONFIGURE: direct I/O
(the loop device bypasses the page cache and hands its requests to FUSE as they come), logical
blocks of 4096 bytes (as the NBD backend's; mkfs.ext4 then picks 4 KiB blocks) and
LO_FLAGS_AUTOCLEAR: the loop device detaches itself when its last user closes it. We hold one
open fd on it while attached, so a daemon killed with -9 leaves at most a device that frees
itself once ext4 on it is unmounted.

Lifecycle (every step undone on failure, in reverse):

    attach:  mkdir RUN_DIR/fuse/RES -> serve_fuse (mount) -> LOOP_CONFIGURE -> /dev/loopN
    detach:  LOOP_CLR_FD + close our fd -> wait until the loop device let go of the file
             -> stop FUSE (ends the connection, lazy unmount) -> rmdir
    force:   the same without waiting for the loop device's users: FUSE stops at once, so
             whoever still has the device (a mounted ext4) gets I/O errors, as when a disk
             is pulled; the device goes away when they close it. Never hangs.
    cleanup: after the daemon died (record()): LOOP_CLR_FD on the loop device if it still
             serves our file, lazy unmount of the dead FUSE mount, rmdir.

Tuning, measured on this machine (2 vCPUs; fio on ext4 on the loop device; figures in the
commit that set them and in `make bench`): MAX_WRITE, THREADS and FUSE_DIRECT_IO below.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import stat
import struct
import time
from typing import TYPE_CHECKING

from replica.errors import ReplicaError

if TYPE_CHECKING:
    from replica.mirror import Engine, FuseFile

# <linux/loop.h>
LOOP_CLR_FD = 0x4C01
LOOP_SET_CAPACITY = 0x4C07
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LOOP_MAJOR = 7
# struct loop_info64: device, inode, rdevice, offset, sizelimit; number, encrypt_type,
# encrypt_key_size, flags; file_name[64], crypt_name[64], encrypt_key[32]; init[2]
LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: fd, block_size, info, __reserved[8]
LOOP_CONFIG = struct.Struct(f"=II{LOOP_INFO64.size}s64x")

BLOCK_SIZE = 4096          # logical block size of the loop device (the interface's 4096-byte blocks)
MAX_WRITE = 262144         # bytes per FUSE request (measured: 256 KiB best; 128 KiB and 1 MiB slower)
THREADS = 8                # C workers: each serves one request at a time (measured: 4-16 alike, 32 worse)
FUSE_DIRECT_IO = True      # FOPEN_DIRECT_IO: no page cache for the FUSE file, whoever opens it
UNBIND_TIMEOUT_S = 5.0     # detach: how long the loop device may take to let go of the file
FORCE_UNBIND_TIMEOUT_S = 0.5

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees, from mountinfo, which
    reads no filesystem (a dead or stuck FUSE mount cannot block it)."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            out.append((point, fields[sep + 1]))
    return out


def _is_fuse_mount(path: str) -> bool:
    return any(point == path and fstype.startswith("fuse") for point, fstype in _mounts())


def _umount_lazy(path: str) -> None:
    """umount2(path, MNT_DETACH): never touches the filesystem, so a dead FUSE mount is fine."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


def _loop_sys(loop: str, attr: str) -> str | None:
    """/sys/block/loopN/loop/ATTR, or None while the device is not bound to a file."""
    try:
        with open(f"/sys/block/{os.path.basename(loop)}/loop/{attr}", encoding="utf-8",
                  errors="surrogateescape") as f:
            return f.read().strip()
    except OSError:
        return None


def _loop_backing(loop: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file `loop` serves, or None when it serves none (or is gone)."""
    try:
        fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64.size))
    except OSError:
        return None
    finally:
        os.close(fd)
    device, inode = LOOP_INFO64.unpack(info)[:2]
    return device, inode


def _loop_configure(file_fd: int, file_path: str) -> tuple[int, str]:
    """Bind a free loop device to file_fd: direct I/O, BLOCK_SIZE, autoclear. (fd, path)."""
    info = LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                            os.fsencode(file_path)[:63], b"", b"", 0, 0)
    config = LOOP_CONFIG.pack(file_fd, BLOCK_SIZE, info)
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(32):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{n}"
            if not os.path.exists(path):   # no devtmpfs (a container): make the node
                os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(LOOP_MAJOR, n))
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            except OSError as e:
                os.close(fd)
                if e.errno == errno.EBUSY:   # another process took it between the two calls
                    continue
                raise
            return fd, path
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, "no free loop device after 32 attempts")


class FuseLoopBackend:
    """One resource's FUSE file and the loop device over it (replica.blockdev.BlockBackend)."""

    kind = "fuse"

    def __init__(self, name: str, run_dir: str) -> None:
        self.name = name
        self.run_dir = run_dir
        # realpath of run_dir only: nothing inside the FUSE mount is looked up (it may be dead)
        self.mountpoint = os.path.join(os.path.realpath(run_dir), "fuse", name)
        self.file = os.path.join(self.mountpoint, name)
        self._fuse: FuseFile | None = None
        self._loop_fd: int | None = None
        self._loop: str | None = None
        self._file_id: tuple[int, int] | None = None

    @classmethod
    def available(cls) -> str | None:
        if not os.path.exists("/dev/fuse"):
            return "the kernel has no FUSE device (/dev/fuse missing): run `modprobe fuse`"
        if not os.path.exists("/dev/loop-control"):
            return "the kernel has no loop driver (/dev/loop-control missing): run `modprobe loop`"
        if os.geteuid() != 0:
            return "attaching a loop device needs root (CAP_SYS_ADMIN): run replicad as root"
        return None

    @property
    def path(self) -> str | None:
        return self._loop

    def attach(self, engine: Engine, size: int) -> str:
        where = f"fuse: {self.name}"
        if self._fuse is not None:
            raise ReplicaError(f"{where}: already attached as {self._loop}")
        if (reason := self.available()) is not None:
            raise ReplicaError(f"{where}: cannot attach: {reason}")
        if size <= 0 or size % BLOCK_SIZE:
            raise ReplicaError(f"{where}: cannot attach: size={size} is not a positive multiple of {BLOCK_SIZE}")
        if _is_fuse_mount(self.mountpoint):
            raise ReplicaError(f"{where}: {self.mountpoint} is still mounted (a replicad that died?): "
                               f"run `replicactl down --force {self.name}`")
        os.makedirs(self.mountpoint, mode=0o700, exist_ok=True)
        try:
            self._fuse = engine.serve_fuse(self.mountpoint, self.name, max_write=MAX_WRITE, threads=THREADS,
                                           direct_io=FUSE_DIRECT_IO)
            file_fd = os.open(self.file, os.O_RDWR | os.O_CLOEXEC)
            try:
                st = os.fstat(file_fd)
                self._file_id = (st.st_dev, st.st_ino)
                self._loop_fd, self._loop = _loop_configure(file_fd, self.file)
            finally:
                os.close(file_fd)
        except OSError as e:
            self.detach(force=True)
            raise ReplicaError(f"{where}: cannot attach a loop device to {self.file}: {e.strerror or e}") from e
        return self._loop

    def resize(self, size: int) -> None:
        """Online resize (replica.resize): the FUSE file takes the engine's new size, a stat
        makes the kernel read it, and LOOP_SET_CAPACITY makes the loop device follow (as
        `losetup -c` does); whoever has it open sees the new size."""
        if self._fuse is None or self._loop_fd is None:
            return
        try:
            self._fuse.set_size(size)
            os.stat(self.file)
            fcntl.ioctl(self._loop_fd, LOOP_SET_CAPACITY)
        except OSError as e:
            raise ReplicaError(f"fuse: {self.name}: resize {self._loop} to {size} bytes: "
                               f"{e.strerror or e}") from e

    def detach(self, force: bool = False) -> None:
        if self._loop_fd is not None:
            try:
                fcntl.ioctl(self._loop_fd, LOOP_CLR_FD)   # also marks it autoclear if held
            except OSError:
                pass   # ENXIO: not bound any more
            os.close(self._loop_fd)
            self._loop_fd = None
        if self._loop is not None:
            if not self._wait_unbound(FORCE_UNBIND_TIMEOUT_S if force else UNBIND_TIMEOUT_S) and not force:
                raise ReplicaError(f"fuse: {self.name}: {self._loop} is still held (mounted or open); it goes "
                                   f"away when closed; detach with force to stop serving it now")
            self._loop = None
        if self._fuse is not None:
            self._fuse.stop()
            self._fuse = None
        try:
            os.rmdir(self.mountpoint)
        except FileNotFoundError:
            pass
        except OSError as e:
            if not force:
                raise ReplicaError(f"fuse: {self.name}: cannot remove {self.mountpoint}: {e.strerror}") from e

    def _wait_unbound(self, timeout_s: float) -> bool:
        """True once our loop device serves our file no more (autoclear ran on its last close)."""
        assert self._loop is not None
        deadline = time.monotonic() + timeout_s
        while _loop_backing(self._loop) == self._file_id:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def record(self) -> dict:
        return {"kind": self.kind, "name": self.name, "mountpoint": self.mountpoint, "file": self.file,
                "loop": self._loop, "file_id": list(self._file_id) if self._file_id else None}

    @staticmethod
    def cleanup(record: dict) -> list[str]:
        done = []
        loop, file_id = record.get("loop"), record.get("file_id")
        if loop and file_id and _loop_backing(loop) == tuple(file_id) \
                and _loop_sys(loop, "backing_file") == record.get("file"):
            # (st_dev, st_ino) alone is not enough: a dead FUSE mount's anonymous st_dev is
            # reused by the next FUSE mount, and the file's inode number is the same in each
            fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
            finally:
                os.close(fd)
            state = ("detached" if _loop_backing(loop) != tuple(file_id)
                     else "set to detach when its last user closes it (still mounted or open)")
            done.append(f"fuse: {record.get('name')}: loop device {loop} {state}")
        mountpoint = record.get("mountpoint")
        if mountpoint and _is_fuse_mount(mountpoint):
            _umount_lazy(mountpoint)
            done.append(f"fuse: {record.get('name')}: unmounted {mountpoint} (lazily)")
        if mountpoint and os.path.isdir(mountpoint) and not _is_fuse_mount(mountpoint):
            try:
                os.rmdir(mountpoint)
                done.append(f"fuse: {record.get('name')}: removed {mountpoint}")
            except OSError:
                pass   # not empty: not ours to remove
        return done

    def stats(self) -> dict:
        if self._fuse is None:
            return {}
        out = {"loop": self._loop, "loop_direct_io": _loop_sys(self._loop, "dio") == "1" if self._loop else False}
        out.update(self._fuse.stats())
        return out
