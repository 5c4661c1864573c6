# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat membership, sans-I/O: datagrams and `now` in, datagrams and events out.

Owns: who is up, late or dead; our own status heartbeats; per-node sequence
and generation tracking (replay, duplicates, restarts); retransmission
requests for gaps and answers to the peer's requests; flow-control acks.
It never opens a socket or reads a clock (aioquic style): the daemon calls

    m.receive_datagram(data, addr, now)       for every UDP datagram on udpport
    m.handle_timer(now)                       when now >= m.get_timer()
    for d in m.datagrams_to_send(now): ...    send each to every medium
    while (e := m.next_event()) is not None:  act on / log each event

Node lifecycle as seen from here::

    init --first valid packet--> up/active (peer's own `st`) --silence >= dead time--> dead
      |                             |  ^ NodeLate after warntime of silence           |
      +--initdead, never heard------+--|--------------------------------------------->+
                                       +---- valid packet (NodeUp; newer hg also) <---+

Rules (heartbeat 3.0.6, heartbeat-reference.md 1.5-1.6, heartbeat-wire.md 2-5):

- `t=status st=<init|up|active> dt=<deadtime ms, hex> protocol=1` every
  keepalive; `st=init` first, then `up`, `active` once a peer was heard or
  initdead passed.  Every message carries src, srcuuid, seq (hex), hg, ts, ld,
  ttl and is signed (packets.encode_message); NS_* messages carry no seq/ld.
- A peer's dead time is the `dt` it announces (heartbeat adopts it), else our
  deadtime; a node never heard since our start is dead after initdead.
- Per peer: `hg` lower than known -> dropped (replay); higher -> restart
  (NodeRestarted, tracking reset).  `seq` = last+1 accepted; already seen ->
  dropped as duplicate/replay (normal once per extra medium); a gap records
  the missing numbers and asks for each with `NS_rexmit firstseq=N lastseq=N`
  (decimal) after REXMIT_FIRST_DELAY_S, then every max_rexmit_delay, until it
  arrives, the peer NAKs it, or a dead time passes; a gap of more than
  FLOWCONTROL_LIMIT resets tracking.  Only accepted numbered messages prove a
  node alive (an unnumbered NS_* packet cannot be checked for replay).
- We keep our last `history_size` numbered datagrams and resend one
  byte-for-byte on request (at most MAX_REXMIT_BATCH per request, not twice
  within max_rexmit_delay), else answer `NS_nak_rexmit`.
- Flow control as heartbeat's: `NS_ackmsg ackseq=` about every 10th message
  of a peer that sends `protocol` in its status, cumulative -- never past a
  missing seq, because heartbeat ignores rexmit requests at or below the
  last ack it got (acking across a hole would make the hole permanent).
- Packets that fail to decode or authenticate, from unknown nodes, or from
  an old generation are dropped, counted and reported only as PacketDropped.
- Accepted cluster messages are reported (MessageReceived) whatever their
  `dest`: every node sees and sequences them all, and a message a peer
  addresses to itself (heartbeat's self-addressed `ip-request-resp` when it
  takes its own group unasked) is news for us too.  Consumers filter `dest`.
  NS_* control packets and `reqnodes` are acted on only when addressed to us.
- After send_shutdone() nothing else goes out but answers to NS_rexmit:
  a status heartbeat after shutdone makes heartbeat log "returning after
  partition"; send_message() is then ignored and counted.

Counters (`counters`): received, accepted, sent, dropped_malformed,
dropped_unsigned, dropped_bad_auth, dropped_unknown_node, dropped_replay
(seq already seen: a copy over a second medium, or a replay),
dropped_old_generation, own_packets, rexmit_requested, rexmit_sent,
rexmit_nak_sent, lost_packets, seq_resets, suppressed_after_shutdone.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hacommon.errors import LocalProtocolError

from .packets import BadPacket, FieldValue, HbMessage, decode_message, encode_message

if TYPE_CHECKING:  # pragma: no cover - only for annotations; keeps this module I/O-free
    from hbd.authkeys import AuthKeys

FLOWCONTROL_LIMIT = 250        # heartbeat: MAXMSGHIST / 2; bigger gaps reset tracking
MAX_REXMIT_BATCH = 50          # heartbeat: at most 50 retransmissions per request
REXMIT_FIRST_DELAY_S = 0.05    # heartbeat: random 50..max_rexmit_delay ms before the first request
ACK_MSG_DIV = 10               # heartbeat: ack about every 10th message
MAX_PENDING_DROP_EVENTS = 1000  # PacketDropped events beyond this are only counted
_NO_FIELDS: Mapping[str, str] = {}


# --- events -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeUp:
    node: str
    generation: int


@dataclass(frozen=True, slots=True)
class NodeLate:
    node: str
    late_s: float


@dataclass(frozen=True, slots=True)
class NodeDead:
    node: str
    graceful: bool = False   # True: the node said goodbye (shutdone / st=dead)


@dataclass(frozen=True, slots=True)
class NodeRestarted:
    node: str
    generation: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    node: str
    msg: HbMessage


@dataclass(frozen=True, slots=True)
class PacketDropped:
    reason: str
    addr: Any
    detail: str = ""


Event = NodeUp | NodeLate | NodeDead | NodeRestarted | MessageReceived | PacketDropped


@dataclass
class _Peer:
    name: str
    status: str = "init"            # init (never heard) | up | active | ... as it reports | dead
    alive: bool = False
    generation: int | None = None
    last_seq: int | None = None
    last_heard: float = 0.0
    dead_s: float = 0.0
    warned_late: bool = False
    flow_control: bool = False
    uuid: bytes | None = None
    addr: Any = None
    ack_trigger: int = 0
    missing: dict[int, list[float]] = field(default_factory=dict)  # seq -> [next request, give up at]


class Membership:
    """Membership of `node` among `nodes` (ha.cf `node` lines, ourselves included)."""

    def __init__(self, node: str, nodes: Sequence[str], *, keepalive_s: float, warntime_s: float,
                 deadtime_s: float, initdead_s: float, authkeys: AuthKeys, generation: int, now: float,
                 udpport: int = 694, uuid: bytes | None = None, hopfudge: int = 1,
                 max_rexmit_delay_s: float = 0.25, history_size: int = 500,
                 wall_clock_offset: float = 0.0, load_average: str = "0.00 0.00 0.00 1/1 1") -> None:
        self.node = node.lower()
        names = [n.lower() for n in nodes]
        if self.node not in names:
            raise LocalProtocolError(f"membership: local node {node!r} is not among the nodes {list(nodes)}")
        if not 0 < keepalive_s < deadtime_s <= initdead_s:
            raise LocalProtocolError(f"membership: need 0 < keepalive_s < deadtime_s <= initdead_s: "
                                     f"keepalive_s={keepalive_s} deadtime_s={deadtime_s} initdead_s={initdead_s}")
        self.nodes = tuple(dict.fromkeys(names))
        self.keepalive_s = keepalive_s
        self.warntime_s = warntime_s
        self.deadtime_s = deadtime_s
        self.initdead_s = initdead_s
        self.authkeys = authkeys
        self.generation = generation
        self.udpport = udpport
        # heartbeat's `uuidfrom nodename`-like default: stable, derived from the node name
        self.uuid = uuid if uuid is not None else hashlib.md5(b"hbd-node:" + self.node.encode()).digest()
        self.ttl = hopfudge + len(self.nodes)
        self.max_rexmit_delay_s = max_rexmit_delay_s
        self.history_size = history_size
        self.wall_clock_offset = wall_clock_offset
        self.load_average = load_average
        self.started_at = now
        self.local_status = "init"
        self.closed = False        # True after send_shutdone(): no more heartbeats
        self.counters: dict[str, int] = {k: 0 for k in (
            "received", "accepted", "dropped_malformed", "dropped_unsigned", "dropped_bad_auth",
            "dropped_unknown_node", "dropped_replay", "dropped_old_generation", "own_packets",
            "sent", "rexmit_requested", "rexmit_sent", "rexmit_nak_sent", "lost_packets", "seq_resets",
            "suppressed_after_shutdone")}
        self._now = now
        self._seq = 0
        self._history: OrderedDict[int, list[Any]] = OrderedDict()  # seq -> [datagram, last sent at]
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending_drops = 0
        self._next_heartbeat = now
        self._peers: dict[str, _Peer] = {}
        for n in self.nodes:
            if n != self.node:
                self._peers[n] = _Peer(name=n, dead_s=deadtime_s,
                                       ack_trigger=sum(n.encode()) % ACK_MSG_DIV)

    # --- queries ----------------------------------------------------------------------------
    def node_status(self, node: str) -> str:
        """cl_status-style status: ours, or the peer's last reported `st`, "init" or "dead"."""
        node = node.lower()
        if node == self.node:
            return self.local_status
        peer = self._peers.get(node)
        if peer is None:
            raise LocalProtocolError(f"membership: unknown node {node!r}")
        return peer.status

    def is_alive(self, node: str) -> bool:
        node = node.lower()
        return node == self.node or (node in self._peers and self._peers[node].alive)

    def peer_generation(self, node: str) -> int | None:
        peer = self._peers.get(node.lower())
        return peer.generation if peer else None

    def peer_address(self, node: str) -> Any:
        """Where the last accepted packet of `node` came from."""
        peer = self._peers.get(node.lower())
        return peer.addr if peer else None

    def peer_dead_s(self, node: str) -> float:
        return self._peers[node.lower()].dead_s

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture for `hbctl status` and SIGUSR1 dumps."""
        return {
            "node": self.node, "status": self.local_status, "generation": self.generation, "seq": self._seq,
            "peers": {p.name: {"status": p.status, "generation": p.generation, "last_seq": p.last_seq,
                               "missing": sorted(p.missing), "dead_s": p.dead_s,
                               "silent_s": round(self._now - p.last_heard, 3) if p.alive else None}
                      for p in self._peers.values()},
            "counters": dict(self.counters),
        }

    # --- the sans-I/O interface -------------------------------------------------------------
    def next_event(self) -> Event | None:
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, PacketDropped):
            self._pending_drops -= 1
        return event

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything due to go out now (heartbeats, queued messages, rexmit traffic)."""
        self._now = max(self._now, now)
        self._maybe_send_heartbeat(now)
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """The next time handle_timer() has work to do."""
        times = [self._next_heartbeat] if not self.closed else []
        if self.local_status == "up":
            times.append(self.started_at + self.initdead_s)
        for p in self._peers.values():
            if p.alive:
                times.append(p.last_heard + p.dead_s)
                if not p.warned_late and self.warntime_s < p.dead_s:
                    times.append(p.last_heard + self.warntime_s)
                for due, give_up in p.missing.values():
                    times.append(min(due, give_up))
            elif p.status == "init":
                times.append(self.started_at + self.initdead_s)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = max(self._now, now)
        if self.local_status == "up" and now >= self.started_at + self.initdead_s:
            self._set_local_status("active")
        for p in self._peers.values():
            if p.alive:
                silent = now - p.last_heard
                if silent >= p.dead_s:
                    self._mark_dead(p, graceful=False)
                    continue
                if not p.warned_late and self.warntime_s < p.dead_s and silent >= self.warntime_s:
                    p.warned_late = True
                    self._events.append(NodeLate(p.name, silent))
                self._request_missing(p, now)
            elif p.status == "init" and now >= self.started_at + self.initdead_s:
                self._mark_dead(p, graceful=False)
        self._maybe_send_heartbeat(now)

    def send_message(self, msg_type: str, fields: Mapping[str, str] = _NO_FIELDS) -> None:
        """Queue a cluster message (seq-numbered unless NS_*), signed, for all nodes.

        A `dest` field addresses one node (others still see and sequence it).
        """
        if not msg_type or msg_type == "status":
            raise LocalProtocolError(f"membership: send_message: type {msg_type!r} is reserved or empty")
        if self.closed:   # after shutdone we are gone for the cluster: say nothing more
            self.counters["suppressed_after_shutdone"] += 1
            return
        self._send(msg_type, list(fields.items()))

    def set_local_status(self, status: str) -> None:
        """Change our `st` (init/up/active/dead) and announce it at once."""
        self._set_local_status(status)

    def set_timing(self, *, keepalive_s: float, warntime_s: float, deadtime_s: float, initdead_s: float,
                   max_rexmit_delay_s: float, authkeys: AuthKeys, now: float) -> None:
        """A reload (hbd.reload): new ha.cf timing and authkeys, from now on.

        Our next status carries the new `dt`, which each peer applies to us (that is how a
        deadtime change reaches them); peers not heard yet or dead get the new deadtime here.
        initdead counts from our start, so only a node still in its start-up sees the change.
        The next heartbeat is due within the new keepalive."""
        if not 0 < keepalive_s < deadtime_s <= initdead_s:
            raise LocalProtocolError(f"membership: need 0 < keepalive_s < deadtime_s <= initdead_s: "
                                     f"keepalive_s={keepalive_s} deadtime_s={deadtime_s} initdead_s={initdead_s}")
        self._now = max(self._now, now)
        self.keepalive_s, self.warntime_s = keepalive_s, warntime_s
        self.deadtime_s, self.initdead_s = deadtime_s, initdead_s
        self.max_rexmit_delay_s = max_rexmit_delay_s
        self.authkeys = authkeys
        for p in self._peers.values():
            if not p.alive:
                p.dead_s = deadtime_s
            else:   # the floor receive_datagram applies to an advertised dt
                p.dead_s = max(p.dead_s, keepalive_s * 2)
        self._next_heartbeat = min(self._next_heartbeat, now + keepalive_s)

    def send_shutdone(self) -> None:
        """Last words of a graceful stop: `t=shutdone st=dead` (the peer takes over at once).

        No status heartbeat follows (a real heartbeat would log "returning after
        partition"); retransmission requests are still answered so a lost
        shutdone can be recovered.
        """
        self.local_status = "dead"
        self._send("shutdone", [("st", "dead")])
        self.closed = True

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self._now = max(self._now, now)
        self.counters["received"] += 1
        try:
            msg = decode_message(data, self.authkeys)
        except BadPacket as e:
            self._drop("dropped_" + e.reason, addr, str(e))
            return
        src = msg.origin.lower()
        if src == self.node:
            self.counters["own_packets"] += 1    # our own bcast/ucast copy
            return
        peer = self._peers.get(src)
        if peer is None:
            self._drop("dropped_unknown_node", addr, f"message {msg.type!r} from unknown node {msg.origin!r}")
            return
        gen = msg.generation
        assert gen is not None      # decode_message refuses a message without 'hg'
        if peer.generation is not None and gen < peer.generation:
            self._drop("dropped_old_generation", addr,
                       f"{msg.type} from {src}: generation {gen:x} older than {peer.generation:x} (replay?)")
            return
        if peer.generation is not None and gen > peer.generation:
            self._reset_tracking(peer, gen)
            if peer.alive:
                self._events.append(NodeRestarted(src, gen))
        elif peer.generation is None:
            peer.generation = gen
        for_us = msg.dest is None or msg.dest.lower() == self.node
        if msg.type.startswith("NS_"):
            if for_us:
                self._handle_control(peer, msg, now)
            return
        seq = msg.seq
        assert seq is not None      # decode_message refuses a non-NS_ message without 'seq'
        first_missing = min(peer.missing) if peer.missing else None
        if not self._accept_seq(peer, seq, now):
            self._drop("dropped_replay", addr, f"{msg.type} from {src}: seq {seq:x} already seen", event=False)
            return
        self.counters["accepted"] += 1
        peer.last_heard = now
        peer.warned_late = False
        peer.addr = addr
        if msg.src_uuid is not None:
            peer.uuid = msg.src_uuid
        if msg.type == "status" and "protocol" in msg:
            peer.flow_control = True
        if peer.flow_control and not self.closed:
            self._maybe_ack(peer, seq, first_missing)
        if msg.deadtime_ms:
            peer.dead_s = max(msg.deadtime_ms / 1000.0, self.keepalive_s * 2)
        status = msg.status if msg.type == "status" else None
        goodbye = msg.type == "shutdone" or status == "dead"
        if not peer.alive and not goodbye:
            peer.alive = True
            peer.status = status or "up"
            self._events.append(NodeUp(src, gen))
            if self.local_status == "up":
                self._set_local_status("active")
        elif status and not goodbye:
            peer.status = status
        if msg.type == "reqnodes" and for_us and not self.closed:
            self._send("repnodes", [("dest", src), ("nodelist", " ".join(self.nodes) + " "),
                                    ("delnodelist", " ")], own_first=True)
        elif msg.type not in ("status", "reqnodes", "repnodes"):
            # reported whatever its `dest`: heartbeat's legacy "don't ask" path tells the cluster
            # it took a group with an ip-request-resp addressed to itself; consumers filter `dest`
            self._events.append(MessageReceived(src, msg))
        if goodbye and peer.alive:
            self._mark_dead(peer, graceful=True)

    # --- internals --------------------------------------------------------------------------
    def _drop(self, counter: str, addr: Any, detail: str, event: bool = True) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1
        if event and self._pending_drops < MAX_PENDING_DROP_EVENTS:
            self._pending_drops += 1
            self._events.append(PacketDropped(counter[len("dropped_"):], addr, detail))

    def _reset_tracking(self, peer: _Peer, gen: int) -> None:
        peer.generation = gen
        peer.last_seq = None
        peer.missing.clear()
        peer.flow_control = False

    def _accept_seq(self, peer: _Peer, seq: int, now: float) -> bool:
        if peer.last_seq is None:
            peer.last_seq = seq
            return True
        if seq == peer.last_seq + 1:
            peer.last_seq = seq
            return True
        if seq > peer.last_seq + 1:
            gap = seq - peer.last_seq - 1
            if gap > FLOWCONTROL_LIMIT:
                self.counters["seq_resets"] += 1
                self.counters["lost_packets"] += gap + len(peer.missing)
                peer.missing.clear()
            else:
                first_due = now + min(REXMIT_FIRST_DELAY_S, self.max_rexmit_delay_s)
                for s in range(peer.last_seq + 1, seq):
                    peer.missing[s] = [first_due, now + peer.dead_s]
                while len(peer.missing) > FLOWCONTROL_LIMIT:
                    del peer.missing[min(peer.missing)]
                    self.counters["lost_packets"] += 1
            peer.last_seq = seq
            return True
        if seq in peer.missing:
            del peer.missing[seq]
            return True
        return False

    def _maybe_ack(self, peer: _Peer, seq: int, first_missing: int | None) -> None:
        """Flow-control ack, cumulative as heartbeat's: never past the first missing seq.

        The sender ignores rexmit requests for anything at or below the last
        ack it got from us, so acking past a gap would make the gap permanent.
        """
        if first_missing is not None and seq == first_missing:
            # a gap's first hole was filled: ack the highest trigger-aligned seq now complete
            last = peer.last_seq
            assert last is not None     # _accept_seq just accepted seq, so a last seq exists
            upto = min(peer.missing) - 1 if peer.missing else last
            x = upto % ACK_MSG_DIV
            ack = (upto // ACK_MSG_DIV - (0 if x >= peer.ack_trigger else 1)) * ACK_MSG_DIV + peer.ack_trigger
            if ack >= first_missing:
                self._send("NS_ackmsg", [("dest", peer.name), ("ackseq", "%x" % ack)])
            return
        if seq % ACK_MSG_DIV != peer.ack_trigger:
            return
        if peer.missing and seq > min(peer.missing):
            return
        self._send("NS_ackmsg", [("dest", peer.name), ("ackseq", "%x" % seq)])

    def _request_missing(self, peer: _Peer, now: float) -> None:
        for s, (due, give_up) in sorted(peer.missing.items()):
            if now >= give_up:
                del peer.missing[s]
                self.counters["lost_packets"] += 1
            elif now >= due:
                peer.missing[s][0] = now + self.max_rexmit_delay_s
                self.counters["rexmit_requested"] += 1
                self._send("NS_rexmit", [("dest", peer.name), ("firstseq", str(s)), ("lastseq", str(s))])

    def _handle_control(self, peer: _Peer, msg: HbMessage, now: float) -> None:
        if msg.type == "NS_rexmit":
            first, last = msg.get_str("firstseq", ""), msg.get_str("lastseq", "")
            if not (first.isdigit() and last.isdigit() and len(first) < 12 and len(last) < 12):
                self.counters["dropped_malformed"] += 1
                return
            lo, hi = int(first), int(last)
            for s in range(lo, min(hi, lo + MAX_REXMIT_BATCH - 1) + 1):
                entry = self._history.get(s)
                if entry is not None:
                    if now - entry[1] >= self.max_rexmit_delay_s - 0.01:
                        entry[1] = now
                        self._out.append(entry[0])
                        self.counters["rexmit_sent"] += 1
                elif 0 < s <= self._seq:
                    self.counters["rexmit_nak_sent"] += 1
                    low = next(iter(self._history), self._seq + 1)
                    self._send("NS_nak_rexmit", [("dest", peer.name), ("firstseq", "%x" % s),
                                                 ("info", "seqno too low" if s < low else "seqno not found")])
        elif msg.type == "NS_nak_rexmit":
            first = msg.get_str("firstseq", "")
            try:
                s = int(first, 16)
            except ValueError:
                return
            if peer.missing.pop(s, None) is not None:
                self.counters["lost_packets"] += 1
        # NS_ackmsg: we keep a fixed-size history, so acks need no action

    def _mark_dead(self, peer: _Peer, graceful: bool) -> None:
        peer.alive = False
        peer.status = "dead"
        peer.missing.clear()
        peer.dead_s = self.deadtime_s
        self._events.append(NodeDead(peer.name, graceful))

    def _set_local_status(self, status: str) -> None:
        if status != self.local_status and not self.closed:
            self.local_status = status
            self._send_status(self._now)

    def _maybe_send_heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat or self.closed:
            return
        self._send_status(now)

    def _send_status(self, now: float) -> None:
        self._send("status", [("st", self.local_status), ("dt", "%x" % int(round(self.deadtime_s * 1000))),
                              ("protocol", "1")])
        if self.local_status == "init":
            # heartbeat: init, then up at once; active as soon as a peer is heard
            self.local_status = "active" if any(p.alive for p in self._peers.values()) else "up"
            self._send("status", [("st", self.local_status), ("dt", "%x" % int(round(self.deadtime_s * 1000))),
                                  ("protocol", "1")])
        nxt = self._next_heartbeat + self.keepalive_s
        self._next_heartbeat = nxt if nxt > now else now + self.keepalive_s

    def _send(self, msg_type: str, own: list[tuple[str, FieldValue]], own_first: bool = False) -> None:
        # heartbeat puts `dest` before `t` in repnodes (heartbeat-wire.md 4)
        fields = own[:1] + [("t", msg_type)] + own[1:] if own_first else [("t", msg_type)] + list(own)
        dest = next((v for k, v in own if k == "dest"), None)
        if dest is not None:
            peer = self._peers.get(str(dest).lower())
            if peer is not None and peer.uuid is not None:
                fields.append(("destuuid", peer.uuid))
        numbered = not msg_type.startswith("NS_")
        fields += [("src", self.node), ("srcuuid", self.uuid)]
        if numbered:
            self._seq += 1
            fields.append(("seq", "%x" % self._seq))
        fields += [("hg", "%x" % self.generation), ("ts", "%x" % int(self._now + self.wall_clock_offset))]
        if numbered:
            fields.append(("ld", self.load_average))
        fields.append(("ttl", str(self.ttl)))
        datagram = encode_message(fields, self.authkeys)
        if numbered:
            self._history[self._seq] = [datagram, float("-inf")]  # [bytes, last RE-sent at]
            while len(self._history) > self.history_size:
                self._history.popitem(last=False)
        self.counters["sent"] += 1
        self._out.append(datagram)
