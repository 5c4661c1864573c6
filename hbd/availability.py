# SPDX-License-Identifier: GPL-2.0-or-later
"""Availability accounting from the cluster's own journal (sans-I/O: records in, report out).

The seed ("Cálculo da Disponibilidade"): a component's life is a succession of
time-to-failure and time-to-repair; Disponibilidade = MTTF / (MTTF + MTTR).  Its
three classes: basic 99-99.9 %, high 99.99-99.999 %, continuous above.  And the
"Missão": the period in which a system must work without interruption; every stop
inside it, planned ones too, is a failure; what happens outside it does not count.

Input: journal records (dicts, hbd.journal's format, and hbmon's service records
of the same shape), from one or several journals (both nodes, hbmon).  Each
record is one transition of a *subject*:

    node     subject = "peer" (or the writer "node"): state up|restarted -> up,
             dead|down -> down ("planned"/"graceful" = a clean shutdown; "since" =
             when it really stopped answering, detection time minus deadtime);
             dead with "initdead": true = never heard since the writer started: unknown
             (nobody saw it go down; the groups it was known to hold become unknown too).
             ``daemon`` start/stop of a writer is its own node up / planned down;
             a start that follows no stop means the previous daemon crashed: after
             its last record, or when a peer saw it stop answering if that is later.
    group    subject = "group", holder = the writer "node"; "state" up|down (older
             records: new == "started" is up), "planned"; "unknown" (the start of
             the initial acquisition after initdead) changes nothing.
    holding  a group as its writer learnt the peer holds it: subject = "group",
             holder = "holder"; "state", "planned", "since".
    service  subject = "watch/service" (Mon's services are per watch group; "service" alone
             without a watch), holder = the writer "node"; "state", "planned" (hbmon).

A group or service is up while at least one holder reports it up; when a node
goes down, the groups it held go down with it (a node killed with SIGKILL
writes nothing; its peer's "node dead" record ends its holdings); the services
its hbmon watched become unknown (not counted) when its peer declares it dead.  A node's
records about the peer's groups (holder = the peer, learnt from its resource
reports, which may run a little ahead of its starts) count only when the
peer's own journal is not among the inputs: merged journals give exact times.  Before a
subject has been seen up once, its state is unknown and not counted.

Accounting over the counted time W = [since, until] ∩ mission windows ∩ known:
uptime U and downtime D are the up and down time inside W; a failure is a
maximal down period that overlaps W (one outage that spans a night outside a
mission window counts once); MTTF = U / failures, MTTR = D / failures, so
A = MTTF / (MTTF + MTTR) = U / (U + D); with no failure, A = 1 and MTTF, MTTR are
undefined.  Without a mission the mission is continuous (the 24-hour pharmacy):
every stop counts.  The report also gives A with planned stops left out (the
classes' "common sense" figures do not consider planned stops).

Times are wall-clock epoch seconds ("time"; older records: ISO 8601 "ts").
Mission windows are local time of `tz` (None: the system's local time).
"""
from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

YEAR_S = 365.25 * 86400
KINDS = ("node", "group", "service")
# group-record reasons (hbd.groups / hbd.group_negotiation) that are planned stops
PLANNED_REASONS = frozenset({"standby", "shutdown", "peer acquired its own group", "ip-request from peer",
                             "reload: removed from haresources", "reload: changed in haresources"})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class AvailabilityError(ValueError):
    """Bad input to the accounting (a time, a mission, a journal line)."""


# --- parsing: journal lines, times, missions ----------------------------------------------

@dataclass(frozen=True, slots=True)
class BadLine:
    source: str
    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.lineno}: {self.reason}"


def parse_journal(lines: Iterable[bytes | str], source: str = "journal") -> tuple[list[dict[str, Any]], list[BadLine]]:
    """(records, bad lines): each line one JSON object with an "event"; others are skipped and
    reported with their line number (a torn last line after a crash is one of them)."""
    records: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for n, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except ValueError as e:
            bad.append(BadLine(source, n, f"not JSON: {e}"))
            continue
        if not isinstance(rec, dict):
            bad.append(BadLine(source, n, f"not a JSON object: {type(rec).__name__}"))
        elif not isinstance(rec.get("event"), str):
            bad.append(BadLine(source, n, "no \"event\" field"))
        elif record_time(rec) is None:
            bad.append(BadLine(source, n, "no usable \"time\" or \"ts\" field"))
        else:
            records.append(rec)
    return records, bad


