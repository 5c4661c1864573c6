# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat R1 resource messages between the two nodes: what each one means, what we answer.

The negotiation half of hbd's group manager (hb_resource.c's message handlers),
sans-I/O like the rest of it.  ``PeerNegotiation`` owns the standby exchange
(``standby``: who asked, which groups, until when) and the meaning of each peer
message.  It is held by ``hbd.groups.GroupManager`` and reaches the manager only
through the ``GroupOwner`` protocol below: queries (group states, who holds
what), the bookkeeping calls the messages imply (``peer_reported``,
``standby_taken``...) and the outputs (``send``, ``note``, ``start_keys``,
``stop_keys``, ``after``).  The decision table (membership, timers, takeover,
failback) stays in hbd.groups.

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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hacommon.errors import StateChangeRefused

from .group_actions import COMPLEMENT, HOLD_VALUES, GroupState, Phase

STANDBY_INIT_TIMEOUT_S = 10.0   # STANDBY_INIT_TO_MS
STANDBY_TOTAL_TIMEOUT_S = 3600.0  # HB_STANDBY_RSC_TO_MS


@dataclass(slots=True)
class Standby:
    """A standby exchange in progress (heartbeat's ``standby_running``)."""
    role: str                  # "me" (we asked) | "other" (peer asked)
    which: str                 # rsc_hold value as sent on the wire
    keys: tuple[str, ...]
    deadline: float


class GroupOwner(Protocol):
    """What PeerNegotiation needs from the group manager (hbd.groups.GroupManager implements it)."""

    @property
    def node(self) -> str: ...
    @property
    def peer(self) -> str | None: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def auto_failback(self) -> str: ...
    @property
    def peer_status(self) -> str: ...

    # queries
    def has_group(self, key: str) -> bool: ...
    def preferred_node(self, key: str) -> str: ...
    def group_state(self, key: str) -> GroupState: ...
    def is_local(self, key: str) -> bool: ...
    def held_keys(self) -> tuple[str, ...]: ...
    def peer_groups_held(self) -> list[str]: ...
    def keys_for_hold(self, hold: str, relative_to: str) -> list[str]: ...
    def is_stable(self) -> bool: ...
    def is_fencing(self) -> bool: ...

    # what the peer's messages tell the manager
    def peer_restarted(self) -> None: ...
    def peer_reported(self, hold: frozenset[str], stable: bool) -> None: ...
    def continue_after_report(self) -> None: ...
    def standby_taken(self, keys: Iterable[str]) -> None: ...
    def standby_given(self, keys: Iterable[str]) -> None: ...
    def peer_released(self, key: str) -> None: ...
    def cancel_legacy_release(self) -> None: ...

    # outputs
    def send(self, msg_type: str, fields: Mapping[str, str]) -> None: ...
    def send_report(self, info: str) -> None: ...
    def note(self, level: str, text: str) -> None: ...
    def reannounce(self, key: str) -> None: ...
    def start_keys(self, keys: Iterable[str], reason: str) -> bool: ...
    def stop_keys(self, keys: Iterable[str], reason: str) -> None: ...
    def after(self, fn: Callable[[], None]) -> None: ...


