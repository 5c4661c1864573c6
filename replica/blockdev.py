# SPDX-License-Identifier: GPL-2.0-or-later
"""A resource's block device: its stable names, who holds it, and the kernel path behind it.

DRBD gives every resource a `/dev/drbdN` that can be opened only on the Primary. Ours exists
only while the resource is Primary (created on promotion, removed on demotion and `down`, both
refused while it is held: mounted, or open by a process), under names that do not depend on
how the kernel provides it:

    /dev/replica/RES  ─┐
    /dev/drbdN (the   ─┼─► /dev/nbdN   kernel NBD, attached through netlink (replica.kernel_nbd)
    `device` line)     └─► /dev/loopN  a loop device on a FUSE file (replica.fuse_device)

`device-kind` (replica.conf, our keyword) chooses: `nbd`, `fuse`, or `auto` (the default: NBD
when the kernel has it, else FUSE). Either backend serves the resource's C engine, so the
block device's requests go through the same request layer as the NBD export's.

What exists is recorded in RUN_DIR/RES.device.json while it exists, so `replicactl down --force`
can release it after replicad itself died (the loop device still mounted, the FUSE mount dead).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import stat
from typing import TYPE_CHECKING, Any, Protocol

from replica.config import HostSection
from replica.errors import ReplicaError

if TYPE_CHECKING:
    from replica.mirror import Engine

log = logging.getLogger("replicad.blockdev")

DEV_DIR = "/dev/replica"


class BlockBackend(Protocol):
    """One kernel path to a block device (replica.kernel_nbd, replica.fuse_device)."""
    kind: str

    @classmethod
    def available(cls) -> str | None: ...

    def attach(self, engine: Engine, size: int) -> str: ...

    def detach(self, force: bool = False) -> None: ...

    @property
    def path(self) -> str | None: ...

    def record(self) -> dict[str, Any]: ...

    @staticmethod
    def cleanup(record: dict[str, Any]) -> list[str]: ...

    def stats(self) -> dict[str, Any]: ...


def backend_class(kind: str) -> Any:
    """The backend class for `kind` ("nbd" or "fuse"), imported on first use."""
    where = {"nbd": ("replica.kernel_nbd", "KernelNbdBackend"),
             "fuse": ("replica.fuse_device", "FuseLoopBackend")}.get(kind)
    if where is None:
        raise ValueError(f"unknown device kind {kind!r}")
    return getattr(importlib.import_module(where[0]), where[1])


def choose_backend(resource: str, kind: str) -> Any:
    """The backend class `device-kind KIND` means on this kernel, or ReplicaError saying why
    there is none (with the fix)."""
    if kind == "auto":
        if backend_class("nbd").available() is None:
            return backend_class("nbd")
        kind = "fuse"
        why_not = backend_class(kind).available()
        if why_not is not None:
            raise ReplicaError(f"{resource}: no block device can be made: no kernel NBD "
                               f"({backend_class('nbd').available()}), and no FUSE+loop "
                               f"({why_not})")
        return backend_class(kind)
    why_not = backend_class(kind).available()
    if why_not is not None:
        raise ReplicaError(f"{resource}: device-kind {kind}: {why_not}")
    return backend_class(kind)


def device_names(resource: str, host: HostSection) -> list[str]:
    """The stable names of the resource's device: /dev/replica/RES, then the `device` line's
    path (`minor N` alone means /dev/drbdN), as DRBD names it."""
    names = [os.path.join(DEV_DIR, resource)]
    if host.device:
        names.append(host.device)
    elif host.minor is not None:
        names.append(f"/dev/drbd{host.minor}")
    return names


def make_link(name: str, target: str) -> int:
    """Point `name` at `target`, atomically (a stale link of a dead daemon is replaced), but
    never over something that is not a symlink. Returns the link's inode number: the link is
    made anew and renamed over the old one, so a link another replicad puts there later (the
    same name, maybe the same "/dev/loopN" reused) has another inode."""
    try:
        st = os.lstat(name)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISLNK(st.st_mode):
            raise ReplicaError(f"{name} exists and is not a link made by replicad (a real "
                               f"device or file): remove it or change the 'device' line")
    os.makedirs(os.path.dirname(name), exist_ok=True)
    tmp = f"{name}.replica-{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    ino = os.lstat(tmp).st_ino
    os.rename(tmp, name)
    return ino


def remove_link(name: str, target: str | None, ino: int | None = None) -> bool:
    """Remove `name` if it is a symlink (to `target`, when given; the very link we made, when
    its inode number `ino` is given). True if removed."""
    try:
        if target is not None and os.readlink(name) != target:
            return False
        if ino is not None and os.lstat(name).st_ino != ino:
            return False
        os.unlink(name)
        return True
    except (FileNotFoundError, OSError):
        return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def holders(device: str) -> list[str]:
    """Who holds block device `device` open, in words: its mounts (in every mount namespace
    of this machine), the processes that have it open, and the devices stacked on it."""
    try:
        st = os.stat(device)
    except OSError:
        return []
    if not stat.S_ISBLK(st.st_mode):
        return []
    rdev = st.st_rdev
    majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
    mounts: list[str] = []
    users: list[str] = []
    seen_ns: set[int] = set()
    me = os.getpid()
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit():
            continue
        pid = int(pid_s)
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            continue
        if ns not in seen_ns:
            seen_ns.add(ns)
            for line in _read(f"/proc/{pid}/mountinfo").splitlines():
                fields = line.split()
                if len(fields) > 4 and fields[2] == majmin and fields[4] not in mounts:
                    mounts.append(fields[4])
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                fst = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if stat.S_ISBLK(fst.st_mode) and fst.st_rdev == rdev:
                users.append(f"pid {pid} ({_read(f'/proc/{pid}/comm').strip()})")
                break
    out = [f"mounted on {m}" for m in mounts] + [f"open by {u}" for u in users]
    try:
        stacked = os.listdir(f"/sys/dev/block/{majmin}/holders")
    except OSError:
        stacked = []
    return out + [f"used by {s}" for s in sorted(stacked)]


class BlockDevice:
    """The resource's device while Primary: a backend's kernel device plus its stable names,
    recorded in the run directory. Created by `create`, gone after `remove`."""

    def __init__(self, resource: str, host: HostSection, run_dir: str):
        self.resource = resource
        self.kind = host.device_kind
        self.names = device_names(resource, host)
        self.run_dir = run_dir
        self.record_path = record_path(run_dir, resource)
        self.backend: BlockBackend | None = None
        self.link_inodes: dict[str, int] = {}

    @property
    def path(self) -> str:
        """The name users mount: the `device` line's, else /dev/replica/RES."""
        return self.names[-1]

    @property
    def exists(self) -> bool:
        return self.backend is not None

    def check_available(self) -> None:
        """Refuse now (before a promotion changes anything) if no backend can work."""
        choose_backend(self.resource, self.kind)

    def create(self, engine: Engine, size: int) -> None:
        if self.backend is not None:
            return
        for line in cleanup_after_crash(self.run_dir, self.resource):
            log.warning("%s: left by a replicad that died: %s", self.resource, line)
        backend = choose_backend(self.resource, self.kind)(self.resource, self.run_dir)
        kernel = backend.attach(engine, size)
        self.backend = backend
        try:
            for name in self.names:
                self.link_inodes[name] = make_link(name, kernel)
            self._save_record()
        except BaseException:
            self.remove(force=True)
            raise
        log.info("%s: device %s: %s (%s)", self.resource, " and ".join(self.names), kernel,
                 "kernel NBD" if backend.kind == "nbd" else "FUSE file on a loop device")

    def resize(self, size: int) -> bool:
        """After an online resize: the kernel device follows where its backend can (FUSE+loop:
        LOOP_SET_CAPACITY); False where it cannot (kernel NBD: the size is the connection's)."""
        resize = getattr(self.backend, "resize", None)
        if resize is None:
            return False
        resize(size)
        log.info("%s: device %s: resized to %d bytes", self.resource, self.path, size)
        return True

    def own_connections(self) -> int:
        """The engine connections that are this device's own (kernel NBD sockets), which the
        export must not count as NBD clients."""
        if self.backend is None:
            return 0
        return int(self.backend.stats().get("serving", 0))

    def holders(self) -> list[str]:
        if self.backend is None or self.backend.path is None:
            return []
        return holders(self.backend.path)

    def remove(self, force: bool = False) -> None:
        """Remove the names and the kernel device; the caller checked `holders` unless `force`
        (then a device still mounted goes away when its last user lets go)."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        kernel = backend.path
        for name in self.names:
            remove_link(name, kernel, self.link_inodes.get(name))
        self.link_inodes = {}
        try:
            backend.detach(force=force)
        finally:
            try:
                os.unlink(self.record_path)
            except FileNotFoundError:
                pass
        log.info("%s: device %s removed%s", self.resource, kernel, " (forced)" if force else "")

    def status(self) -> dict[str, Any] | None:
        if self.backend is None:
            return None
        return {"path": self.path, "names": self.names, "kernel": self.backend.path,
                "kind": self.backend.kind, "holders": self.holders(),
                "stats": self.backend.stats()}

    def _save_record(self) -> None:
        assert self.backend is not None
        rec = {"resource": self.resource, "kind": self.backend.kind, "names": self.names,
               "kernel": self.backend.path, "pid": os.getpid(), "backend": self.backend.record(),
               "link_inodes": self.link_inodes}
        tmp = self.record_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f)
        os.replace(tmp, self.record_path)


def _alive(pid: int) -> bool:
    """True if `pid` runs a replicad (not a recycled pid of something else)."""
    cmdline = _read(f"/proc/{pid}/cmdline")
    return "replicad" in cmdline or "replica.daemon" in cmdline


def record_path(run_dir: str, resource: str) -> str:
    return os.path.join(run_dir, f"{resource}.device.json")


def cleanup_after_crash(run_dir: str, resource: str) -> list[str]:
    """`down --force` without a daemon: release what a dead replicad left of `resource`'s
    device (links, loop or NBD device, dead FUSE mount). One line per thing released."""
    path = record_path(run_dir, resource)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ReplicaError(f"{resource}: unreadable device record {path}: {exc}") from None
    pid = rec.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        raise ReplicaError(f"{resource}: the device is still served by replicad pid {pid}: "
                           f"use `replicactl down --force {resource}` with that daemon")
    done: list[str] = []
    kernel = rec.get("kernel")
    inodes = rec.get("link_inodes") or {}
    for name in rec.get("names", []):
        # only the link this daemon made: after it died, the survivor on this machine (tests,
        # demos: two nodes, one /dev) may have made its own, to the same reused /dev/loopN
        if remove_link(name, kernel, inodes.get(name)):
            done.append(f"removed {name} -> {kernel}")
    done += backend_class(rec.get("kind", "")).cleanup(rec.get("backend", {}))
    os.unlink(path)
    return done
