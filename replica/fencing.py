# SPDX-License-Identifier: GPL-2.0-or-later
"""Resource-level fencing, as DRBD 8.4's `fencing` option and `fence-peer` handler.

    fencing dont-care             nothing happens when the peer goes away (the default)
    fencing resource-only         a Primary that loses its peer, or a Secondary about to become
                                  Primary without a connection, calls `fence-peer` and acts on its
                                  exit code; promotion waits for the peer's disk to be Outdated
    fencing resource-and-stonith  the same, and a Primary's I/O is suspended while the handler
                                  runs (resumed when it succeeds; `resume-io` thaws it by hand)

The exit-code contract (UG 8.4 "peer fencing interface", drbd_nl.c conn_try_outdate_peer), with
DRBD's own words for each (its kernel log line "fence-peer helper returned N (TEXT)")::

    3  peer is inconsistent or worse        peer disk := Inconsistent
    4  peer was fenced                      peer disk := Outdated (the peer outdated itself)
    5  peer is unreachable, assumed to be dead    peer disk := Outdated, if our disk is UpToDate
       (else "peer unreachable, doing nothing since disk != UpToDate")
    6  peer is active                       we outdate our own disk (a Secondary; "Peer is
                                            primary, outdating myself."); promotion is refused
    7  peer was stonithed                   peer disk := Outdated (DRBD logs an error unless
                                            fencing is resource-and-stonith, and goes on)
    *  fence-peer helper broken, returned N     nothing changes: promotion stays refused and
                                            suspended I/O stays suspended

`outcome(state, code, policy)` is that table, pure. `PeerFencing` (one per ResourceRuntime) runs
the handler and applies the outcome through the runtime; the cluster manager can spare it the
handler (`peer_dead`: hbd declared the peer dead, or STONITH reset it), which is what makes a
heartbeat failover promote at once instead of waiting for the replication ping timeout.
`unfence-peer` runs when a resync (or a handshake) made a fenced peer's disk UpToDate again.
"""
import enum
import logging
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from replica.states import DiskState, Role

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime
    from replica.roles import ResourceState

log = logging.getLogger("replicad.resource")

POLICIES = ("dont-care", "resource-only", "resource-and-stonith")


