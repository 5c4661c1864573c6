# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's side of replicated-disk fencing: what DRBD's crm-fence-peer.sh and dopd do for Pacemaker
and Heartbeat 2, for hbd and replicad.

hbd knows whether the peer node is alive, whether it was declared dead, and whether STONITH
reset it since; it can reach the peer's hbd over the heartbeat links, which stay up when the
replication link breaks. Three duties::

    fence-peer (hbctl/helper -> hbd.sock {"cmd": "fence-peer", "node": PEER, "resource": RES})
        peer dead and reset by STONITH since  -> code 7 (peer was stonithed)
        peer dead                             -> code 5 (peer unreachable, assumed dead)
        peer alive: relay "replica-outdate" {res, dest} to its hbd, which runs
            `replicactl outdate RES` there and answers "replica-outdate-reply" {rc}:
            outdated -> 4; already Inconsistent (replicactl exit 5) -> 3;
            refused and the peer is Primary -> 6; no answer in RELAY_TIMEOUT_S, or the
            peer's replicad cannot say -> 5
    unfence-peer ({"cmd": "unfence-peer", "node": PEER}): forget the STONITH record, journal it
    peer-dead: when a node is declared dead (not a clean shutdone) and after STONITH reset it,
        tell the local replicad (its control socket, $REPLICA_RUN_DIR/replicad.sock, the
        `replicactl peer-dead all [--fenced]` request) before any group starts, so `replicadisk
        start` promotes at once instead of waiting out replicad's own ping timeout.

The exit codes are DRBD's fence-peer contract (replica.fencing). Nothing here blocks the loop:
subprocesses are asyncio's, socket requests run in a thread.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from hacommon.control import BadReply, ControlError, NotListening, exchange

log = logging.getLogger("hbd")

RELAY_TIMEOUT_S = 5.0        # the peer's hbd answers in well under a second unless it is gone
NOTIFY_TIMEOUT_S = 2.0
REPLICA_DEFAULT_RUN_DIR = "/run/replica"   # replica.locations.DEFAULT_RUN_DIR
MSG_OUTDATE = "replica-outdate"
MSG_OUTDATE_REPLY = "replica-outdate-reply"

PEER_INCONSISTENT, PEER_OUTDATED, PEER_DOWN, PEER_PRIMARY, PEER_STONITHED = 3, 4, 5, 6, 7
CODE_TEXT = {PEER_INCONSISTENT: "peer is inconsistent or worse", PEER_OUTDATED: "peer was fenced",
             PEER_DOWN: "peer is unreachable, assumed to be dead", PEER_PRIMARY: "peer is active",
             PEER_STONITHED: "peer was stonithed"}