class PeerNegotiation:
    """Peer-message handlers and the standby exchange of one GroupManager (see the module docstring)."""

    def __init__(self, owner: GroupOwner):
        self._owner = owner
        self.standby: Standby | None = None

    def cancel_standby(self) -> None:
        self.standby = None

    def _settled(self) -> bool:
        return self._owner.is_stable() and not self._owner.is_fencing()

    # --- inputs: peer messages -------------------------------------------------------------

    def receive_message(self, node: str, msg_type: str, fields: Mapping[str, str], now: float) -> None:
        o = self._owner
        if node != o.peer or o.phase in (Phase.SHUTTING_DOWN, Phase.DOWN):
            return
        dest = fields.get("dest")
        if msg_type == "ip-request-resp" and dest == o.peer:
            self._on_peer_acquired(fields)
            return
        if dest is not None and dest != o.node:
            return
        handler: Callable[[Mapping[str, str], float], None] | None = {
            "starting": self._on_starting,
            "resource": self._on_resource,
            "ask_resources": self._on_ask_resources,
            "hb_takeover": self._on_hb_takeover,
            "ip-request": self._on_ip_request,
            "ip-request-resp": self._on_ip_request_resp,
        }.get(msg_type)
        if handler is not None:
            handler(fields, now)

    def _on_starting(self, fields: Mapping[str, str], now: float) -> None:
        self._owner.peer_restarted()
        self._owner.send_report("starting")

    def _on_resource(self, fields: Mapping[str, str], now: float) -> None:
        o = self._owner
        peer = o.peer
        assert peer is not None     # receive_message answers the peer only
        hold = fields.get("rsc_hold", "none")
        if hold not in HOLD_VALUES:
            o.note("warn", f"resource report from {peer!r}: bad rsc_hold {hold!r}: ignored")
            return
        peer_hold = frozenset(o.keys_for_hold(hold, peer))
        o.peer_reported(peer_hold, fields.get("isstable") == "1")
        # Partition heal: the side that is not the preferred node gives way.
        clash = [k for k in o.held_keys() if k in peer_hold and not o.is_local(k)
                 and o.preferred_node(k) == peer]
        if clash:
            o.note("warn", f"node {peer!r} also holds {' '.join(clash)}: releasing them "
                           f"(returning after partition)")
            o.stop_keys(clash, "partition heal: preferred node holds it")
            o.after(lambda: o.send_report("partition"))
        if fields.get("info") == "partition":
            for k in o.held_keys():
                if k not in peer_hold:
                    o.reannounce(k)
        o.continue_after_report()

    def _on_ask_resources(self, fields: Mapping[str, str], now: float) -> None:
        o = self._owner
        peer = o.peer
        assert peer is not None
        info = fields.get("info")
        which = fields.get("rsc_hold", "all")
        if which not in ("local", "foreign", "all"):
            o.note("warn", f"ask_resources from {peer!r}: bad rsc_hold {which!r}: ignored")
            return
        if info == "me":
            if not self._settled():
                o.note("warn", f"standby request from {peer!r} ignored: we are in flux")
                return
            keys = o.keys_for_hold(which, peer)
            named = fields.get("hbd_groups")
            if named is not None:       # hbd extension: exactly these groups (heartbeat ignores it)
                keys = [k for k in keys if k in named.split()]
            self.standby = Standby("other", which, tuple(keys), now + STANDBY_TOTAL_TIMEOUT_S)
            o.note("info", f"node {peer!r} gives up {which} resources: waiting for it to stop them")
            o.send("ask_resources", {"rsc_hold": which, "info": "other"})
        elif info == "other":
            sb = self.standby
            if sb is None or sb.role != "me":
                return
            sb.deadline = now + STANDBY_TOTAL_TIMEOUT_S
            o.note("info", f"standby: releasing {sb.which} resources to {peer!r}")
            o.stop_keys([k for k in sb.keys if o.group_state(k) is not GroupState.STOPPED], "standby")
            o.after(self._standby_released)
        elif info == "done":
            sb = self.standby
            if sb is None or sb.role != "other":
                return
            o.note("info", f"standby: node {peer!r} released {sb.which} resources: taking them")
            o.standby_taken(sb.keys)
            started = o.start_keys([k for k in sb.keys if o.group_state(k) is not GroupState.STARTED],
                                   "standby of peer")
            which = sb.which

            def finish() -> None:
                self.standby = None
                o.send("ask_resources", {"rsc_hold": which, "info": "done"})
                o.send_report("standby")
            if started:
                o.after(finish)
            else:
                finish()

    def _standby_released(self) -> None:
        o = self._owner
        sb = self.standby
        if sb is None:
            return
        if any(o.group_state(k) is GroupState.FAILED for k in sb.keys):
            o.note("crit", "standby cancelled: a resource failed to stop; not handing it over")
            self.standby = None
            o.send_report("standby")
            return
        o.standby_given(sb.keys)
        self.standby = None
        o.send_report("standby")
        o.send("ask_resources", {"rsc_hold": sb.which, "info": "done"})

    def _on_hb_takeover(self, fields: Mapping[str, str], now: float) -> None:
        which = fields.get("rsc_hold", "all")
        if which not in COMPLEMENT:
            self._owner.note("warn", f"hb_takeover from {self._owner.peer!r}: bad rsc_hold {which!r}: ignored")
            return
        try:
            self.request_standby(COMPLEMENT[which], now)
        except StateChangeRefused as e:
            self._owner.note("warn", f"hb_takeover from {self._owner.peer!r} not honoured: {e}")

    def _on_ip_request(self, fields: Mapping[str, str], now: float) -> None:
        o = self._owner
        peer = o.peer
        assert peer is not None
        key = fields.get("ipaddr", "")
        if not o.has_group(key):
            return
        if o.group_state(key) in (GroupState.STARTED, GroupState.STARTING):
            o.note("info", f"node {peer!r} asks for group {key!r}: giving it up")
            o.stop_keys([key], "ip-request from peer")
            o.cancel_legacy_release()

            def reply() -> None:
                ok = o.group_state(key) is GroupState.STOPPED
                o.send("ip-request-resp", {"dest": peer, "ipaddr": key, "weown": "yes",
                                           "ok": "OK" if ok else "FAILED"})
                o.send_report("ip-request")
            o.after(reply)
        else:
            o.send("ip-request-resp", {"dest": peer, "ipaddr": key, "weown": "no", "ok": "OK"})

    def _on_peer_acquired(self, fields: Mapping[str, str]) -> None:
        """The peer tells itself "ip-request-resp" when it takes its own group without asking
        (heartbeat's legacy req_our_resources when it saw no active peer): give way."""
        o = self._owner
        key = fields.get("ipaddr", "")
        if (o.has_group(key) and o.preferred_node(key) == o.peer and fields.get("ok", "OK") == "OK"
                and o.group_state(key) in (GroupState.STARTED, GroupState.STARTING)):
            o.note("warn", f"node {o.peer!r} acquired its group {key!r} while we hold it: releasing it")
            o.stop_keys([key], "peer acquired its own group")
            o.cancel_legacy_release()
            o.after(lambda: o.send_report("partition"))

    def _on_ip_request_resp(self, fields: Mapping[str, str], now: float) -> None:
        o = self._owner
        key = fields.get("ipaddr", "")
        if not o.has_group(key) or fields.get("ok", "OK") != "OK":
            return
        if o.group_state(key) in (GroupState.STOPPED, GroupState.FAILED) and o.phase is not Phase.DOWN:
            o.peer_released(key)
            o.start_keys([key], "ip-request-resp from peer")
            o.after(lambda: o.send_report("ip-request-resp"))

    # --- inputs: administrator -------------------------------------------------------------

    def request_standby(self, which: str, now: float) -> None:
        """hb_standby [all|foreign|local]: give those groups to the peer (relative to us)."""
        o = self._owner
        if which not in ("all", "foreign", "local"):
            raise StateChangeRefused(f"standby: bad resource set {which!r}: expected all, foreign or local")
        if o.peer is None or o.peer_status != "up":
            raise StateChangeRefused("standby: refusing to give up resources while the peer is not active")
        if o.auto_failback == "legacy":
            raise StateChangeRefused("standby: only implemented with auto_failback on or off (nice_failback)")
        if not self._settled():
            raise StateChangeRefused("standby: refusing while resources are in transition")
        keys = [k for k in o.keys_for_hold(which, o.node)
                if o.group_state(k) in (GroupState.STARTED, GroupState.FAILED)]
        if not keys:
            raise StateChangeRefused(f"standby: this node holds no {which} resources to give up")
        self.ask_standby(which, keys, f"standby: asking {o.peer!r} to take {which} resources", now)

    def request_takeover(self, which: str, now: float) -> None:
        """hb_takeover [all|foreign|local]: ask the peer to hand us those groups (relative to us)."""
        o = self._owner
        if which not in COMPLEMENT:
            raise StateChangeRefused(f"takeover: bad resource set {which!r}: expected all, foreign or local")
        if o.peer is None or o.peer_status != "up":
            raise StateChangeRefused("takeover: the peer is not active; its groups are taken over on its death")
        if o.auto_failback == "legacy":
            raise StateChangeRefused("takeover: only implemented with auto_failback on or off (nice_failback)")
        if not o.is_stable():
            raise StateChangeRefused("takeover: refusing while resources are in transition")
        o.note("info", f"takeover: asking {o.peer!r} to hand over {which} resources")
        o.send("hb_takeover", {"rsc_hold": which})

    def ask_standby(self, which: str, keys: Iterable[str], why: str, now: float, level: str = "info") -> None:
        """Phase 1 of the standby exchange; hbd_groups (ignored by heartbeat) names the exact groups."""
        self.standby = Standby("me", which, tuple(keys), now + STANDBY_INIT_TIMEOUT_S)
        self._owner.note(level, f"{why}: {' '.join(self.standby.keys)}")
        self._owner.send("ask_resources", {"rsc_hold": which, "info": "me",
                                           "hbd_groups": " ".join(self.standby.keys)})
