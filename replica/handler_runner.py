# SPDX-License-Identifier: GPL-2.0-or-later
"""A resource's `handlers { }` at run time: DRBD's usermode helpers, with its environment.

`HandlerRunner` (`rt.handler_runner`) only reads the runtime (its resource, hosts and states,
for the environment) and publishes `call helper` / `response helper` on its events; it never
changes state: whoever asks for a handler acts on its exit code (replica.fencing,
replica.sync, replica.connection). The runtime's run_handler / run_handler_wait /
call_handler / handler_env are the entry points the others use.

    call(which)      run it, wait (fence-peer): exit code, None if not run or timed out
    run_wait(which)  the same, 0 when not configured (before-resync-target/-source)
    run(which, ...)  in the background, one after the other (after-resync-target...)
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")

HANDLER_TIMEOUT_S = 60.0


class HandlerRunner:
    def __init__(self, rt: ResourceRuntime):
        self.rt = rt

    def env(self) -> dict[str, str]:
        """The environment DRBD gives its helpers (drbdadm's khelper env, 8.4 and 9 names), and
        REPLICA_ROLE, REPLICA_DISK, REPLICA_PEER_DISK."""
        rt = self.rt
        peer = rt.peer_host
        env = dict(os.environ, DRBD_RESOURCE=rt.name, REPLICA_RESOURCE=rt.name,
                   DRBD_PEER=peer.name if peer else "", DRBD_PEERS=peer.name if peer else "",
                   DRBD_MY_ADDRESS=rt.host.address[0] if rt.host.address else "",
                   DRBD_MY_AF=rt.host.address_family,
                   DRBD_PEER_ADDRESS=peer.address[0] if peer and peer.address else "",
                   DRBD_PEER_AF=peer.address_family if peer else "",
                   DRBD_CONF=os.path.abspath(rt.resource.file) if rt.resource.file else "",
                   DRBD_BACKING_DEV=rt.host.disk, DRBD_VOLUME=str(rt.host.volume or 0),
                   DRBD_MINOR=str(rt.host.minor) if rt.host.minor is not None else "")
        if rt.host.minor is not None:
            env[f"DRBD_MINOR_{rt.host.volume or 0}"] = str(rt.host.minor)
        # the states at the call: a handler must not ask us (fence-peer runs under our lock),
        # as DRBD's read /proc/drbd rather than netlink (replica/crm_fence.py)
        s = rt.state
        env.update(REPLICA_ROLE=str(s.role), REPLICA_DISK=str(s.disk), REPLICA_PEER_DISK=str(s.peer_disk))
        return env

    def call(self, which: str, timeout_s: float = HANDLER_TIMEOUT_S) -> int | None:
        """Run the `handlers { which }` command and wait for it: its exit code, None when it
        could not run or timed out (DRBD's kernel waits for its usermode helper likewise)."""
        rt = self.rt
        cmd = rt.resource.handlers.get(which)
        if not cmd:
            return None
        log.info("%s: helper command: %s %s", rt.name, which, cmd)
        return self._run_one(which, cmd, self.env(), timeout_s)

    def _run_one(self, which: str, cmd: str, env: dict[str, str],
                 timeout_s: float = HANDLER_TIMEOUT_S) -> int | None:
        """Run one handler to its end: its exit code, None if it could not run or timed out.
        Published as `call helper` and `response helper ... status:N` (N = -1: it could not
        run or timed out)."""
        rt = self.rt
        rt.events.helper(which)
        try:
            rc = subprocess.run(cmd, shell=True, env=env, stdin=subprocess.DEVNULL,
                                timeout=timeout_s).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s: helper command: %s: %s", rt.name, which, exc)
            rt.events.helper(which, -1)
            return None
        log.info("%s: helper command: %s exit code %d", rt.name, which, rc)
        rt.events.helper(which, rc)
        return rc

    def run(self, which: str, *more: str) -> None:
        """Run the `handlers { which }` commands in the background (DRBD's helpers), one after
        the other in the order given; a handler that is not configured is skipped."""
        rt = self.rt
        todo = [(w, rt.resource.handlers[w]) for w in (which, *more)
                if rt.resource.handlers.get(w)]
        if not todo:
            return
        env = self.env()
        for w, cmd in todo:
            log.info("%s: helper command: %s %s", rt.name, w, cmd)

        def run_all() -> None:
            for w, cmd in todo:
                self._run_one(w, cmd, env)
        threading.Thread(target=run_all, name=f"handler[{rt.name}]", daemon=True).start()

    def run_wait(self, which: str) -> int | None:
        """Run `handlers { which }` and wait for it (DRBD's before-resync-target): its exit
        code; 0 when it is not configured, None if it could not run or timed out."""
        rt = self.rt
        cmd = rt.resource.handlers.get(which)
        if not cmd:
            return 0
        log.info("%s: helper command: %s %s", rt.name, which, cmd)
        return self._run_one(which, cmd, self.env())
