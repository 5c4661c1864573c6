# SPDX-License-Identifier: GPL-2.0-or-later
"""One resource's lines on replicad's event bus (replica.events): what ResourceRuntime tells it.

Owns `ResourceEvents`, composed into the runtime as `rt.events` beside disk, conn, sync...:

    rt.set_state(old -> new)      changed(old, new)    change lines (only what differs)
    attach / standalone up        created(state)       create resource, connection, device...
    detach / down                 destroyed()          destroy ..., innermost first
    handler runner                helper(which[, rc])  call helper / response helper status:rc
    suspend-io / resume-io        suspended()          change resource suspended:fencing|no
    monitor tick (resync/verify)  progress(now)        --statistics change peer-device ... done:
    `events` (the daemon)         snapshot()           exists lines, under the runtime's lock

Lines are built only while someone subscribes (`bus.has_subscribers`); nothing here walks /proc
or blocks: every call comes from under the runtime's `lock`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from replica.events import (
    Event,
    EventBus,
    Identity,
    change_events,
    destroy_events,
    exists_events,
    helper_events,
    progress_event,
    suspended_text,
)

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime
    from replica.roles import ResourceState

PROGRESS_INTERVAL_S = 1.0       # --statistics resync/verify progress lines at most this often


class ResourceEvents:
    def __init__(self, rt: ResourceRuntime, bus: EventBus):
        self.rt = rt
        self.bus = bus
        self._progress_at = 0.0             # when the last periodic progress line went out

    @property
    def identity(self) -> Identity:
        rt = self.rt
        peer = rt.peer_host
        peer_id = 1
        if peer is not None:
            peer_id = peer.node_id if peer.node_id is not None else list(rt.resource.hosts).index(peer.name)
        return Identity(rt.name, peer.name if peer is not None else None, peer_node_id=peer_id,
                        volume=rt.host.volume or 0, minor=rt.host.minor or 0)

    def view(self, state: ResourceState | None = None, counters: bool = True) -> dict[str, Any]:
        """What the lines show of `state` (default: now): states, and with `counters` the
        counters and progress (the old state of a change needs only its states)."""
        rt = self.rt
        s = rt.state if state is None else state
        view: dict[str, Any] = {
            "role": str(s.role), "io_suspended": rt.fencing.suspended,
            "connection": str(s.conn), "peer_role": str(s.peer_role),
            "disk_state": str(s.disk), "replication": str(s.repl),
            "peer_disk_state": str(s.peer_disk),
        }
        if not counters:
            return view
        engine = rt.disk.engine
        view.update(size=rt.disk.size, stats=engine.stats() if engine is not None else None,
                    al_writes=rt.disk.al_writes, bm_writes=rt.disk.bm_writes)
        if rt.disk.has_md:
            view["out_of_sync_bytes"] = rt.disk.out_of_sync_bytes()
        if state is None:
            now = time.monotonic()
            view["resync"] = rt.sync.status(now)
            view["verify"] = rt.sync.verify.status(now)
        return view

    def snapshot(self) -> list[Event]:
        """`exists` lines of the resource (none while it is not up)."""
        if not self.rt.is_up:
            return []
        return exists_events(self.identity, self.view())

    def changed(self, old: ResourceState, new: ResourceState) -> None:
        if self.bus.has_subscribers:
            self.bus.publish(change_events(self.identity, self.view(old, counters=False),
                                           self.view(new)))

    def created(self, state: ResourceState) -> None:
        if self.bus.has_subscribers:
            self.bus.publish(exists_events(self.identity, self.view(state), "create"))

    def destroyed(self) -> None:
        self.bus.publish(destroy_events(self.identity))

    def helper(self, which: str, rc: int | None = None) -> None:
        """`call helper` (rc None) or `response helper ... status:rc` (-1: could not run)."""
        self.bus.publish([helper_events(self.identity, which, rc)])

    def suspended(self) -> None:
        self.bus.publish([Event("change", "resource", (
            *self.identity.resource(), ("suspended", suspended_text(self.rt.fencing.suspended))))])

    def progress(self, now: float) -> None:
        """During a resync or verify: a --statistics `change peer-device` line at most every
        PROGRESS_INTERVAL_S (the monitor calls this on its progress tick)."""
        if now - self._progress_at < PROGRESS_INTERVAL_S or not self.bus.has_subscribers:
            return
        self._progress_at = now
        self.bus.publish([progress_event(self.identity, self.view())])
