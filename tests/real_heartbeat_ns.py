# SPDX-License-Identifier: GPL-2.0-or-later
"""Finding and killing a real heartbeat daemon (Debian's, run in a private mount namespace).

heartbeat forks helper processes, so a test finds them all by the mount namespace the daemon was
started in (heartbeat-wire.md 1). That namespace's inode number could be reused by a new one
once the old one is gone (every `ip netns exec` makes one), so an fd is held on it from start to
kill: while pinned, the link names only the namespace the test created, and only processes the
test started can be in it.
"""
import os
import signal
import time

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
