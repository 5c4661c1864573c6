# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's event stream: the line grammar of `drbdsetup events2`, and one bus to publish on.

Grammar (drbdsetup(8), "events2"), one event per line::

    [TIMESTAMP ]ACTION OBJECT KEY:VALUE ...
    ACTION  exists | create | change | destroy | call | response
    OBJECT  resource | connection | device | peer-device | helper | -   (`exists -` only)

    exists resource name:r0 role:Secondary suspended:no
    exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Primary
    exists device name:r0 volume:0 minor:0 disk:UpToDate client:no
    exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established \
        peer-disk:UpToDate resync-suspended:no                                 (one line)
    exists -
    change resource name:r0 role:Primary
    call helper name:r0 peer-node-id:1 conn-name:beta volume:0 helper:before-resync-target
    response helper name:r0 peer-node-id:1 conn-name:beta volume:0 helper:before-resync-target status:0

`exists` lines are the state when the stream starts, `exists -` ends them; then `create`,
`change`, `destroy` follow the objects' lives, `call`/`response helper` the handlers. A
`change` line names the object (its identifying keys) and only what changed. `--statistics`
adds counters to `exists` and `change` lines (device: size read written al-writes bm-writes
upper-pending lower-pending, in KiB or counts; peer-device: received sent out-of-sync pending
unacked [done]) and a `change peer-device` line with them about once a second during a
resync or verify. `--timestamps` prefixes the time of the event in ISO 8601 with microseconds
and the UTC offset, as drbdsetup does.

Values never hold a space: a value with a space, a backslash or a control character has each
such byte written as `\\xHH` (drbdsetup prints conn-name and helper output that way), and
`parse_event` undoes it, so `parse_event(format_event(e)) == e` (tests/unit/test_events.py).