class FenceCode(enum.IntEnum):
    """fence-peer's exit codes (DRBD's P_* in drbd_nl.c)."""

    PEER_INCONSISTENT = 3
    PEER_OUTDATED = 4
    PEER_DOWN = 5
    PEER_PRIMARY = 6
    PEER_STONITHED = 7


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one fence-peer result does: the new state, DRBD's words, and whether fencing
    succeeded (promotion may go on, suspended I/O may resume)."""

    state: "ResourceState"
    text: str
    fenced: bool
    error: str = ""          # logged as an error beside the result (DRBD's drbd_err lines)


def needs_fencing(s: "ResourceState") -> bool:
    """The guard of roles._promote: fencing on, no connection, the peer's disk not known to be
    Outdated or worse."""
    return s.fencing and not s.is_connected and s.peer_disk.rank >= DiskState.DUnknown.rank


def outcome(s: "ResourceState", code: int, policy: str) -> Outcome:
    """Apply fence-peer's exit `code` to `s` as DRBD 8.4's conn_try_outdate_peer does."""
    if code == FenceCode.PEER_INCONSISTENT:
        return Outcome(replace(s, peer_disk=DiskState.Inconsistent), "peer is inconsistent or worse",
                       True)
    if code == FenceCode.PEER_OUTDATED:
        return Outcome(replace(s, peer_disk=DiskState.Outdated), "peer was fenced", True)
    if code == FenceCode.PEER_DOWN:
        if s.disk is DiskState.UpToDate:
            return Outcome(replace(s, peer_disk=DiskState.Outdated),
                           "peer is unreachable, assumed to be dead", True)
        return Outcome(s, "peer unreachable, doing nothing since disk != UpToDate", False)
    if code == FenceCode.PEER_PRIMARY:
        if s.role is Role.Primary or s.disk.rank < DiskState.Outdated.rank:
            return Outcome(s, "peer is active", False)
        return Outcome(replace(s, disk=DiskState.Outdated), "peer is active", False,
                       "Peer is primary, outdating myself.")
    if code == FenceCode.PEER_STONITHED:
        err = "" if policy == "resource-and-stonith" else "fence-peer() = 7 && fencing != Stonith !!!"
        return Outcome(replace(s, peer_disk=DiskState.Outdated), "peer was stonithed", True, err)
    return Outcome(s, f"fence-peer helper broken, returned {code}", False,
                   f"fence-peer helper broken, returned {code}")


class PeerFencing:
    """Fencing for one resource: runs `fence-peer`, suspends/resumes I/O, `unfence-peer`.

    Called under the runtime's `lock` (the handler of a Primary that lost its peer runs in its
    own thread and takes the lock to apply its result)."""

    def __init__(self, rt: "ResourceRuntime"):
        self.rt = rt
        self.name = rt.name
        self.policy = rt.resource.disk.fencing
        self.suspended = False
        self.fenced_peer = False         # we outdated/fenced the peer: unfence-peer when it is back
        self._running: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.policy != "dont-care"

    # --- the handler -----------------------------------------------------------------------

    def fence_peer(self, why: str) -> bool:
        """Run `fence-peer` now and apply its result; True when the peer is fenced."""
        rt = self.rt
        if not rt.resource.handlers.get("fence-peer"):
            log.error("%s: fencing %s: no fence-peer handler configured (%s): the peer's disk "
                      "stays %s", self.name, self.policy, why, rt.state.peer_disk)
            return False
        code = rt.call_handler("fence-peer")
        return self.apply(code if code is not None else -1, why)

    def apply(self, code: int, why: str) -> bool:
        rt = self.rt
        res = outcome(rt.state, code, self.policy)
        if res.error:
            log.error("%s: %s", self.name, res.error)
        log.info("%s: fence-peer helper returned %d (%s)", self.name, code, res.text)
        rt.set_state(res.state, f"fence-peer: {res.text}")
        if res.fenced:
            self.fenced_peer = True
            self.resume_io("fence-peer succeeded")
        elif self.suspended:
            log.error("%s: fencing failed: I/O stays suspended (`replicactl resume-io %s` "
                      "resumes it)", self.name, self.name)
        return res.fenced

    # --- events from the runtime -------------------------------------------------------------

    def peer_lost(self) -> None:
        """The connection is gone (not by `disconnect`): a Primary fences its peer, in the
        background; under resource-and-stonith its I/O waits meanwhile."""
        rt = self.rt
        s = rt.state
        if not self.enabled or s.role is not Role.Primary or not (s.peer_disk.rank >=
                                                                   DiskState.DUnknown.rank):
            return
        if self.policy == "resource-and-stonith":
            self.suspend_io("fencing the peer")
        if self._running is not None and self._running.is_alive():
            return

        def run() -> None:
            with rt.lock:
                if rt.state.is_connected or not needs_fencing(rt.state):
                    self.resume_io("peer back or already fenced")
                    return
                self.fence_peer("connection lost")
        self._running = threading.Thread(target=run, name=f"fence-peer[{self.name}]", daemon=True)
        self._running.start()

    def peer_dead(self, fenced: bool) -> None:
        """The cluster manager says the peer node is dead (and, `fenced`, that STONITH reset
        it): the same answers a fence-peer handler would have given (7, else 5)."""
        rt = self.rt
        if rt.state.is_connected:
            rt.conn.lost("the cluster manager declared the peer node dead" +
                         (" and fenced it" if fenced else ""))
        if not self.enabled or rt.state.peer_disk.rank < DiskState.DUnknown.rank:
            return                   # dont-care needs no answer; Outdated/Inconsistent is known
        code = FenceCode.PEER_STONITHED if fenced else FenceCode.PEER_DOWN
        res = outcome(rt.state, code, "resource-and-stonith" if fenced else self.policy)
        log.info("%s: cluster manager: peer %s is dead%s: %s", self.name,
                 rt.peer_host.name if rt.peer_host else "?", ", fenced by STONITH" if fenced else "",
                 res.text)
        rt.set_state(res.state, "peer node dead" + (" and fenced" if fenced else ""))
        if res.fenced:
            self.fenced_peer = True
            self.resume_io("the peer is dead")

    def state_changed(self, old: "ResourceState", new: "ResourceState") -> None:
        """unfence-peer: the peer's disk is UpToDate again after we fenced it (a resync finished,
        or a handshake found it current)."""
        if not self.enabled or not new.is_connected or new.peer_disk is not DiskState.UpToDate:
            return
        if old.peer_disk is DiskState.UpToDate and not (old.repl.is_sync_source
                                                        and not new.repl.is_sync_source):
            return
        if self.fenced_peer or old.repl.is_sync_source or old.peer_disk is DiskState.Outdated:
            self.fenced_peer = False
            self.rt.run_handler("unfence-peer")

    # --- suspend-io / resume-io --------------------------------------------------------------

    def suspend_io(self, why: str) -> None:
        engine = self.rt.disk.engine
        if engine is None:
            return
        engine.set_suspended(True)      # also after a down/up, where a new engine runs
        if not self.suspended:
            log.warning("%s: suspend-io: new requests wait (%s)", self.name, why)
            self.suspended = True
            self.rt.events.suspended()

    def resume_io(self, why: str) -> None:
        engine = self.rt.disk.engine
        if not self.suspended:
            return
        if engine is not None:
            engine.set_suspended(False)
        self.suspended = False
        log.info("%s: resume-io: requests go on (%s)", self.name, why)
        self.rt.events.suspended()
