# SPDX-License-Identifier: GPL-2.0-or-later
"""Resource-group ownership: who should hold which haresources group, and when.

This module is the pure decision half of hbd's resource manager (Heartbeat R1's
``hb_resource.c`` + ``ResourceManager``), written sans-I/O: inputs are method
calls with ``now`` (monotonic seconds) passed in, outputs are actions pulled with
``next_action()``.  It never runs a script, sends a packet or reads a clock.
It owns the decision table (membership, fencing, timers, takeover, failback,
shutdown) and the start/stop bookkeeping; what each peer message means and the
standby exchange live in hbd.group_negotiation (``PeerNegotiation``, held as
``self.negotiation``; it calls back only through the public methods of the
``GroupOwner`` protocol), the group states and the operations in flight in
hbd.group_table (``GroupTable``, held as ``self.table``: start/stop bookkeeping
and the callbacks waiting for it), the states and actions in hbd.group_actions
(re-exported).

Inputs (the daemon calls these)::

    node_up(node)  node_dead(node)  node_shutdown(node)      <- membership / shutdone
    receive_message(node, msg_type, fields)                   <- starting, resource,
                                                                  ask_resources, hb_takeover,
                                                                  ip-request, ip-request-resp
    request_standby(which)  request_takeover(which)           <- hbctl
    group_started(key, ok)  group_stopped(key, ok)            <- resource runner
    fence_done(node, ok)    shutdown()    handle_timer(now)

Outputs (``next_action()``): StartGroup, StopGroup, SendMessage, FenceNode,
GroupChanged, Notice, Reannounce, ShutdownComplete.  The daemon runs StartGroup/StopGroup
one after the other in the order given and reports each result back.

Lifecycle of the local node::

    INIT --(peer's resource report | initdead expired)--> STABLE --shutdown()--> SHUTTING_DOWN --> DOWN

Rules (Heartbeat 3.0 semantics, heartbeat-reference.md 1.2, 1.6, 1.7):

* A group's preferred node is the first field of its haresources line.  Groups
  start left to right and stop right to left (the runner does that).
* On start-up a node announces ``starting``; the peer answers ``resource
  rsc_hold=...``.  A node acquires its local groups the peer does not hold.
* ``auto_failback on``: the holder of foreign groups hands them back with the
  standby protocol once their preferred node is up and stable.  ``off``: they
  stay.  ``legacy``: the returning node asks for each group with ``ip-request``
  and the holder gives it up and answers ``ip-request-resp``.  A returning real
  heartbeat that saw no active peer takes its group unasked and says so with an
  ``ip-request-resp`` addressed to itself: we give way at once.  Only if neither
  comes within ``LEGACY_ASK_WAIT_S`` do we release our copy anyway.
* Peer death: fence first when STONITH is configured (retry every
  ``FENCE_RETRY_S`` until it succeeds; never take over unfenced), then start
  every group not running here, then report ``resource ... info=mach_down``.
  ``shutdone`` from the peer means it released everything: take over at once,
  without fencing.
* Standby is Heartbeat's three-phase ``ask_resources`` exchange (me / other /
  done): the requester stops first, then the peer starts, so the outage is one
  stop plus one start.  ``hb_takeover`` asks the peer to run standby for the
  complementary set.
* A group whose start failed here is offered to the peer (standby of just
  that group) after ``FAILED_START_HANDOFF_S``, as ResourceManager's
  background ``hb_standby`` does (auto_failback on/off only).
* Partition heal: when both nodes report holding a group, the node that is not
  the group's preferred node stops it (both apply the same rule, so exactly
  one side gives way).
* Two nodes only (Heartbeat R1 haresources mode); more nodes are refused.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hacommon.errors import ConfigError

from .group_actions import (
    COMPLEMENT,
    HOLD_VALUES,
    Action,
    FenceNode,
    GroupChanged,
    GroupState,
    Notice,
    Phase,
    Reannounce,
    SendMessage,
    ShutdownComplete,
    StartGroup,
    StopGroup,
)
from .group_negotiation import STANDBY_INIT_TIMEOUT_S, STANDBY_TOTAL_TIMEOUT_S, PeerNegotiation, Standby
from .group_table import GroupSpec, GroupTable

__all__ = ["GroupManager", "GroupState", "Phase", "Action", "StartGroup", "StopGroup", "SendMessage",
           "FenceNode", "GroupChanged", "GroupSpec", "Notice", "ShutdownComplete", "Reannounce", "HOLD_VALUES",
           "COMPLEMENT", "FENCE_RETRY_S", "STANDBY_INIT_TIMEOUT_S", "STANDBY_TOTAL_TIMEOUT_S",
           "FAILBACK_RETRY_S", "FAILED_START_HANDOFF_S", "LEGACY_ASK_WAIT_S", "INITIAL_REASON"]

FENCE_RETRY_S = 5.0          # hb_resource.c: failed reset retried every 5 s
FAILBACK_RETRY_S = 1.0       # auto_failback: retried every 1 s until both sides are stable
FAILED_START_HANDOFF_S = 30.0  # ResourceManager: "sleep 30; hb_standby" after a failed start
LEGACY_ASK_WAIT_S = 5.0      # legacy: a returning node asks for its groups or takes them unasked
# the reason of the starts after initdead expired without ever hearing the peer (a takeover's
# reason is "takeover from NODE": hbd.metrics counts those as failovers, not these)
INITIAL_REASON = "initial acquisition after initdead"


@dataclass(slots=True)
class _Fence:
    node: str
    running: bool
    retry_at: float | None = None
    attempts: int = 0
    initial: bool = False       # the peer was never heard: the takeover is the initial acquisition



class GroupManager:
    """Two-node haresources ownership machine (see the module docstring)."""

    def __init__(self, node: str, nodes: Iterable[str], groups: Iterable[GroupSpec], *, auto_failback: str,
                 stonith_configured: bool, initdead_s: float, now: float) -> None:
        self.node = node
        names = tuple(dict.fromkeys(nodes))
        peers = tuple(n for n in names if n != node)
        if node not in names:
            raise ConfigError(f"groups: node {node!r} is not listed in ha.cf: nodes={' '.join(names)}")
        if len(peers) > 1:
            raise ConfigError(f"groups: haresources mode supports two nodes: nodes={' '.join(names)}")
        if auto_failback not in ("on", "off", "legacy"):
            raise ConfigError(f"groups: auto_failback must be on, off or legacy: got {auto_failback!r}")
        self.peer: str | None = peers[0] if peers else None
        self.table = GroupTable(groups, self._emit, self._start_failed)
        self.auto_failback = auto_failback
        self.stonith_configured = stonith_configured
        self.phase = Phase.INIT
        self.peer_status = "unknown"            # unknown | up | dead
        self.peer_hold: frozenset[str] | None = None   # keys the peer reported holding
        self.peer_stable = False
        self.fence: _Fence | None = None
        self._initdead_at = now + initdead_s
        self._failback_at: float | None = None
        self._handoff_at: float | None = None
        self._got_by_standby: set[str] = set()   # never hand these back after a failed start
        self._given_away: set[str] = set()       # released by standby: not adopted back as orphans
        self._failback_armed = False             # auto_failback acts when the peer (re)joins only
        self._legacy_release_at: float | None = None
        self._actions: deque[Action] = deque()
        self._now = now
        self.negotiation = PeerNegotiation(self)
        for g in self.groups:
            if g.node not in names:
                self.note("warn", f"group {g.name!r}: preferred node {g.node!r} is not in ha.cf; "
                                   f"it is started only by takeover")
        if self.peer is None:
            self.note("info", "no peer in ha.cf: acquiring every group")
            self._become_stable_after(self.start_keys(self._keys(lambda g: True), "single node"))

    # --- queries --------------------------------------------------------------------------

    @property
    def groups(self) -> tuple[GroupSpec, ...]:
        return self.table.groups

    @property
    def by_key(self) -> dict[str, GroupSpec]:
        return self.table.by_key

    @property
    def state(self) -> dict[str, GroupState]:
        return self.table.state

    @property
    def standby(self) -> Standby | None:
        """The standby exchange in progress, if any (owned by the negotiation)."""
        return self.negotiation.standby

    def is_local(self, key: str) -> bool:
        return self.by_key[key].node == self.node

    def held_keys(self) -> tuple[str, ...]:
        return self.table.held_keys()

    def rsc_hold(self) -> str:
        """What we hold, in Heartbeat's words (relative to us): none | local | foreign | all."""
        held = [k for k, s in self.state.items() if s is GroupState.STARTED]
        local = any(self.is_local(k) for k in held)
        foreign = any(not self.is_local(k) for k in held)
        return {(False, False): "none", (True, False): "local",
                (False, True): "foreign", (True, True): "all"}[(local, foreign)]

    def rscstatus(self) -> str:
        """cl_status rscstatus: the hold set, or 'transition' while anything moves."""
        if self._busy() or self.negotiation.standby is not None or self.phase is not Phase.STABLE:
            return "transition"
        return self.rsc_hold()

    def is_stable(self) -> bool:
        return self.phase is Phase.STABLE and not self._busy() and self.negotiation.standby is None

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        timers = []
        if self.phase is Phase.INIT and self.peer is not None and self._initdead_at != math.inf:
            timers.append(self._initdead_at)
        if self.fence is not None and not self.fence.running and self.fence.retry_at is not None:
            timers.append(self.fence.retry_at)
        if self.negotiation.standby is not None:
            timers.append(self.negotiation.standby.deadline)
        if self._failback_at is not None:
            timers.append(self._failback_at)
        if self._handoff_at is not None:
            timers.append(self._handoff_at)
        if self._legacy_release_at is not None:
            timers.append(self._legacy_release_at)
        return min(timers) if timers else None

    def snapshot(self) -> dict[str, Any]:
        sb = self.negotiation.standby
        return {
            "node": self.node, "peer": self.peer, "phase": self.phase.value,
            "peer_status": self.peer_status, "auto_failback": self.auto_failback,
            "rscstatus": self.rscstatus(),
            "peer_hold": sorted(self.peer_hold) if self.peer_hold is not None else None,
            "standby": None if sb is None else {"role": sb.role, "which": sb.which, "keys": list(sb.keys)},
            "fencing": None if self.fence is None else {"node": self.fence.node, "attempts": self.fence.attempts},
            "groups": [{"key": g.name, "node": g.node, "state": self.state[g.name].value}
                       for g in self.groups],
        }

    # --- inputs: membership ----------------------------------------------------------------

    def node_up(self, node: str, now: float) -> None:
        self._now = now
        if node != self.peer or self.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            return
        was = self.peer_status
        self.peer_status = "up"
        self.peer_hold = None
        self.peer_stable = False
        if self.fence is not None:
            self.note("warn", f"node {node!r} came back before it was fenced: takeover cancelled")
            self.fence = None
        self._failback_armed = True
        if was == "dead":
            self.note("info", f"node {node!r} returned: exchanging resource reports")
        self.send("starting", {})
        self.send_report("node_up")
        if self.auto_failback == "legacy" and self.phase is Phase.INIT:
            self._acquire_local("req_our_resources()")
        elif self.auto_failback == "legacy" and self.peer_groups_held():
            # heartbeat's legacy req_our_resources always acquires the node's own groups: by asking
            # (ip-request, answered below) or, when it saw no active peer yet, by taking them unasked
            self._legacy_release_at = now + LEGACY_ASK_WAIT_S

    def node_dead(self, node: str, now: float, *, clean: bool = False) -> None:
        """The peer died (deadtime) or, with clean=True, announced shutdone."""
        self._now = now
        if node != self.peer or self.peer_status == "dead":
            return
        # never heard since we started: initdead's verdict, and what follows is the initial
        # acquisition of every group, not a failover (nobody ran them here before)
        initial = self.peer_status == "unknown" and not clean
        self.peer_status = "dead"
        self.peer_hold = frozenset()
        self._given_away.clear()
        self._legacy_release_at = None
        self.peer_stable = False
        self._failback_at = None
        if self.negotiation.standby is not None:
            self.note("warn", f"standby request cancelled: node {node!r} is gone")
            self.negotiation.cancel_standby()
        if self.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            return
        if clean:
            self.note("info", f"node {node!r} shut down cleanly (shutdone): taking over at once")
            self._take_over(node, "shutdone")
        elif self.stonith_configured:
            self.note("warn", f"node {node!r} is dead: fencing it before takeover")
            self.fence = _Fence(node=node, running=True, attempts=1, initial=initial)
            self._emit(FenceNode(node))
        else:
            self.note("warn", f"node {node!r} is dead: no STONITH device configured, "
                               f"shared disks are not protected")
            self._take_over(node, "mach_down", initial=initial)

    def node_shutdown(self, node: str, now: float) -> None:
        self.node_dead(node, now, clean=True)

    def fence_done(self, node: str, ok: bool, now: float) -> None:
        self._now = now
        if self.fence is None or self.fence.node != node:
            return
        if ok:
            self.note("info", f"node {node!r} fenced after {self.fence.attempts} attempt(s)")
            initial, self.fence = self.fence.initial, None
            self._take_over(node, "mach_down", initial=initial)
        else:
            self.fence.running = False
            self.fence.retry_at = now + FENCE_RETRY_S
            self.note("crit", f"fencing node {node!r} failed (attempt {self.fence.attempts}): "
                               f"takeover withheld, retrying in {FENCE_RETRY_S:g} s")

    def shutdown(self, now: float) -> None:
        """Clean stop: release every group (reverse order), then tell the peer (shutdone)."""
        self._now = now
        if self.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            return
        self.phase = Phase.SHUTTING_DOWN
        self.negotiation.cancel_standby()
        self.fence = None
        self._failback_at = None
        keys = [g.name for g in reversed(self.groups)
                if self.state[g.name] is not GroupState.STOPPED]
        self.note("info", "shutting down: releasing all resources")
        self.stop_keys(keys, "shutdown")

        def finish() -> None:
            failed = [k for k in keys if self.state[k] is GroupState.FAILED]
            self.phase = Phase.DOWN
            if failed:
                self.note("crit", f"resources failed to stop: {' '.join(failed)}: "
                                   f"not sending shutdone; the peer must fence this node")
                self._emit(ShutdownComplete(clean=False))
                return
            self.send("resource", {"rsc_hold": "none", "rtype": "full", "isstable": "0", "info": "shutdown"})
            self.send("shutdone", {"st": "dead"})
            self._emit(ShutdownComplete(clean=True))
        self.after(finish)

    # --- inputs: peer messages and the administrator (hbd.group_negotiation) --------------

    def receive_message(self, node: str, msg_type: str, fields: Mapping[str, str], now: float) -> None:
        self._now = now
        self.negotiation.receive_message(node, msg_type, fields, now)

    def request_standby(self, which: str, now: float) -> None:
        """hb_standby [all|foreign|local]: give those groups to the peer (StateChangeRefused if not now)."""
        self._now = now
        self.negotiation.request_standby(which, now)

    def request_takeover(self, which: str, now: float) -> None:
        """hb_takeover [all|foreign|local]: ask the peer for those groups (StateChangeRefused if not now)."""
        self._now = now
        self.negotiation.request_takeover(which, now)

    # --- inputs: runner results and timers -------------------------------------------------

    def group_started(self, key: str, ok: bool, now: float) -> None:
        self._op_done(key, ok, GroupState.STARTED, now)

    def group_stopped(self, key: str, ok: bool, now: float) -> None:
        self._op_done(key, ok, GroupState.STOPPED, now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.phase is Phase.INIT and self.peer is not None and now >= self._initdead_at:
            self._initdead_at = math.inf     # once: INIT lasts until the takeover it starts ends
            if self.peer_status != "up":
                self.note("warn", f"initdead expired without hearing {self.peer!r}")
                self.node_dead(self.peer, now)
            else:
                self.note("warn", f"initdead expired without a resource report from {self.peer!r}: "
                                   f"acquiring local resources")
                self._acquire_local("req_our_resources()")
        if self.fence is not None and not self.fence.running and self.fence.retry_at is not None \
                and now >= self.fence.retry_at:
            self.fence.running = True
            self.fence.retry_at = None
            self.fence.attempts += 1
            self._emit(FenceNode(self.fence.node))
        sb = self.negotiation.standby
        if sb is not None and now >= sb.deadline:
            self.note("warn", f"standby request cancelled: no answer from {self.peer!r}")
            self.negotiation.cancel_standby()
            if self.auto_failback == "on" and self.negotiation.standby is None and self.peer_status == "up":
                self._failback_armed = True
                self._failback_at = now + FAILBACK_RETRY_S
        if self._failback_at is not None and now >= self._failback_at:
            self._failback_at = None
            self._maybe_auto_failback()
        if self._handoff_at is not None and now >= self._handoff_at:
            self._handoff_at = None
            self._maybe_hand_off_failed()
        if self._legacy_release_at is not None and now >= self._legacy_release_at:
            self._legacy_release_at = None
            keys = [k for k in self.peer_groups_held() if self.state[k] is GroupState.STARTED]
            if keys and self.peer_status == "up" and self.phase is Phase.STABLE:
                self.note("warn", f"node {self.peer!r} did not ask for {' '.join(keys)}: it took them "
                                   f"itself (legacy): releasing our copy")
                self.stop_keys(keys, "peer acquired its own group")
                self.after(lambda: self.send_report("partition"))

    def replace_groups(self, groups: Iterable[GroupSpec]) -> None:
        """A reload's new haresources table (hbd.reload): kept keys keep their state, new keys
        start stopped, gone keys are forgotten.  The caller has stopped every gone or changed
        group first and calls this with no operation queued on them."""
        self.table.replace(groups)
        self._got_by_standby &= set(self.by_key)
        self._given_away &= set(self.by_key)
        if self.peer_hold is not None:
            self.peer_hold = self.peer_hold & frozenset(self.by_key)

    # --- GroupOwner: what hbd.group_negotiation asks of and tells the manager ---------------

    def has_group(self, key: str) -> bool:
        return key in self.by_key

    def preferred_node(self, key: str) -> str:
        return self.by_key[key].node

    def group_state(self, key: str) -> GroupState:
        return self.state[key]

    def is_fencing(self) -> bool:
        return self.fence is not None

    def peer_groups_held(self) -> list[str]:
        """The groups we hold whose preferred node is the peer."""
        return [k for k in self.held_keys() if self.by_key[k].node == self.peer]

    def peer_restarted(self) -> None:
        """The peer said ``starting``: forget its hold set; failback may act again."""
        self._failback_armed = True
        self.peer_hold = None
        self.peer_stable = False

    def peer_reported(self, hold: frozenset[str], stable: bool) -> None:
        """The peer's ``resource`` report: it holds these groups, stable or not."""
        if self.peer_status == "unknown":
            self.peer_status = "up"
        self.peer_hold = hold
        self.peer_stable = stable

    def continue_after_report(self) -> None:
        """After a peer report: acquire our groups (start-up), or adopt orphans and fail back."""
        if self.phase is Phase.INIT:
            self._acquire_local("req_our_resources()")
        elif self.phase is Phase.STABLE:
            self._adopt_orphans()
            self._maybe_auto_failback()

    def standby_taken(self, keys: Iterable[str]) -> None:
        """The peer released these groups to us by standby: never hand them back after a failed start."""
        self._got_by_standby |= set(keys)
        self._given_away -= set(keys)

    def standby_given(self, keys: Iterable[str]) -> None:
        """We released these groups to the peer by standby: it holds them, do not adopt them back."""
        self.peer_hold = (self.peer_hold or frozenset()) | frozenset(keys)
        self._given_away |= set(keys)

    def peer_released(self, key: str) -> None:
        """The peer gave this group up (legacy ip-request-resp)."""
        if self.peer_hold is not None:
            self.peer_hold = self.peer_hold - {key}

    def cancel_legacy_release(self) -> None:
        """The peer asked for or took its groups itself: the legacy fallback timer has no work left."""
        if self._legacy_release_at is not None and not self.peer_groups_held():
            self._legacy_release_at = None

    def reannounce(self, key: str) -> None:
        self._emit(Reannounce(key))

    # --- internals -------------------------------------------------------------------------

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def note(self, level: str, text: str) -> None:
        self._emit(Notice(level, text))

    def send(self, msg_type: str, fields: Mapping[str, str]) -> None:
        if self.peer is not None:
            self._emit(SendMessage(msg_type, dict(fields)))

    def send_report(self, info: str) -> None:
        self.send("resource", {"rsc_hold": self.rsc_hold(), "rtype": "full",
                                "isstable": "1" if self.is_stable() else "0", "info": info})

    def _keys(self, pred: Callable[[GroupSpec], bool]) -> list[str]:
        return self.table.keys(pred)

    def keys_for_hold(self, hold: str, relative_to: str) -> list[str]:
        return self.table.keys_for_hold(hold, relative_to)

    def start_keys(self, keys: Iterable[str], reason: str) -> bool:
        return self.table.start_keys(keys, reason)

    def stop_keys(self, keys: Iterable[str], reason: str) -> None:
        self.table.stop_keys(keys, reason)

    def _busy(self) -> bool:
        return self.table.busy()

    def after(self, fn: Callable[[], None]) -> None:
        """Run fn once no group operation is queued (now, if none is)."""
        self.table.after(fn)

    def _op_done(self, key: str, ok: bool, target: GroupState, now: float) -> None:
        self._now = now
        self.table.complete(key, ok, target)

    def _start_failed(self, key: str) -> None:
        """A start failed here: offer the group to the peer later (not in legacy, not while stopping)."""
        if self.auto_failback != "legacy" and self.phase is not Phase.SHUTTING_DOWN:
            self._handoff_at = self._now + FAILED_START_HANDOFF_S

    def _become_stable_after(self, started: bool, info: str = "req_our_resources()") -> None:
        def finish() -> None:
            if self.phase is Phase.INIT:
                self.phase = Phase.STABLE
            if self.phase is Phase.STABLE:
                self.send_report(info)
                self._maybe_auto_failback()
        self.after(finish)

    def _acquire_local(self, info: str) -> None:
        """nice_failback: take our groups the peer does not hold.  legacy (heartbeat's
        req_our_resources): with the peer up, ask it for every one (ip-request) and start each on
        its ip-request-resp; without a peer, just take them."""
        held_by_peer = self.peer_hold or frozenset()
        mine = self._keys(lambda g: g.node == self.node and self.state[g.name] is GroupState.STOPPED)
        if self.auto_failback == "legacy" and self.peer_status == "up":
            for k in mine:
                self.note("info", f"asking {self.peer!r} for group {k!r} (legacy failback)")
                self.send("ip-request", {"ipaddr": k})
            self._become_stable_after(False, info)
            return
        free = [k for k in mine if k not in held_by_peer]
        self._become_stable_after(self.start_keys(free, "local group, not held by peer"), info)

    def _adopt_orphans(self) -> None:
        """Stable, peer up and reporting: start our local groups that nobody holds."""
        peer_hold = self.peer_hold
        if peer_hold is None or not self.peer_stable or self.negotiation.standby is not None or self._busy():
            return
        orphans = self._keys(lambda g: g.node == self.node and g.name not in peer_hold
                             and g.name not in self._given_away and self.state[g.name] is GroupState.STOPPED)
        if orphans:
            self.start_keys(orphans, "local group held by nobody")
            self.after(lambda: self.send_report("req_our_resources()"))

    def _take_over(self, node: str, info: str, *, initial: bool = False) -> None:
        keys = self._keys(lambda g: self.state[g.name] in (GroupState.STOPPED, GroupState.FAILED))
        self.start_keys(keys, f"{INITIAL_REASON}: {node} never heard" if initial else f"takeover from {node}")
        self._become_stable_after(True, info) if keys else self._become_stable_after(False, info)

    def _maybe_hand_off_failed(self) -> None:
        """Offer groups whose start failed here to the peer (heartbeat: hb_standby after 30 s)."""
        failed = tuple(k for k, st in self.state.items() if st is GroupState.FAILED
                       and k not in self._got_by_standby and not (self.peer_hold and k in self.peer_hold))
        if not failed or self.peer_status != "up" or self.phase is not Phase.STABLE:
            return
        if not self.is_stable() or self.fence is not None:
            self._handoff_at = self._now + FAILBACK_RETRY_S
            return
        which = "all" if len(failed) == len(self.groups) else (
            "local" if all(self.is_local(k) for k in failed) else "foreign")
        self.negotiation.ask_standby(which, failed, f"giving failed group(s) to {self.peer!r}", self._now, "warn")

    def _maybe_auto_failback(self) -> None:
        """auto_failback on: hand foreign groups back once their node is up and stable."""
        if (self.auto_failback != "on" or not self._failback_armed or self.peer_status != "up"
                or self.phase is not Phase.STABLE):
            return
        foreign = [k for k in self.held_keys() if self.by_key[k].node == self.peer]
        if not foreign:
            if self.peer_stable:
                self._failback_armed = False
            return
        if not self.peer_stable or not self.is_stable():
            self._failback_at = self._now + FAILBACK_RETRY_S
            return
        self._failback_armed = False
        self.negotiation.ask_standby("foreign", foreign, f"auto_failback: handing groups back to {self.peer!r}",
                                     self._now)
