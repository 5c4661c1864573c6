# SPDX-License-Identifier: GPL-2.0-or-later
"""Running Debian's real heartbeat daemon in tests: two namespaces joined by veth, a private copy
of the package's state directories, and finding and killing the daemon afterwards.

heartbeat forks helper processes, so a test finds them all by the mount namespace the daemon was
started in (heartbeat-wire.md 1). That namespace's inode number could be reused by a new one
once the old one is gone (every `ip netns exec` makes one), so an fd is held on it from start to
kill: while pinned, the link names only the namespace the test created, and only processes the
test started can be in it.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import time

from scripts.lab import NetLab

_PINNED_NS: dict[str, int] = {}


def pin_mount_namespace(pid: int) -> str:
    """Hold the mount namespace of `pid` open; return its link text (`mnt:[inode]`)."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    link = os.readlink(f"/proc/{pid}/ns/mnt")
    if link in _PINNED_NS:
        os.close(fd)
    else:
        _PINNED_NS[link] = fd
    return link


def unpin_mount_namespace(link) -> None:
    fd = _PINNED_NS.pop(link, None)
    if fd is not None:
        os.close(fd)


def is_pinned(link) -> bool:
    return link in _PINNED_NS


def ns_pids(link) -> list[int]:
    """Every process whose mount namespace is `link`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == link:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def kill_namespace(link) -> None:
    """SIGKILL every process in a pinned namespace, then unpin it; an unpinned one is left alone."""
    if link is None or not is_pinned(link):
        return  # it may be someone else's namespace by now
    try:
        for _ in range(3):
            pids = ns_pids(link)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
    finally:
        unpin_mount_namespace(link)


@contextlib.contextmanager
def veth_namespace_pair(tag: str, subnet: int):
    """Namespaces {tag}{n}-a/b joined by veth (scripts/lab.py; eth0 each, 10.{subnet}.{n}.1 and .2/24,
    with a broadcast address); yields (ns_a, ns_b, ip_a, ip_b); the lab kills what is left inside
    and deletes both namespaces afterwards."""
    n = os.getpid() % 200 + 20
    ip_a, ip_b = f"10.{subnet}.{n}.1", f"10.{subnet}.{n}.2"
    with NetLab(f"{tag}{n}") as lab:
        a, b = lab.veth_pair("a", "b", f"{ip_a}/24", f"{ip_b}/24", broadcast=True)   # bcast needs x.y.z.255
        yield a, b, ip_a, ip_b


def copy_heartbeat_state(base) -> tuple:
    """A private copy of the package's /etc/ha.d, /var/lib/heartbeat and /run/heartbeat under
    `base` (bind-mounted over the real ones in the daemon's mount namespace); returns the
    (etc, lib, run, log) directories."""
    etc, lib, runp, log = base / "etc", base / "lib", base / "run", base / "log"
    shutil.copytree("/etc/ha.d", etc, symlinks=True)
    subprocess.run(["cp", "-a", "/var/lib/heartbeat", str(lib)], check=True)
    shutil.rmtree(lib / "cores", ignore_errors=True)   # stale cores from earlier runs are not ours
    (lib / "cores").mkdir()
    for f in ("hb_uuid", "hb_generation", "hostcache", "delhostcache"):
        (lib / f).unlink(missing_ok=True)
    runp.mkdir()
    subprocess.run(["cp", "-a", "/run/heartbeat", str(runp / "heartbeat")], check=True)
    (runp / "resource-agents").mkdir()
    log.mkdir()
    return etc, lib, runp, log
