# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat R1 resource messages between the two nodes: what each one means, what we answer.

The negotiation half of hbd's group manager (hb_resource.c's message handlers),
sans-I/O like the rest of it.  ``PeerNegotiation`` is a base class of
``hbd.groups.GroupManager`` and works on that manager's state and bookkeeping
(``state``, ``peer_hold``, ``standby``, ``_start_keys``, ``_stop_keys``,
``_after``, ``_send``, ``_note``); the decision table (membership, timers,
takeover, failback) stays in hbd.groups.

Messages (heartbeat-reference.md 1.6, heartbeat-wire.md 4)::

    starting            peer (re)started: forget its hold set, send our report
    resource            peer's report: rsc_hold=none|local|foreign|all isstable=0|1
    ask_resources       standby, three phases:  requester info=me -> peer info=other
                        -> requester stops, info=done -> peer starts, info=done
    hb_takeover         the peer wants rsc_hold: we run standby for the complement
    ip-request          legacy failback: the peer asks for its group; we stop it and
                        answer ip-request-resp dest=peer weown=yes ok=OK|FAILED
    ip-request-resp     dest=us: the peer gave the group up, start it;
                        dest=peer: the peer took its own group unasked (heartbeat's
                        "don't ask" path tells itself so): give way at once

A message whose ``dest`` is another node is ignored, except that last one.
"""
from __future__ import annotations

from dataclasses import dataclass

from replica.errors import StateChangeRefused

from .group_actions import COMPLEMENT, HOLD_VALUES, GroupState, Phase, Reannounce

STANDBY_INIT_TIMEOUT_S = 10.0   # STANDBY_INIT_TO_MS
STANDBY_TOTAL_TIMEOUT_S = 3600.0  # HB_STANDBY_RSC_TO_MS


@dataclass(slots=True)
class _Standby:
    role: str                  # "me" (we asked) | "other" (peer asked)
    which: str                 # rsc_hold value as sent on the wire
    keys: tuple[str, ...]
    deadline: float


class PeerNegotiation:
    """Peer-message handlers and the standby exchange of GroupManager (see the module docstring)."""

    # --- inputs: peer messages -------------------------------------------------------------

    def receive_message(self, node: str, msg_type: str, fields: dict, now: float) -> None:
        self._now = now
        if node != self.peer or self.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            return
        dest = fields.get("dest")
        if msg_type == "ip-request-resp" and dest == self.peer:
            self._on_peer_acquired(fields)
            return
        if dest is not None and dest != self.node:
            return
        handler = {
            "starting": self._on_starting,
            "resource": self._on_resource,
            "ask_resources": self._on_ask_resources,
            "hb_takeover": self._on_hb_takeover,
            "ip-request": self._on_ip_request,
            "ip-request-resp": self._on_ip_request_resp,
        }.get(msg_type)
        if handler is not None:
            handler(fields)

    def _on_starting(self, fields: dict) -> None:
        self._failback_armed = True
        self.peer_hold = None
        self.peer_stable = False
        self._send_report("starting")

    def _on_resource(self, fields: dict) -> None:
        hold = fields.get("rsc_hold", "none")
        if hold not in HOLD_VALUES:
            self._note("warn", f"resource report from {self.peer!r}: bad rsc_hold {hold!r}: ignored")
            return
        if self.peer_status == "unknown":
            self.peer_status = "up"
        self.peer_hold = frozenset(self._keys_for_hold(hold, self.peer))
        self.peer_stable = fields.get("isstable") == "1"
        # Partition heal: the side that is not the preferred node gives way.
        clash = [k for k in self.held_keys() if k in self.peer_hold and not self.is_local(k)
                 and self.by_key[k].node == self.peer]
        if clash:
            self._note("warn", f"node {self.peer!r} also holds {' '.join(clash)}: releasing them "
                               f"(returning after partition)")
            self._stop_keys(clash, "partition heal: preferred node holds it")
            self._after(lambda: self._send_report("partition"))
        if fields.get("info") == "partition":
            for k in self.held_keys():
                if k not in self.peer_hold:
                    self._emit(Reannounce(k))
        if self.phase is Phase.INIT:
            self._acquire_local("req_our_resources()")
        elif self.phase is Phase.STABLE:
            self._adopt_orphans()
            self._maybe_auto_failback()

    def _on_ask_resources(self, fields: dict) -> None:
        info = fields.get("info")
        which = fields.get("rsc_hold", "all")
        if which not in ("local", "foreign", "all"):
            self._note("warn", f"ask_resources from {self.peer!r}: bad rsc_hold {which!r}: ignored")
            return
        if info == "me":
            if not self.is_stable() or self.fence is not None:
                self._note("warn", f"standby request from {self.peer!r} ignored: we are in flux")
                return
            keys = self._keys_for_hold(which, self.peer)
            named = fields.get("hbd_groups")
            if named is not None:       # hbd extension: exactly these groups (heartbeat ignores it)
                keys = [k for k in keys if k in named.split()]
            self.standby = _Standby("other", which, tuple(keys), self._now + STANDBY_TOTAL_TIMEOUT_S)
            self._note("info", f"node {self.peer!r} gives up {which} resources: waiting for it to stop them")
            self._send("ask_resources", {"rsc_hold": which, "info": "other"})
        elif info == "other":
            sb = self.standby
            if sb is None or sb.role != "me":
                return
            sb.deadline = self._now + STANDBY_TOTAL_TIMEOUT_S
            self._note("info", f"standby: releasing {sb.which} resources to {self.peer!r}")
            self._stop_keys([k for k in sb.keys if self.state[k] is not GroupState.STOPPED], "standby")
            self._after(self._standby_released)
        elif info == "done":
            sb = self.standby
            if sb is None or sb.role != "other":
                return
            self._note("info", f"standby: node {self.peer!r} released {sb.which} resources: taking them")
            self._got_by_standby |= set(sb.keys)
            self._given_away -= set(sb.keys)
            started = self._start_keys([k for k in sb.keys if self.state[k] is not GroupState.STARTED],
                                       "standby of peer")
            which = sb.which

            def finish() -> None:
                self.standby = None
                self._send("ask_resources", {"rsc_hold": which, "info": "done"})
                self._send_report("standby")
            self._after(finish) if started else finish()

    def _standby_released(self) -> None:
        sb = self.standby
        if sb is None:
            return
        if any(self.state[k] is GroupState.FAILED for k in sb.keys):
            self._note("crit", "standby cancelled: a resource failed to stop; not handing it over")
            self.standby = None
            self._send_report("standby")
            return
        self.peer_hold = (self.peer_hold or frozenset()) | frozenset(sb.keys)
        self._given_away |= set(sb.keys)
        self.standby = None
        self._send_report("standby")
        self._send("ask_resources", {"rsc_hold": sb.which, "info": "done"})

    def _on_hb_takeover(self, fields: dict) -> None:
        which = fields.get("rsc_hold", "all")
        if which not in COMPLEMENT:
            self._note("warn", f"hb_takeover from {self.peer!r}: bad rsc_hold {which!r}: ignored")
            return
        try:
            self.request_standby(COMPLEMENT[which], self._now)
        except StateChangeRefused as e:
            self._note("warn", f"hb_takeover from {self.peer!r} not honoured: {e}")

    def _on_ip_request(self, fields: dict) -> None:
        key = fields.get("ipaddr", "")
        if key not in self.by_key:
            return
        if self.state[key] in (GroupState.STARTED, GroupState.STARTING):
            self._note("info", f"node {self.peer!r} asks for group {key!r}: giving it up")
            self._stop_keys([key], "ip-request from peer")
            self._cancel_legacy_release()

            def reply() -> None:
                ok = self.state[key] is GroupState.STOPPED
                self._send("ip-request-resp", {"dest": self.peer, "ipaddr": key, "weown": "yes",
                                               "ok": "OK" if ok else "FAILED"})
                self._send_report("ip-request")
            self._after(reply)
        else:
            self._send("ip-request-resp", {"dest": self.peer, "ipaddr": key, "weown": "no", "ok": "OK"})

    def _peer_groups_held(self) -> list[str]:
        return [k for k in self.held_keys() if self.by_key[k].node == self.peer]

    def _on_peer_acquired(self, fields: dict) -> None:
        """The peer tells itself "ip-request-resp" when it takes its own group without asking
        (heartbeat's legacy req_our_resources when it saw no active peer): give way."""
        key = fields.get("ipaddr", "")
        if (key in self.by_key and self.by_key[key].node == self.peer and fields.get("ok", "OK") == "OK"
                and self.state[key] in (GroupState.STARTED, GroupState.STARTING)):
            self._note("warn", f"node {self.peer!r} acquired its group {key!r} while we hold it: releasing it")
            self._stop_keys([key], "peer acquired its own group")
            self._cancel_legacy_release()
            self._after(lambda: self._send_report("partition"))

    def _cancel_legacy_release(self) -> None:
        """The peer asked for or took its groups itself: the legacy fallback timer has no work left."""
        if self._legacy_release_at is not None and not self._peer_groups_held():
            self._legacy_release_at = None

    def _on_ip_request_resp(self, fields: dict) -> None:
        key = fields.get("ipaddr", "")
        if key not in self.by_key or fields.get("ok", "OK") != "OK":
            return
        if self.state[key] in (GroupState.STOPPED, GroupState.FAILED) and self.phase is not Phase.DOWN:
            if self.peer_hold is not None:
                self.peer_hold = self.peer_hold - {key}
            self._start_keys([key], "ip-request-resp from peer")
            self._after(lambda: self._send_report("ip-request-resp"))

    # --- inputs: administrator -------------------------------------------------------------

    def request_standby(self, which: str, now: float) -> None:
        """hb_standby [all|foreign|local]: give those groups to the peer (relative to us)."""
        self._now = now
        if which not in ("all", "foreign", "local"):
            raise StateChangeRefused(f"standby: bad resource set {which!r}: expected all, foreign or local")
        if self.peer is None or self.peer_status != "up":
            raise StateChangeRefused("standby: refusing to give up resources while the peer is not active")
        if self.auto_failback == "legacy":
            raise StateChangeRefused("standby: only implemented with auto_failback on or off (nice_failback)")
        if not self.is_stable() or self.fence is not None:
            raise StateChangeRefused("standby: refusing while resources are in transition")
        keys = [k for k in self._keys_for_hold(which, self.node)
                if self.state[k] in (GroupState.STARTED, GroupState.FAILED)]
        if not keys:
            raise StateChangeRefused(f"standby: this node holds no {which} resources to give up")
        self._ask_standby(which, keys, f"standby: asking {self.peer!r} to take {which} resources")

    def request_takeover(self, which: str, now: float) -> None:
        """hb_takeover [all|foreign|local]: ask the peer to hand us those groups (relative to us)."""
        self._now = now
        if which not in COMPLEMENT:
            raise StateChangeRefused(f"takeover: bad resource set {which!r}: expected all, foreign or local")
        if self.peer is None or self.peer_status != "up":
            raise StateChangeRefused("takeover: the peer is not active; its groups are taken over on its death")
        if self.auto_failback == "legacy":
            raise StateChangeRefused("takeover: only implemented with auto_failback on or off (nice_failback)")
        if not self.is_stable():
            raise StateChangeRefused("takeover: refusing while resources are in transition")
        self._note("info", f"takeover: asking {self.peer!r} to hand over {which} resources")
        self._send("hb_takeover", {"rsc_hold": which})

    def _ask_standby(self, which: str, keys, why: str, level: str = "info") -> None:
        """Phase 1 of the standby exchange; hbd_groups (ignored by heartbeat) names the exact groups."""
        self.standby = _Standby("me", which, tuple(keys), self._now + STANDBY_INIT_TIMEOUT_S)
        self._note(level, f"{why}: {' '.join(keys)}")
        self._send("ask_resources", {"rsc_hold": which, "info": "me", "hbd_groups": " ".join(keys)})
