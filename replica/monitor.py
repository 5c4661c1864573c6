# SPDX-License-Identifier: GPL-2.0-or-later
"""The two background threads of an attached resource: C's events and the resource's timers.

Owns `ResourceMonitor`. Nothing here wakes up periodically when nothing happens: each thread
sleeps until an event arrives or its next deadline is due::

    event reader: select() on C's event fd and a wake pipe, no timeout
        ├─ al_miss ──► disk.al_miss (md_lock only: a writer waiting in C never waits for `lock`)
        └─ others  ──► queue
    monitor: queue.get(timeout = the next deadline), then under the runtime's `lock`:
        event ──► peer_lost / peer_protocol / peer_control: connection;  io_error: runtime
        due   ──► connection.check_timers (ping-int, ping-timeout, ko-count * timeout, only
                  while Connected), resync progress (during a resync), bitmap persistence
                  (only while there is something new to store)

The deadlines come from their owners (replica.connection, replica.disk) and are recomputed
after every wake-up; `wake()` makes the monitor recompute them now (e.g. on connect).
"""
import logging
import os
import queue
import select
import threading
import time
from typing import TYPE_CHECKING

from replica.errors import ReplicaError
from replica.mirror import Engine, MirrorEvent
from replica.states import ReplState

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")

RESYNC_PROGRESS_S = 0.5      # progress marks and bitmap persistence while a resync runs
_WAKE = object()             # queued by wake(): recompute the deadlines


class ResourceMonitor:
    def __init__(self, rt: "ResourceRuntime"):
        self.rt = rt
        self.name = rt.name
        self._events: queue.Queue[MirrorEvent | object] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1

    def start(self, engine: Engine) -> None:
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for target, label in ((lambda: self._read_events(engine), "events"),
                              (self._run, "monitor")):
            t = threading.Thread(target=target, name=f"{label}[{self.name}]", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._events.put(_WAKE)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self._threads = []
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def wake(self) -> None:
        self._events.put(_WAKE)

    # --- event reader -------------------------------------------------------------------------

    def _read_events(self, engine: Engine) -> None:
        efd, wake_r = engine.event_fd(), self._wake_r
        while not self._stop.is_set():
            ready, _, _ = select.select([efd, wake_r], [], [])
            if wake_r in ready:
                return
            for ev in engine.next_events():
                if ev.type == "al_miss":
                    self.rt.disk.al_miss(ev.offset, self._stop)
                    self._events.put(_WAKE)     # a write: the bitmap may have news to store
                else:
                    self._events.put(ev)

    # --- monitor ------------------------------------------------------------------------------

    def _run(self) -> None:
        timeout_s: float | None = None
        while not self._stop.is_set():
            try:
                ev = self._events.get(timeout=timeout_s)
            except queue.Empty:
                ev = None
            # detach holds `lock` while it joins this thread: never block on it for long
            while not self.rt.lock.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            try:
                if self.rt.disk.engine is None or self._stop.is_set():
                    return
                if isinstance(ev, MirrorEvent):
                    self.rt.on_engine_event(ev)
                timeout_s = self._tick()
            except (ReplicaError, OSError) as exc:
                log.error("%s: %s", self.name, exc)
            finally:
                self.rt.lock.release()

    def _tick(self) -> float | None:
        """Run what is due; return seconds until the next deadline (None: none)."""
        rt = self.rt
        now_ns = time.monotonic_ns()
        now = now_ns / 1e9
        deadlines: list[float] = []
        conn_ns = rt.conn.check_timers(now_ns)
        if conn_ns is not None:
            deadlines.append(conn_ns / 1e9)
        resyncing = rt.state.repl.is_resync
        if resyncing:
            rt.sync.update_progress(now)
            deadlines.append(now + RESYNC_PROGRESS_S)
        if resyncing or rt.state.repl in (ReplState.VerifyS, ReplState.VerifyT):
            rt.events.progress(now)         # events --statistics: done%, counters
            deadlines.append(now + RESYNC_PROGRESS_S)
        due = rt.disk.bitmap_deadline(resyncing)
        if due is not None and due <= now:
            rt.disk.store_bitmap()
            due = rt.disk.bitmap_deadline(resyncing)
        if due is not None:
            deadlines.append(due)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())
