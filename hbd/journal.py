# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's event journal: one JSON object per line in RUN_DIR/journal.jsonl.

Owns the journal's format.  Every record has::

    {"ts": "2026-11-25T23:01:02.345678+00:00",   wall clock, UTC, ISO 8601
     "time": 1795647662.345678,                  the same wall clock, epoch seconds
     "mono": 12345.678,                          monotonic seconds (ordering, durations)
     "node": "ha1",                               the node that wrote it
     "event": "...", ...}                         one of the kinds below

Kinds (the availability accounting and ``hbctl status`` read these):

    daemon    state=start|stop|stopped  [generation]
    node      peer=NAME state=up|late|dead|restarted  [graceful, late_s, generation]
              dead also: planned (= graceful: shutdone), since (epoch: detection - deadtime),
              or initdead=true: never heard since start-up (no since: nobody saw it go)
    group     group=KEY old=STATE new=STATE reason=TEXT   (STATE: stopped starting started
                                                           stopping failed)
              and state=up|down planned=BOOL why=TEXT holder=NODE (availability: up is
              started; a stop for standby, shutdown, failback or reload is planned, carried on to
              its stopped; state=unknown on the starts of the initial acquisition after
              initdead, when what ran before is not known)
    holding   group=KEY holder=PEER state=up|down planned=BOOL why=TEXT [since]: the peer's
              holdings as this node learns them (its resource reports, or its death)
    resource  group=KEY resource=WORD action=start|stop result=ok|failed [rc, duration_s]
    stonith   peer=NAME result=ok|failed detail=TEXT
    request   what=standby|takeover which=all|foreign|local result=ok|refused [detail]
    reload    source=SIGHUP|hbctl reload result=ok|refused [changes=[TEXT...] | detail=TEXT]

Each record is written and fdatasync'ed before record() returns
(hbd.availability counts failures from these lines: a power cut must not erase
the outage it caused; measured 0.15-3 ms a record on this machine's ext4,
depending on the disk's load: a failover writes about ten); a crash loses at
most the line being written, and ``read_journal`` skips a torn last line.
hbmon writes service records of the same shape (event=service service=NAME
state=up|down planned why) to its own hbmon.jsonl.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable


class Journal:
    def __init__(self, path: str, node: str):
        self.path = path
        self.node = node
        self._f = open(path, "a", encoding="utf-8", buffering=1)
        # called with each record once it is written (hbctl status --watch: hbd.control)
        self.listeners: list[Callable[[dict], None]] = []

    def record(self, event: str, **fields) -> dict:
        wall = time.time()
        rec = {"ts": datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(),
               "time": round(wall, 6), "mono": round(time.monotonic(), 6), "node": self.node, "event": event}
        rec.update(fields)
        self._f.write(json.dumps(rec, sort_keys=False, default=str) + "\n")
        self._f.flush()
        try:
            os.fdatasync(self._f.fileno())      # data and size: all a reader needs
        except OSError:
            pass            # a journal on a file system without fsync still gets the line
        for listener in list(self.listeners):
            listener(rec)
        return rec

    def close(self) -> None:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError:
            pass
        self._f.close()


def read_journal(path: str, limit: int | None = None) -> list[dict]:
    """Records in order (the last `limit` ones when given, read from the end of the file);
    torn or foreign lines are skipped."""
    try:
        with open(path, "rb") as f:
            if limit:
                f.seek(0, os.SEEK_END)
                pos = f.tell()
                data = b""
                while pos > 0 and data.count(b"\n") <= limit:
                    step = min(65536, pos)
                    pos -= step
                    f.seek(pos)
                    data = f.read(step) + data
                lines = data.splitlines()
                if pos > 0:
                    lines = lines[1:]        # the first one may be cut in the middle
            else:
                lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(rec, dict) and "event" in rec:
            out.append(rec)
    return out[-limit:] if limit else out


def format_record(rec: dict) -> str:
    """One human line for `hbctl status`."""
    ts = str(rec.get("ts", ""))[:23].replace("T", " ")
    ev = rec.get("event")
    if ev == "node":
        what = f"node {rec.get('peer')}: {rec.get('state')}"
    elif ev == "group":
        what = f"group {rec.get('group')}: {rec.get('old')} -> {rec.get('new')} ({rec.get('reason')})"
    elif ev == "holding":
        what = f"group {rec.get('group')} on {rec.get('holder')}: {rec.get('state')} ({rec.get('why')})"
    elif ev == "resource":
        what = f"resource {rec.get('resource')} {rec.get('action')}: {rec.get('result')}"
    elif ev == "stonith":
        what = f"stonith {rec.get('peer')}: {rec.get('result')}: {rec.get('detail', '')}"
    elif ev == "request":
        what = f"{rec.get('what')} {rec.get('which')}: {rec.get('result')} {rec.get('detail', '')}".rstrip()
    else:
        what = f"{ev} " + " ".join(f"{k}={v}" for k, v in rec.items() if k not in ("ts", "mono", "node", "event"))
    return f"{ts} {rec.get('node')}: {what}"