This module owns the formatter, the parser (for tests and tools that read the stream) and
`EventBus`: the subscriber list the runtime publishes on (replica.resource, from set_state and
the handler runner) and replicad's `events` command reads (replica.daemon). The formatter and
parser do no I/O; the bus wakes a subscriber through a pipe it can select() on with its
client socket, so neither side polls.
"""
from __future__ import annotations

import datetime
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hacommon.control import Mailbox, Stream, send_line

ACTIONS = ("exists", "create", "change", "destroy", "call", "response")
OBJECTS = ("resource", "connection", "device", "peer-device", "helper")
END_OF_INITIAL = "-"            # `exists -`
MAX_QUEUED = 4096               # events a subscriber may lag behind before it is dropped

Pairs = tuple[tuple[str, str], ...]


class EventSyntaxError(ValueError):
    """A line that is not in the events2 grammar; the message quotes it."""


@dataclass(frozen=True)
class Event:
    """One line. `keys` identify the object and carry its state; `stats` appear only with
    --statistics; `periodic` events (resync progress) go only to --statistics subscribers.
    `time` is the wall-clock time of the event (set by the bus; None: not stamped)."""

    action: str
    obj: str
    keys: Pairs = ()
    stats: Pairs = ()
    periodic: bool = False
    time: float | None = field(default=None, compare=False)

    @property
    def resource(self) -> str | None:
        return dict(self.keys).get("name")


def escape_value(value: str) -> str:
    """Space, backslash and control characters as \\xHH, everything else as is."""
    out = []
    for ch in value:
        if ch == "\\" or ch == " " or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_value(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        digits = text[i + 2:i + 4]
        if text[i + 1:i + 2] != "x" or len(digits) != 2 or not all(
                c in "0123456789abcdefABCDEF" for c in digits):
            raise EventSyntaxError(f"events: bad escape in value: {text!r} at {i}: expected \\xHH")
        out.append(chr(int(digits, 16)))
        i += 4
    return "".join(out)


def format_timestamp(t: float) -> str:
    """drbdsetup --timestamps: local time, microseconds, UTC offset."""
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="microseconds")


def format_event(ev: Event, statistics: bool = False, timestamps: bool = False) -> str:
    words = [ev.action, ev.obj]
    pairs = ev.keys + (ev.stats if statistics else ())
    words += [f"{key}:{escape_value(value)}" for key, value in pairs]
    line = " ".join(words)
    if timestamps and ev.time is not None:
        line = f"{format_timestamp(ev.time)} {line}"
    return line


def _check_key(key: str, line: str) -> None:
    if not key or any(c.isspace() or c == ":" for c in key):
        raise EventSyntaxError(f"events: bad key {key!r} in {line!r}")


def parse_event(line: str) -> Event:
    """One line (without its newline) back into an Event; counters stay in `keys` (the line
    does not say which keys are statistics). A leading timestamp is parsed into `time`."""
    words = line.split(" ")
    stamp: float | None = None
    if words and words[0] and words[0][0].isdigit():
        try:
            stamp = datetime.datetime.fromisoformat(words[0]).timestamp()
        except ValueError:
            raise EventSyntaxError(f"events: bad timestamp {words[0]!r} in {line!r}") from None
        words = words[1:]
    if len(words) < 2:
        raise EventSyntaxError(f"events: expected ACTION OBJECT [KEY:VALUE...]: {line!r}")
    action, obj, rest = words[0], words[1], words[2:]
    if action not in ACTIONS:
        raise EventSyntaxError(f"events: unknown action {action!r} in {line!r} (known: "
                               f"{', '.join(ACTIONS)})")
    if obj == END_OF_INITIAL:
        if action != "exists" or rest:
            raise EventSyntaxError(f"events: '-' ends the initial state only as 'exists -': {line!r}")
    elif obj not in OBJECTS:
        raise EventSyntaxError(f"events: unknown object {obj!r} in {line!r} (known: "
                               f"{', '.join(OBJECTS)})")
    keys = []
    for word in rest:
        key, sep, value = word.partition(":")
        if not sep:
            raise EventSyntaxError(f"events: expected KEY:VALUE, got {word!r} in {line!r}")
        _check_key(key, line)
        keys.append((key, unescape_value(value)))
    return Event(action, obj, tuple(keys), time=stamp)


# --- the events of one resource, from its status (ResourceRuntime.status()) ------------------

def yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def suspended_text(io_suspended: object) -> str:
    """DRBD's resource `suspended:` (no, user, no-data, fencing, quorum): ours is fencing's
    suspend-io (resource-and-stonith while the fence-peer handler runs) or nothing."""
    return "fencing" if io_suspended else "no"


def _kib(n: Any) -> str:
    return str(int(n or 0) // 1024)


@dataclass(frozen=True)
class Identity:
    """What names the objects of one resource on its lines."""

    name: str
    peer: str | None            # conn-name: the peer's host name; None for a standalone resource
    peer_node_id: int = 1
    volume: int = 0
    minor: int = 0

    def resource(self) -> Pairs:
        return (("name", self.name),)

    def connection(self) -> Pairs:
        return (("name", self.name), ("peer-node-id", str(self.peer_node_id)),
                ("conn-name", self.peer or ""))

    def device(self) -> Pairs:
        return (("name", self.name), ("volume", str(self.volume)), ("minor", str(self.minor)))

    def peer_device(self) -> Pairs:
        return (*self.connection(), ("volume", str(self.volume)))


def state_fields(st: Mapping) -> dict[str, Pairs]:
    """The state keys of each object, from a status dict."""
    suspended = (st.get("resync") or {}).get("suspended")
    return {
        "resource": (("role", str(st.get("role", "Unknown"))),
                     ("suspended", suspended_text(st.get("io_suspended")))),
        "connection": (("connection", str(st.get("connection", "StandAlone"))),
                       ("role", str(st.get("peer_role", "Unknown")))),
        "device": (("disk", str(st.get("disk_state", "Diskless"))), ("client", "no")),
        "peer-device": (("replication", str(st.get("replication", "Off"))),
                        ("peer-disk", str(st.get("peer_disk_state", "DUnknown"))),
                        ("resync-suspended", ",".join(suspended) if suspended else "no")),
    }


def stats_fields(st: Mapping) -> dict[str, Pairs]:
    """--statistics counters of each object (drbdsetup's names and units: KiB for sizes)."""
    stats = st.get("stats") or {}
    progress = st.get("resync") or st.get("verify")
    peer: Pairs = (("received", _kib(stats.get("peer_bytes_received"))),
                   ("sent", _kib(stats.get("peer_bytes_sent"))),
                   ("out-of-sync", _kib(st.get("out_of_sync_bytes"))),
                   ("pending", str(int(stats.get("peer_pending", 0)))),
                   ("unacked", str(int(stats.get("peer_unacked", 0)))))
    if progress is not None and "percent" in progress:
        peer += (("done", f"{float(progress['percent']):.2f}"),)
    return {
        "resource": (("write-ordering", "flush"),),
        "connection": (),
        "device": (("size", _kib(st.get("size"))), ("read", _kib(stats.get("bytes_read"))),
                   ("written", _kib(stats.get("bytes_written"))),
                   ("al-writes", str(int(st.get("al_writes") or 0))),
                   ("bm-writes", str(int(st.get("bm_writes") or 0))),
                   ("upper-pending", str(int(stats.get("upper_pending", 0)))),
                   ("lower-pending", str(int(stats.get("lower_pending", 0))))),
        "peer-device": peer,
    }


def _ids(ident: Identity) -> dict[str, Pairs]:
    return {"resource": ident.resource(), "connection": ident.connection(),
            "device": ident.device(), "peer-device": ident.peer_device()}


def _objects(ident: Identity) -> tuple[str, ...]:
    if ident.peer is None:
        return ("resource", "device")
    return ("resource", "connection", "device", "peer-device")


def exists_events(ident: Identity, st: Mapping, action: str = "exists") -> list[Event]:
    """Every object of an up resource, in drbdsetup's order (also `create` when it comes up)."""
    ids, states, stats = _ids(ident), state_fields(st), stats_fields(st)
    return [Event(action, obj, ids[obj] + states[obj], stats[obj]) for obj in _objects(ident)]


def destroy_events(ident: Identity) -> list[Event]:
    """The resource goes down: its objects go, innermost first."""
    ids = _ids(ident)
    return [Event("destroy", obj, ids[obj]) for obj in reversed(_objects(ident))]


def change_events(ident: Identity, old: Mapping, new: Mapping) -> list[Event]:
    """`change` lines for what differs between two status dicts (only the changed keys)."""
    ids, before, after = _ids(ident), state_fields(old), state_fields(new)
    stats = stats_fields(new)
    out = []
    for obj in _objects(ident):
        was = dict(before[obj])
        changed = tuple((k, v) for k, v in after[obj] if was.get(k) != v)
        if changed:
            out.append(Event("change", obj, ids[obj] + changed, stats[obj]))
    return out


def progress_event(ident: Identity, st: Mapping) -> Event:
    """A --statistics-only `change peer-device` line: counters and done% of a resync/verify."""
    return Event("change", "peer-device", ident.peer_device(), stats_fields(st)["peer-device"],
                 periodic=True)


def helper_events(ident: Identity, helper: str, status: int | None = None) -> Event:
    """`call helper` (status None) or `response helper ... status:N` for a handler."""
    keys = (*(ident.peer_device() if ident.peer else ident.device()), ("helper", helper))
    if status is None:
        return Event("call", "helper", keys)
    return Event("response", "helper", (*keys, ("status", str(status))))


# --- the bus ------------------------------------------------------------------------------------

class Subscription(Mailbox):
    """One reader of the bus: events queue here (a Mailbox); `fileno()` is readable while some
    wait, or once the daemon ends the stream.

    A reader that falls MAX_QUEUED events behind is cut off (`overflowed`): it must start
    over from the state (`exists`), as a drbdsetup that lost netlink messages does."""

    def __init__(self, bus: EventBus, resource: str | None, statistics: bool):
        super().__init__(MAX_QUEUED)
        self.bus = bus
        self.resource = resource
        self.statistics = statistics
        self.ending = False          # the daemon stops: send what is queued, then end

    def wants(self, ev: Event) -> bool:
        if ev.periodic and not self.statistics:
            return False
        return self.resource is None or ev.resource == self.resource

    def end(self) -> None:
        """The daemon is stopping: the reader sends what is queued and ends its stream."""
        with self._lock:
            self.ending = True
            if self._w >= 0:
                self._wake_locked()

    def take_with_ending(self) -> tuple[list[Event], bool]:
        """Every queued event, and whether the stream ends after them, read together: an end()
        after this wakes the reader again; one before it came after the daemon's last events."""
        with self._lock:
            return self._take_locked(), self.ending

    def close(self) -> None:
        self.bus.unsubscribe(self)
        super().close()


class EventBus:
    """The subscriber list. `publish` never blocks on a reader (queues are per subscriber)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)

    def subscribe(self, resource: str | None = None, statistics: bool = False) -> Subscription:
        sub = Subscription(self, resource, statistics)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            self._drained.notify_all()

    def end_all(self, timeout_s: float) -> bool:
        """At daemon exit: every reader sends what it has queued (the `destroy` lines of the
        last `down`) and ends its stream; wait up to `timeout_s` for them. True if all did."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.end()
        with self._lock:
            return self._drained.wait_for(lambda: not self._subs, timeout_s)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def publish(self, events: Iterable[Event]) -> None:
        with self._lock:
            subs = list(self._subs)
        if not subs:
            return
        now = self.clock()
        for ev in events:
            stamped = replace(ev, time=now) if ev.time is None else ev
            for sub in subs:
                if sub.wants(stamped):
                    sub.put(stamped)


class EventStream(Stream):
    """replicad's answer to `events`: the reply, the `initial` lines (`exists ...`, `exists -`),
    then (unless `once`, --now) each event of `sub` as it comes, one JSON object per line
    (``{"event": "<line>"}``), until the client closes its end. It sleeps in select() on the
    client socket and the subscription's pipe: nothing wakes it but an event or the client.
    A subscriber that fell MAX_QUEUED events behind gets a last ``{"ok": false, "error"}``."""

    def __init__(self, sub: Subscription, initial: list[Event], once: bool = False,
                 statistics: bool = False, timestamps: bool = False):
        self.sub = sub
        self.initial = initial
        self.once = once
        self.statistics = statistics
        self.timestamps = timestamps

    def _send(self, conn: socket.socket, events: Iterable[Event]) -> None:
        for ev in events:
            send_line(conn, {"event": format_event(ev, self.statistics, self.timestamps)})

    def serve(self, conn: socket.socket) -> None:
        try:
            send_line(conn, {"ok": True})
            self._send(conn, self.initial)
            if self.once:
                return
            while True:
                ready, _, _ = select.select([conn.fileno(), self.sub.fileno()], [], [])
                if conn.fileno() in ready:
                    return          # the client closed (or spoke out of turn): done
                events, ending = self.sub.take_with_ending()
                if self.sub.overflowed:
                    send_line(conn, {"ok": False, "error": f"events: this reader fell more than "
                                     f"{MAX_QUEUED} events behind: start again"})
                    return
                self._send(conn, events)
                if ending:
                    return          # replicad stops: the client sees the end of the stream
        except OSError:
            return                  # the client went away mid-line
        finally:
            self.sub.close()