def record_time(rec: Mapping[str, Any]) -> float | None:
    """The record's wall-clock epoch seconds: "time", else "ts" (ISO 8601); None if neither works."""
    t = rec.get("time")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    ts = rec.get("ts")
    if isinstance(ts, str):
        try:
            d = datetime.datetime.fromisoformat(ts)
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=datetime.UTC)
        return d.timestamp()
    return None


_REL = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float, tz: datetime.tzinfo | None = None) -> float:
    """ISO 8601 (date, or date and time; without an offset: local time of `tz`), "now", or
    relative to `now`: -30s -15m -2h -7d -1w."""
    s = text.strip().lower()
    if s == "now":
        return now
    m = _REL.match(s)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        d = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AvailabilityError(f"bad time {text!r}: expected ISO 8601 (2026-01-31 or "
                                f"2026-01-31T08:00) or relative (-7d, -12h, -30m, -45s, -2w)") from None
    if d.tzinfo is None and tz is not None:
        d = d.replace(tzinfo=tz)
    return d.timestamp()


@dataclass(frozen=True, slots=True)
class Mission:
    """HH:MM-HH:MM[,days]: a daily window (end <= start spans midnight: it ends the next day);
    days name the day each window starts on (mon..sun, ranges like mon-fri; default every day)."""
    start_min: int
    end_min: int
    days: frozenset[int]
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Mission:
        parts = [p.strip().lower() for p in text.split(",")]
        m = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", parts[0])
        if not m:
            raise AvailabilityError(f"bad mission {text!r}: expected HH:MM-HH:MM[,days] "
                                    f"(e.g. 08:00-20:00,mon-fri)")
        h1, m1, h2, m2 = (int(x) for x in m.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
            raise AvailabilityError(f"bad mission {text!r}: {parts[0]} is not a time of day")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            end = start + 1440          # a whole day from that time
        days: set[int] = set()
        for p in parts[1:]:
            if not p:
                continue
            if "-" in p:
                a, _, b = p.partition("-")
                if a not in DAYS or b not in DAYS:
                    raise AvailabilityError(f"bad mission {text!r}: unknown day in {p!r} (mon tue wed thu fri sat sun)")
                i, j = DAYS.index(a), DAYS.index(b)
                days.update(range(i, j + 1) if i <= j else list(range(i, 7)) + list(range(0, j + 1)))
            elif p in DAYS:
                days.add(DAYS.index(p))
            else:
                raise AvailabilityError(f"bad mission {text!r}: unknown day {p!r} (mon tue wed thu fri sat sun)")
        return cls(start, end, frozenset(days) if days else frozenset(range(7)), text)

    def windows(self, t0: float, t1: float, tz: datetime.tzinfo | None = None) -> list[tuple[float, float]]:
        """The mission's windows clipped to [t0, t1], in order (epoch seconds)."""
        if t1 <= t0:
            return []
        first = _date(t0, tz) - datetime.timedelta(days=1)
        last = _date(t1, tz)
        out: list[tuple[float, float]] = []
        day = first
        while day <= last:
            if day.weekday() in self.days:
                a = _at(day, self.start_min, tz)
                end_min = self.end_min if self.end_min > self.start_min else self.end_min + 1440
                b = _at(day, end_min, tz)
                a, b = max(a, t0), min(b, t1)
                if b > a:
                    if out and a <= out[-1][1]:
                        out[-1] = (out[-1][0], max(out[-1][1], b))
                    else:
                        out.append((a, b))
            day += datetime.timedelta(days=1)
        return out


def _date(t: float, tz: datetime.tzinfo | None) -> datetime.date:
    return datetime.datetime.fromtimestamp(t, tz).date()


def _at(day: datetime.date, minutes: int, tz: datetime.tzinfo | None) -> float:
    d = datetime.datetime.combine(day, datetime.time(0), tz) + datetime.timedelta(minutes=minutes)
    return d.timestamp()


# --- records -> transitions ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Transition:
    time: float
    kind: str          # node | group | service
    name: str          # the subject
    holder: str        # the node holding it (for a node, itself)
    up: bool | None     # None: unknown (a node not heard at start-up, initdead)
    planned: bool
    why: str
    gone: bool = False  # node down declared by its peer (deadtime): the machine may be gone


def _flag(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("true", "yes", "1"))


def _since(rec: Mapping[str, Any], t: float) -> float:
    """When a down really began: "since" if the record gives a plausible one, else its time."""
    since = rec.get("since")
    if isinstance(since, (int, float)) and not isinstance(since, bool) and math.isfinite(since) and since <= t:
        return float(since)
    return t


_SUBJECT_FIELD = {"group": "group", "holding": "group", "service": "service"}


def _from_hbd(rec: Mapping[str, Any]) -> bool:
    """Written by hbd (not hbmon, whose journal shares the shape: "program": "hbmon" on its daemon
    records, and the kinds service, recovery and alert)."""
    return rec.get("program", "hbd") == "hbd" and rec.get("event") not in ("service", "recovery", "alert")


def transitions(records: Iterable[Mapping[str, Any]]) -> list[Transition]:
    """The records' up/down transitions in time order (others, like "late" or "resource", carry none)."""
    out: list[Transition] = []
    recs = sorted(((t, i, r) for i, r in enumerate(records) if (t := record_time(r)) is not None),
                  key=lambda x: (x[0], x[1]))
    # a holder's own hbd journal is first-hand: another node's view of its groups is then ignored
    first_hand = {str(r.get("node", "")).lower() for _, _, r in recs if _from_hbd(r)
                  and r.get("event") in ("daemon", "group")}
    running: dict[str, bool] = {}       # writer -> its daemon started and did not stop yet
    last_seen: dict[str, float] = {}
    peer_saw_down: dict[str, float] = {}    # node -> when a peer's journal says it stopped answering
    for t, _, rec in recs:
        ev = rec.get("event")
        writer = str(rec.get("node", "")).lower()
        st = str(rec.get("state", "")).lower()
        why = str(rec.get("why") or rec.get("reason") or "")
        if ev == "daemon" and writer and _from_hbd(rec):
            if st == "start":
                if running.get(writer):
                    # it ended after its last record; when a peer saw it stop answering later
                    # (an idle hbd writes nothing for hours), that is when it ended
                    ended = max(last_seen[writer], peer_saw_down.get(writer, last_seen[writer]))
                    out.append(Transition(ended, "node", writer, writer, False, False,
                                          "hbd ended without a clean stop (crash or kill)"))
                running[writer] = True
                out.append(Transition(t, "node", writer, writer, True, False, "hbd started"))
            elif st in ("stop", "stopped"):
                if running.get(writer):
                    out.append(Transition(t, "node", writer, writer, False, True, "hbd stopped"))
                running[writer] = False
        elif ev == "node":
            subject = str(rec.get("peer") or writer).lower()
            if subject and st == "dead" and _flag(rec.get("initdead")):
                out.append(Transition(t, "node", subject, subject, None, False, why or "not heard at start-up"))
            elif subject and st in ("up", "restarted", "down", "dead"):
                up = st in ("up", "restarted")
                planned = _flag(rec.get("planned", rec.get("graceful", False)))
                out.append(Transition(_since(rec, t) if not up else t, "node", subject, subject, up, planned and not up,
                                      why or ("up" if up else "shut down cleanly" if planned else "dead"),
                                      gone=not up and not planned and subject != writer))
                if not up and subject != writer:
                    peer_saw_down[subject] = _since(rec, t)
        elif ev in ("group", "service", "holding") and isinstance(rec.get(_SUBJECT_FIELD[ev]), str):
            key = _SUBJECT_FIELD[ev]
            holder = str(rec.get("holder") or writer).lower()
            name = rec[key]
            if ev == "service" and isinstance(rec.get("watch"), str) and rec["watch"]:
                name = f"{rec['watch']}/{name}"         # Mon's services are per watch group
            if holder != writer and holder in first_hand and ev != "service":
                continue
            if st in ("up", "down"):
                up = st == "up"
            elif ev == "group" and "state" not in rec and isinstance(rec.get("new"), str):
                up = rec["new"] == "started"        # written before "state" existed
            else:
                continue        # "unknown": the initial acquisition's start (nothing known before)
            planned = _flag(rec["planned"]) if "planned" in rec else (
                not up and str(rec.get("reason", "")) in PLANNED_REASONS)
            out.append(Transition(_since(rec, t) if not up else t, "service" if ev == "service" else "group",
                                  name, holder, up,
                                  planned and not up, why))
        if writer and _from_hbd(rec):
            last_seen[writer] = t
    out.sort(key=lambda x: x.time)
    return out


# --- the accounting ---------------------------------------------------------------------------

@dataclass(slots=True)
class Subject:
    kind: str
    name: str
    observed_s: float = 0.0
    uptime_s: float = 0.0
    downtime_s: float = 0.0
    planned_downtime_s: float = 0.0
    failures: int = 0
    planned_failures: int = 0
    first_seen: float | None = None
    timeline: list[tuple[float, float, str]] = field(default_factory=list)   # (start, end, state)

    @property
    def mttf_s(self) -> float | None:
        return self.uptime_s / self.failures if self.failures else None

    @property
    def mttr_s(self) -> float | None:
        return self.downtime_s / self.failures if self.failures else None

    @property
    def availability(self) -> float | None:
        if self.observed_s <= 0:
            return None
        if not self.failures:
            return 1.0
        mttf, mttr = self.uptime_s / self.failures, self.downtime_s / self.failures
        return mttf / (mttf + mttr) if mttf + mttr > 0 else None

    @property
    def availability_unplanned(self) -> float | None:
        """A with planned stops left out of both failures and time."""
        n = self.failures - self.planned_failures
        counted = self.uptime_s + self.downtime_s - self.planned_downtime_s
        if counted <= 0:
            return None
        if n <= 0:
            return 1.0
        return self.uptime_s / counted

    @property
    def downtime_per_year_s(self) -> float | None:
        a = self.availability
        return None if a is None else (1.0 - a) * YEAR_S

    @property
    def klass(self) -> str:
        return availability_class(self.availability)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "observed_s": self.observed_s, "uptime_s": self.uptime_s,
                "downtime_s": self.downtime_s, "planned_downtime_s": self.planned_downtime_s,
                "failures": self.failures, "planned_failures": self.planned_failures,
                "mttf_s": self.mttf_s, "mttr_s": self.mttr_s, "availability": self.availability,
                "availability_unplanned": self.availability_unplanned,
                "downtime_per_year_s": self.downtime_per_year_s, "class": self.klass,
                "timeline": [{"start": a, "end": b, "state": s} for a, b, s in self.timeline]}