def replicad_socket(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    return os.path.join(env.get("REPLICA_RUN_DIR") or REPLICA_DEFAULT_RUN_DIR, "replicad.sock")


def code_for_outdate(rc: int, role_line: str) -> int:
    """The fence-peer code for the peer's `replicactl outdate` exit code (and, when refused, the
    first line of its `replicactl role`): dopd's mapping of drbdsetup outdate."""
    if rc == 0:
        return PEER_OUTDATED
    if rc == 5:
        return PEER_INCONSISTENT
    if role_line.startswith("Primary"):
        return PEER_PRIMARY
    return PEER_DOWN


class DiskFencing:
    """Owned by the daemon; runs on its event loop (module docstring)."""

    def __init__(self, *, node: str, node_status: Callable[[str], str],
                 send_message: Callable[[str, dict[str, str]], None],
                 journal: Callable[..., object], env: dict[str, str]):
        self.node = node
        self.node_status = node_status
        self.send_message = send_message
        self.journal = journal
        self.env = env
        self.stonithed: set[str] = set()          # reset by STONITH since they were declared dead
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self.notice: asyncio.Task[None] | None = None   # peer-dead to replicad, awaited before starts

    # --- membership and STONITH --------------------------------------------------------------

    def node_up(self, node: str) -> None:
        self.stonithed.discard(node)

    def node_dead(self, node: str, *, graceful: bool) -> None:
        if not graceful:        # a clean shutdone demoted its disks itself and said so
            self._notify(node, fenced=False)

    def node_fenced(self, node: str) -> None:
        self.stonithed.add(node)
        self._notify(node, fenced=True)

    def _notify(self, node: str, fenced: bool) -> None:
        path = replicad_socket(self.env)
        if not os.path.exists(path):
            return
        req = {"cmd": "peer-dead", "resource": "all", "peer": node, "fenced": fenced}

        def call() -> dict[str, Any]:
            return exchange(path, req, NOTIFY_TIMEOUT_S)

        async def run(previous: asyncio.Task[None] | None) -> None:
            if previous is not None:
                await previous
            try:
                reply = await asyncio.to_thread(call)
            except (NotListening, BadReply, ControlError, OSError) as e:
                log.warning("replicad: peer-dead %s: %s", node, e)
                return
            if reply.get("ok"):
                done = " ".join(reply.get("resources", [])) or "no resource in use"
                log.info("replicad: told that node %s is dead%s: %s", node,
                         " and fenced" if fenced else "", done)
                self.journal("fencing", peer=node, state="peer-dead", fenced=fenced, resources=done)
            else:
                log.warning("replicad: peer-dead %s: %s", node, reply.get("error"))
        self.notice = asyncio.get_running_loop().create_task(run(self.notice))

    async def wait_notified(self) -> None:
        if self.notice is not None:
            await self.notice

    # --- fence-peer / unfence-peer (control socket) -----------------------------------------

    async def fence_peer(self, peer: str, resource: str) -> dict[str, Any]:
        peer = peer.lower()
        status = self.node_status(peer)      # LocalProtocolError for a node not in ha.cf
        if peer in self.stonithed:
            code = PEER_STONITHED
        elif status == "dead":
            code = PEER_DOWN
        else:
            code = await self._relay_outdate(peer, resource)
        log.info("fence-peer %s on %s: %d (%s)", resource, peer, code, CODE_TEXT[code])
        self.journal("fencing", peer=peer, resource=resource, code=code, state=CODE_TEXT[code])
        return {"ok": True, "code": code, "text": CODE_TEXT[code]}

    def unfence_peer(self, peer: str, resource: str) -> dict[str, Any]:
        peer = peer.lower()
        self.stonithed.discard(peer)
        log.info("unfence-peer %s on %s: the peer's disk is UpToDate again", resource, peer)
        self.journal("fencing", peer=peer, resource=resource, state="unfenced")
        return {"ok": True}

    async def _relay_outdate(self, peer: str, resource: str) -> int:
        reqid = f"{self.node}-{os.getpid()}-{next(self._ids)}"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[reqid] = fut
        self.send_message(MSG_OUTDATE, {"dest": peer, "res": resource, "reqid": reqid})
        try:
            return await asyncio.wait_for(fut, RELAY_TIMEOUT_S)
        except TimeoutError:
            log.warning("fence-peer %s: node %s did not answer within %g s", resource, peer,
                        RELAY_TIMEOUT_S)
            return PEER_DOWN
        finally:
            self._waiting.pop(reqid, None)

    # --- messages from the peer's hbd ----------------------------------------------------------

    def receive_message(self, node: str, msg_type: str, fields: dict[str, str]) -> bool:
        """Handle our two message types (True), leave the others to the groups (False)."""
        if msg_type not in (MSG_OUTDATE, MSG_OUTDATE_REPLY):
            return False
        if fields.get("dest", "").lower() != self.node:
            return True
        if msg_type == MSG_OUTDATE_REPLY:
            fut = self._waiting.get(fields.get("reqid", ""))
            if fut is not None and not fut.done():
                try:
                    fut.set_result(int(fields.get("code", PEER_DOWN)))
                except ValueError:
                    fut.set_result(PEER_DOWN)
            return True
        res = fields.get("res", "")
        asyncio.get_running_loop().create_task(self._outdate_here(node, res, fields.get("reqid", "")))
        return True

    async def _outdate_here(self, origin: str, resource: str, reqid: str) -> None:
        if not resource or resource.startswith("-"):
            code = PEER_DOWN
        else:
            rc, err = await self._replicactl("outdate", resource)
            role = ""
            if rc not in (0, 5):
                rrc, role = await self._replicactl("role", resource, stdout=True)
            code = code_for_outdate(rc, role.strip())
            log.info("node %s asked to outdate %s: replicactl outdate exit %d%s: answering %d (%s)",
                     origin, resource, rc, f" ({err.strip()})" if err.strip() else "", code,
                     CODE_TEXT[code])
            self.journal("fencing", peer=origin, resource=resource, state="outdate requested",
                         code=code)
        self.send_message(MSG_OUTDATE_REPLY, {"dest": origin, "reqid": reqid, "code": str(code)})

    async def _replicactl(self, *args: str, stdout: bool = False) -> tuple[int, str]:
        prog = self.env.get("REPLICACTL") or "replicactl"
        try:
            proc = await asyncio.create_subprocess_exec(
                *prog.split(), *args, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            return 1, f"{prog}: {e.strerror}"
        try:
            out, err = await asyncio.wait_for(proc.communicate(), RELAY_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 1, f"{prog} {' '.join(args)}: no answer within {RELAY_TIMEOUT_S:g} s"
        return proc.returncode or 0, (out if stdout else err).decode(errors="replace")
