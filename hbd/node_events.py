# SPDX-License-Identifier: GPL-2.0-or-later
"""What each membership event means to hbd: the log, the journal, the metrics, fencing, the groups.

``NodeEvents`` takes the events hbd.protocol.membership emits (``handle``) and
tells each party what it needs to know, in this order: metrics count it, the
log and the journal record it, the disk fencing (hbd.disk_fencing) hears of
the peer's state, then the group manager (hbd.groups) decides::

    NodeUp         log, journal up, fencing.node_up, groups.node_up
    NodeRestarted  log, journal restarted, groups.node_up
    NodeDead       log, journal dead (``since``: a deadtime ago, when it stopped
                   answering), the peer's holdings journaled down, fencing.node_dead,
                   groups.node_dead (clean for a shutdone)
      never heard  initdead's verdict, not a death: journaled with initdead=true and
                   counted apart, so the starts that follow are no failover
    NodeLate       log (heartbeat's "Late heartbeat" wording), journal late
    MessageReceived  disk fencing's messages to it, every other one to the groups
    PacketDropped  log, at most every 10 s per reason

It also keeps the journal's account of the peer's groups
(``journal_peer_holdings``): the daemon calls it once the loop has nothing left
to move, so this node's journal alone tells who held what and when.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hbd.disk_fencing import DiskFencing
from hbd.groups import GroupManager
from hbd.journal import Journal
from hbd.metrics import EventCounts
from hbd.protocol.membership import (
    Event,
    Membership,
    MessageReceived,
    NodeDead,
    NodeLate,
    NodeRestarted,
    NodeUp,
    PacketDropped,
)

log = logging.getLogger("hbd")

DROP_LOG_INTERVAL_S = 10.0
HIDDEN_FIELDS = ("auth", "srcuuid", "destuuid")     # not worth a debug line each

LogFn = Callable[[str, str], None]      # (level info|warn|crit, text)


class NodeEvents:
    """Membership events carried to the log, journal, metrics, fencing and groups (module docstring)."""

    def __init__(self, *, membership: Membership, groups: GroupManager, journal: Journal,
                 event_counts: EventCounts, fencing: DiskFencing | None, log: LogFn) -> None:
        self.m, self.g = membership, groups
        self.journal = journal
        self.event_counts = event_counts
        self.fencing = fencing
        self._log = log
        self._heard: set[str] = set()                     # peers seen alive since start-up
        self._drop_logged: dict[str, float] = {}          # reason -> when last logged
        self._peer_held: frozenset[str] = frozenset()     # peer's groups as last journaled

    def handle(self, e: Event, now: float) -> None:
        g = self.g
        # a peer never heard since start-up that membership declares dead is initdead's verdict:
        # not a death (it was not seen alive), and the starts that follow are no failover
        initial = isinstance(e, NodeDead) and not e.graceful and e.node not in self._heard
        self.event_counts.note_membership_event(e, initial=initial)
        if isinstance(e, (NodeUp, NodeRestarted)):
            self._heard.add(e.node)
        if isinstance(e, NodeDead) and initial:
            how = f"not heard within initdead_s={self.m.initdead_s:g} of start-up"
            self._log("warn", f"node {e.node}: {how}: taking it as dead")
            self.journal.record("node", peer=e.node, state="dead", graceful=False, planned=False,
                                initdead=True, why=how)
            if self.fencing is not None:
                self.fencing.node_dead(e.node, graceful=False)
            g.node_dead(e.node, now)
        elif isinstance(e, NodeUp):
            self._log("info", f"node {e.node}: status up (generation {e.generation})")
            self.journal.record("node", peer=e.node, state="up", generation=e.generation)
            if self.fencing is not None:
                self.fencing.node_up(e.node)
            g.node_up(e.node, now)
        elif isinstance(e, NodeRestarted):
            self._log("warn", f"node {e.node}: restarted (generation {e.generation})")
            self.journal.record("node", peer=e.node, state="restarted", generation=e.generation)
            g.node_up(e.node, now)
        elif isinstance(e, NodeDead):
            how = "shut down cleanly" if e.graceful else f"dead after deadtime_s={self.m.deadtime_s:g}"
            self._log("warn" if not e.graceful else "info", f"node {e.node}: {how}")
            # it stopped answering a deadtime ago (the failure began then, not at detection)
            since = round(time.time() - (0.0 if e.graceful else self.m.deadtime_s), 6)
            self.journal.record("node", peer=e.node, state="dead", graceful=e.graceful, planned=e.graceful,
                                since=since, why=how)
            self.journal_peer_holdings(frozenset(), planned=e.graceful, why=f"node {e.node} {how}", since=since)
            if self.fencing is not None:
                self.fencing.node_dead(e.node, graceful=e.graceful)
            g.node_dead(e.node, now, clean=e.graceful)
        elif isinstance(e, NodeLate):
            self._log("warn", f"Late heartbeat: node {e.node}: interval {int(e.late_s * 1000)} ms")
            self.journal.record("node", peer=e.node, state="late", late_s=round(e.late_s, 3))
        elif isinstance(e, MessageReceived):
            fields = {k: v for k, v in e.msg.fields if isinstance(v, str)}
            log.debug("message from %s: %s", e.node, " ".join(f"{k}={v}" for k, v in fields.items()
                                                              if k not in HIDDEN_FIELDS))
            if self.fencing is not None and self.fencing.receive_message(e.node, e.msg.type, fields):
                return
            g.receive_message(e.node, e.msg.type, fields, now)
        elif isinstance(e, PacketDropped):
            last = self._drop_logged.get(e.reason, -1e9)
            if now - last > DROP_LOG_INTERVAL_S:
                self._drop_logged[e.reason] = now
                self._log("warn", f"membership: packet dropped from {e.addr}: {e.reason}: {e.detail}")

    def journal_peer_holdings(self, held: frozenset[str] | None = None, *, planned: bool | None = None,
                              why: str = "", since: float | None = None) -> None:
        """Journal the peer's groups coming and going as this node learns of it (its resource
        reports, or its death: `held` empty), so this node's journal alone accounts for them."""
        g = self.g
        if g.peer is None:
            return
        if held is None:
            held = g.peer_hold
            if held is None:        # the peer has not reported since it (re)joined
                return
            if not g.peer_stable:           # given to it but maybe not started yet: wait for its
                held &= self._peer_held     # stable report before counting them up
        if held == self._peer_held:
            return
        if planned is None:         # given away by a standby exchange, or failed there
            planned = g.standby is not None
        extra = {} if since is None else {"since": since}
        for key in sorted(self._peer_held - held):
            gone = key not in g.by_key         # a reload removed it from haresources
            self.journal.record("holding", group=key, holder=g.peer, state="down", planned=planned or gone,
                                why="removed from haresources" if gone else why or "peer reports it no longer "
                                "holds it", **extra)
        for key in sorted(held - self._peer_held):
            self.journal.record("holding", group=key, holder=g.peer, state="up", planned=False,
                                why="peer reports it holds it")
        self._peer_held = held