def availability_class(a: float | None) -> str:
    """The seed's classes: basic 99-99.9 %, high 99.99-99.999 %, continuous above.  Between
    99.9 and 99.99 % a system is not yet high: it stays basic."""
    if a is None:
        return "unknown"
    if a > 0.99999:
        return "continuous"
    if a >= 0.9999:
        return "high"
    if a >= 0.99:
        return "basic"
    return "below basic"


@dataclass(slots=True)
class Report:
    since: float
    until: float
    mission: str | None
    subjects: list[Subject]
    bad_lines: list[BadLine] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "mission": self.mission,
                "subjects": [s.to_json() for s in self.subjects],
                "skipped_lines": len(self.bad_lines),
                "skipped": [str(b) for b in self.bad_lines[:20]]}


def _category(state: str) -> str:
    return "down" if state == "planned" else state


def _state_changes(trs: Sequence[Transition]) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """Per subject, (time, "up" | "down" | "planned" | "unknown") at each change of its overall state.

    A node going down takes the groups it held down with it.  A service keeps the state its
    observer (the hbmon that wrote it) last reported, unless the observer's peer declares it dead:
    then nobody watches it and it is unknown until reported again."""
    holders: dict[tuple[str, str], dict[str, bool | None]] = {}
    state: dict[tuple[str, str], str] = {}
    changes: dict[tuple[str, str], list[tuple[float, str]]] = {}

    def settle(key: tuple[str, str], t: float, planned: bool) -> None:
        vals = holders[key].values()
        if any(v is True for v in vals):
            new = "up"
        elif any(v is False for v in vals):
            new = "planned" if planned else "down"
        else:
            new = "unknown"
        old = state.get(key)
        if old is None and new != "up":
            return              # not seen up yet: unknown
        if old is None or _category(old) != _category(new):
            state[key] = new
            changes.setdefault(key, []).append((t, new))

    for tr in trs:
        key = (tr.kind, tr.name)
        holders.setdefault(key, {})[tr.holder] = tr.up
        settle(key, tr.time, tr.planned)
        if tr.kind == "node" and tr.up is None:     # not heard at start-up: what it held is unknown
            for other, hs in holders.items():
                if other[0] in ("group", "service") and hs.get(tr.holder) is not None:
                    hs[tr.holder] = None
                    settle(other, tr.time, tr.planned)
        elif tr.kind == "node" and not tr.up:
            for other, hs in holders.items():
                if other[0] == "group" and hs.get(tr.holder):
                    hs[tr.holder] = False
                    settle(other, tr.time, tr.planned)
                elif other[0] == "service" and tr.gone and hs.get(tr.holder) is not None:
                    hs[tr.holder] = None
                    settle(other, tr.time, tr.planned)
    return changes


