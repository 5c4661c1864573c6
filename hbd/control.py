# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's control commands: what hbctl may ask through RUN_DIR/hbd.sock, and the answers.

The socket itself (JSON lines, mode 0600, limits) is hacommon.control's
ControlServer; this module owns hbd's command table and the hop from the
server's thread onto the daemon's event loop.  Requests and answers::

    {"cmd": "status", "journal": N}   -> {"ok": true, "node", "pid", "membership", "groups", "journal"}
    {"cmd": "nodestatus", "node": X}  -> {"ok": true, "status": "up|active|dead|init|..."}
    {"cmd": "rscstatus"}              -> {"ok": true, "rscstatus": "none|local|foreign|all|transition"}
    {"cmd": "standby"|"takeover", "which": "all|local|foreign"}  -> {"ok": true} or
                                         {"ok": false, "error": "<the refusal sentence>"}
        standby also takes "planned": false and "why": TEXT when it is a recovery from a
        failure (hbmon, `hbctl standby --failure`): the groups' stops are then journaled
        as unplanned (hbd.availability counts them so everywhere, not just in the mission)
    {"cmd": "fence-peer", "node": X, "resource": R} -> {"ok": true, "code": 3..7, "text"}
    {"cmd": "unfence-peer", "node": X, "resource": R} -> {"ok": true}
    {"cmd": "watch"}                  -> {"ok": true}, then {"record": {...}} per journal
                                         record, as it is written, until hbctl closes
                                         (hbd.disk_fencing: DRBD's fence-peer contract)
    {"cmd": "reload"}                 -> {"ok": true, "changes": ["ha.cf: deadtime 1s -> 3s", ...],
                                          "groups_waiting": false} or
                                         {"ok": false, "error": "configuration invalid: FILE:LINE: ..."}
                                         (hbd.reload, as SIGHUP)

Standby and takeover requests are journaled (accepted or refused).  Only root
may move resources (the socket is mode 0600).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hacommon.control import ControlServer, Mailbox, MailboxStream, Reply, Stream
from hacommon.errors import HaError, StateChangeRefused
from hbd.disk_fencing import DiskFencing
from hbd.groups import GroupManager
from hbd.journal import Journal, read_journal
from hbd.protocol.membership import Membership

SOCKET_NAME = "hbd.sock"
ANSWER_TIMEOUT_S = 10.0     # the loop answers at once unless it is stuck


class ControlCommands:
    """hbctl's commands over one running daemon: its membership, groups and journal.

    Runs on the daemon's event loop only; `kick` tells the loop that a request moved something."""

    def __init__(self, *, node: str, membership: Membership, groups: GroupManager, journal: Journal,
                 kick: Callable[[], None], fencing: DiskFencing | None = None,
                 reload: Callable[[], Coroutine[Any, Any, Reply]] | None = None):
        self.fencing = fencing
        self.reload = reload
        self.node = node
        self.membership = membership
        self.groups = groups
        self.journal = journal
        self.kick = kick
        self.standby_planned = True     # the last accepted standby request's "planned"

    def handle_request(self, req: dict[str, Any]) -> Reply | Stream | Coroutine[Any, Any, Reply]:
        """The answer, or a coroutine giving it (fence-peer waits for the peer's hbd)."""
        cmd = req.get("cmd")
        now = time.monotonic()
        if cmd in ("fence-peer", "unfence-peer") and self.fencing is not None:
            node, resource = str(req.get("node", "")), str(req.get("resource", ""))
            try:
                self.membership.node_status(node)
            except HaError as e:
                return {"ok": False, "error": f"{cmd}: {e}"}
            if cmd == "unfence-peer":
                return self.fencing.unfence_peer(node, resource)
            return self.fencing.fence_peer(node, resource)
        if cmd == "reload" and self.reload is not None:
            return self.reload()
        if cmd == "status":
            return {"ok": True, "node": self.node, "pid": os.getpid(), "membership": self.membership.snapshot(),
                    "groups": self.groups.snapshot(),
                    "journal": read_journal(self.journal.path, limit=int(req.get("journal", 15)))}
        if cmd == "watch":
            # hbctl status --watch: every journal record (node, group, holding, stonith,
            # request...) as it is written; the client asks `status` again on each
            box = Mailbox()
            self.journal.listeners.append(lambda rec: box.put({"record": rec}))
            listener = self.journal.listeners[-1]
            return MailboxStream(box, {"ok": True}, lambda: self._unwatch(listener))
        if cmd == "nodestatus":
            try:
                return {"ok": True, "status": self.membership.node_status(str(req.get("node", "")))}
            except HaError as e:
                return {"ok": False, "error": f"nodestatus: {e}"}
        if cmd == "rscstatus":
            return {"ok": True, "rscstatus": self.groups.rscstatus()}
        if cmd in ("standby", "takeover"):
            which = str(req.get("which", "all"))
            extra = {} if req.get("planned", True) is not False else {
                "planned": False, "why": str(req.get("why", "recovery from a failure"))[:200]}
            try:
                if cmd == "standby":
                    self.groups.request_standby(which, now)
                else:
                    self.groups.request_takeover(which, now)
            except StateChangeRefused as e:
                self.journal.record("request", what=cmd, which=which, result="refused", detail=str(e), **extra)
                return {"ok": False, "error": str(e)}
            if cmd == "standby":
                self.standby_planned = "planned" not in extra
            self.journal.record("request", what=cmd, which=which, result="ok", **extra)
            self.kick()
            return {"ok": True}
        return {"ok": False, "error": f"control: unknown command {cmd!r}"}


    def _unwatch(self, listener: Callable[[dict], None]) -> None:
        try:
            self.journal.listeners.remove(listener)      # a list op: safe from any thread
        except ValueError:
            pass


def open_control_socket(run_dir: str, commands: ControlCommands,
                        loop: asyncio.AbstractEventLoop) -> ControlServer:
    """Serve `commands` on RUN_DIR/hbd.sock; each request is answered on `loop`'s thread."""

    def on_request(req: dict[str, Any]) -> Reply | Stream:      # the server's connection thread
        answer: concurrent.futures.Future[Reply | Stream] = concurrent.futures.Future()

        async def finish(coro: Coroutine[Any, Any, Reply]) -> None:
            try:
                answer.set_result(await coro)
            except BaseException as e:      # handed to the waiting thread, which re-raises it
                answer.set_exception(e)

        def run() -> None:
            try:
                result = commands.handle_request(req)
                if asyncio.iscoroutine(result):
                    loop.create_task(finish(result))
                    return
                answer.set_result(result)
            except BaseException as e:      # handed to the waiting thread, which re-raises it
                answer.set_exception(e)
        loop.call_soon_threadsafe(run)
        try:
            return answer.result(ANSWER_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            return {"ok": False, "error": f"control: hbd did not answer within {ANSWER_TIMEOUT_S:g} s"}

    return ControlServer(os.path.join(run_dir, SOCKET_NAME), on_request, name="hbd")