def _overlap(a: float, b: float, windows: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in windows)


def compute(records: Iterable[Mapping[str, Any]], *, until: float, since: float | None = None,
            mission: Mission | None = None, tz: datetime.tzinfo | None = None,
            kinds: Iterable[str] = KINDS, names: Iterable[str] | None = None,
            group: str | None = None, bad_lines: Sequence[BadLine] = ()) -> Report:
    """The availability report of every subject in `records` over [since, until] (since: the
    first record).  `names` keeps only those subjects; `group` keeps that group and the services
    whose records name it."""
    recs = list(records)
    trs = transitions(recs)
    if since is None:
        since = trs[0].time if trs else until
    kinds = tuple(kinds)
    wanted = set(names) if names is not None else None
    group_services = {f"{r['watch']}/{r.get('service')}" if isinstance(r.get("watch"), str) and r["watch"]
                      else str(r.get("service")) for r in recs
                      if group is not None and r.get("event") == "service" and r.get("group") == group}
    windows = mission.windows(since, until, tz) if mission else [(since, until)] if until > since else []
    subjects: list[Subject] = []
    for (kind, name), ch in sorted(_state_changes(trs).items()):
        if kind not in kinds or (wanted is not None and name not in wanted
                                 and name.rpartition("/")[2] not in wanted):
            continue
        if group is not None and not ((kind == "group" and name == group)
                                      or (kind == "service" and name in group_services)):
            continue
        s = Subject(kind, name, first_seen=ch[0][0])
        points = ch + [(until, "end")]
        # consecutive changes differ in kind, so each down segment is one whole outage
        for (a, st), (b, _) in zip(points, points[1:], strict=False):
            if st == "unknown":
                continue
            lo, hi = max(a, since), min(b, until)
            if hi > lo:
                s.timeline.append((lo, hi, st))
            inside = _overlap(a, b, windows) if hi > lo else 0.0
            s.observed_s += inside
            if st == "up":
                s.uptime_s += inside
                continue
            s.downtime_s += inside
            if st == "planned":
                s.planned_downtime_s += inside
            if inside > 0:
                s.failures += 1
                s.planned_failures += st == "planned"
        if s.observed_s > 0 or s.timeline:
            subjects.append(s)
    return Report(since, until, mission.text if mission else None, subjects, list(bad_lines))
