# SPDX-License-Identifier: GPL-2.0-or-later
"""What happens to a replicated resource between commands: C's events and the peer's control frames.

Owns `ResourceEvents`, the part of ResourceRuntime run by its two background threads (the
control messages themselves are replica.protocol.repl_control's):

    event reader: select() on C's event fd ─┬─ al_miss ──► AL transaction (md_lock), set hot
                                            └─ others ──► queue
    monitor (every 0.1 s, under `lock`): queue ──► peer_lost/peer_protocol/io_error/peer_control
                                         tick  ──► ping-int/ping-timeout/timeout, resync
                                                   progress, bitmap persisted every 2 s
                                                   (0.5 s during a resync)
"""
import logging
import os
import queue
import select
import subprocess
import threading
import time
from dataclasses import replace

from replica import metadata as md_mod
from replica.errors import RemoteProtocolError, ReplicaError
from replica.protocol.repl_control import (ControlMessage, FullSyncRequest, Outdate,
                                           PeerDisconnect, PeerRefuse, PeerState, PeerUuids,
                                           SyncUuid, decode_control)
from replica.roles import Request
from replica.states import DiskState, Refusal, ReplState, Role
from replica.uuids import UuidFlag

log = logging.getLogger("replicad.resource")

HANDLER_TIMEOUT_S = 60.0
BITMAP_PERSIST_S = 2.0
BITMAP_PERSIST_RESYNC_S = 0.5     # changed pages only: one small write + fsync per interval


class ResourceEvents:
    """Mixin of ResourceRuntime: its background threads and the handling of peer messages."""

    def _on_control(self, msg: ControlMessage) -> None:
        s = self.state
        if isinstance(msg, PeerState):
            self._set_state(replace(s, peer_role=msg.role, peer_disk=msg.disk), "peer state")
        elif isinstance(msg, SyncUuid):
            if msg.full:
                self.md.bitmap.set_all()
            self._set_uuids(self.md.uuids.start_resync_target(msg.uuid),
                            "resync start (SyncTarget)")
            self._store_bitmap(force=True)
            self._set_state(replace(s, peer_disk=DiskState.UpToDate), "peer is SyncSource")
            if self.state.repl is not ReplState.SyncTarget:
                self._begin_target()
        elif isinstance(msg, PeerUuids):
            if UuidFlag.SKIP_INITIAL_SYNC in msg.flags:
                self._set_uuids(self.md.uuids.accept_skip_initial_sync(msg.uuids.current),
                                "peer: new-current-uuid --clear-bitmap")
                self.md.bitmap.clear_all()
                self._store_bitmap(force=True)
                self._set_state(replace(s, disk=DiskState.UpToDate, peer_disk=DiskState.UpToDate),
                                "initial sync skipped")
            elif s.repl.is_sync_target:
                if not self.disk_usable_after_resync():
                    return
                self._finish_progress()
                self.md.bitmap.clear_all()
                self._set_uuids(self.md.uuids.finish_resync_target(msg.uuids), "resync finished")
                self._store_bitmap(force=True)
                self._set_state(self._request(Request.SYNC_FINISHED, "resync"), "resync finished")
                self._send_state()
        elif isinstance(msg, FullSyncRequest):
            if s.disk is not DiskState.UpToDate or s.repl.is_resync:
                log.warning("%s: peer asked for a full sync, but %s", self.name,
                            Refusal.NO_UP_TO_DATE_DISK if s.disk is not DiskState.UpToDate
                            else Refusal.RESYNC_RUNNING)
                return
            log.info("%s: peer invalidated its disk: full sync as SyncSource", self.name)
            self._begin_source(full=True)
        elif isinstance(msg, Outdate):
            if s.disk.rank >= DiskState.Outdated.rank and s.role is not Role.Primary:
                self._set_state(replace(s, disk=DiskState.Outdated), "outdated by the peer")
        elif isinstance(msg, PeerDisconnect):
            self._lost("peer disconnected")
        elif isinstance(msg, PeerRefuse):
            self._lost(f"peer refused: {msg.reason}")

    # --- background threads ----------------------------------------------------------------

    def _event_reader(self) -> None:
        engine = self.engine
        efd = engine.event_fd()
        while not self._threads_stop.is_set():
            ready, _, _ = select.select([efd], [], [], 0.2)
            if not ready:
                continue
            for ev in engine.next_events():
                if ev.type == "al_miss":
                    self._al_miss(ev.offset)
                else:
                    self._events.put(ev)

    def _al_miss(self, extent: int) -> None:
        """A writer waits for `extent`. When the AL is full its least recently used extent
        leaves: C marks it cold and waits for the writes in flight to it (acknowledged by the
        peer or marked out of sync) before the transaction that drops it is written, as DRBD
        waits for an extent's reference count. The wait happens outside md_lock, so the
        monitor can still time the peer out and end those writes."""
        if self.engine.disk_failed():
            self.engine.al_set_hot(extent, True)    # no disk to log to: nothing to replay
            return
        with self.md_lock:
            victim = self.md.al_victim(extent)
        if victim is not None:
            while not self.engine.al_evict(victim, timeout_s=0.2):
                if self._threads_stop.is_set():
                    self.engine.al_set_hot(victim, True)     # still in the on-disk AL
                    return
        with self.md_lock:
            try:
                self.md.al_make_hot(extent, can_evict=lambda e: e == victim)
            except (md_mod.MetadataError, OSError, ValueError) as exc:
                log.error("%s: activity log: extent %d: %s", self.name, extent, exc)
                if victim is not None:
                    self.engine.al_set_hot(victim, True)     # the transaction did not drop it
                return
        self.engine.al_set_hot(extent, True)

    def _monitor(self) -> None:
        while not self._threads_stop.is_set():
            try:
                ev = self._events.get(timeout=0.1)
            except queue.Empty:
                ev = None
            # detach holds `lock` while it joins this thread: never block on it for long
            while not self.lock.acquire(timeout=0.1):
                if self._threads_stop.is_set():
                    return
            try:
                if self.engine is None or self._threads_stop.is_set():
                    return
                if ev is not None:
                    self._on_event(ev)
                self._tick()
            except (ReplicaError, OSError) as exc:
                log.error("%s: %s", self.name, exc)
            finally:
                self.lock.release()

    def _on_event(self, ev) -> None:
        peer = self.link.peer_text if self.link else "peer"
        if ev.type == "peer_lost":
            self._lost(f"{os.strerror(ev.err)}" if ev.err else "peer closed the connection")
        elif ev.type == "peer_protocol":
            log.error("%s: protocol error from %s: malformed or unexpected frame type 0x%02x",
                      self.name, peer, ev.offset)
            self._lost("protocol error")
        elif ev.type == "io_error":
            log.error("%s: local I/O error: offset=%d length=%d: %s", self.name, ev.offset,
                      ev.length, os.strerror(ev.err) if ev.err else "error")
            self._on_io_error(ev)
        elif ev.type == "peer_control":
            while self.engine is not None:
                raw = self.engine.recv_control()
                if not raw:
                    break
                try:
                    self._on_control(decode_control(raw))
                except RemoteProtocolError as exc:
                    log.error("%s: from %s: %s", self.name, peer, exc)
                    self._lost("protocol error")
                    break

    def _tick(self) -> None:
        s = self.state
        now = time.monotonic()
        if s.is_connected:
            st = self.engine.stats()
            if not st.get("peer_connected", 1):
                return                           # peer_lost is queued
            now_ns = time.monotonic_ns()
            net = self.resource.net
            # a link that never carried a frame counts as heard from when it was attached
            last_rx = max(st.get("peer_last_rx_ns", 0), self._attached_ns)
            if self._ping_sent_ns and last_rx > self._ping_sent_ns:
                self._ping_sent_ns = 0
            if self._ping_sent_ns:
                if now_ns - self._ping_sent_ns > net.ping_timeout_s * 1e9:
                    self._lost(f"PingAck did not arrive in time (ping-timeout "
                               f"{net.ping_timeout_s:g} s)")
                    return
            elif last_rx and now_ns - last_rx > net.ping_int_s * 1e9:
                self._ping_sent_ns = now_ns
                self.engine.peer_ping()
            # DRBD's request timer: one request unanswered for ko-count * timeout expels the
            # peer (0 disables it; a silent peer is still caught by the pings above).
            oldest = st.get("peer_oldest_pending_ns", 0)
            waited_ms = (now_ns - oldest) // 1_000_000 if oldest else 0
            if net.ko_count and waited_ms > net.ko_count * net.timeout_s * 1000:
                self._lost(f"Remote failed to finish a request within {waited_ms}ms > ko-count "
                           f"({net.ko_count}) * timeout ({round(net.timeout_s * 10)} * 0.1s)")
                return
            if self.progress is not None:
                self.progress.update(self.progress.total_bytes - self.md.bitmap.dirty_bytes(), now)
        # during a resync the bitmap is what a crashed node resumes from: keep it close
        if now - self._bm_stored_at >= (BITMAP_PERSIST_RESYNC_S if s.repl.is_resync
                                        else BITMAP_PERSIST_S):
            self._store_bitmap()

    def _run_handler(self, which: str) -> None:
        cmd = self.resource.handlers.get(which)
        if not cmd:
            return
        env = dict(os.environ, DRBD_RESOURCE=self.name, REPLICA_RESOURCE=self.name,
                   DRBD_PEER=self.peer_host.name if self.peer_host else "",
                   DRBD_MY_ADDRESS=self.host.address[0] if self.host.address else "")
        log.info("%s: helper command: %s %s", self.name, which, cmd)

        def run():
            try:
                rc = subprocess.run(cmd, shell=True, env=env, stdin=subprocess.DEVNULL,
                                    timeout=HANDLER_TIMEOUT_S).returncode
                log.info("%s: helper command: %s exit code %d", self.name, which, rc)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("%s: helper command: %s: %s", self.name, which, exc)
        threading.Thread(target=run, name=f"handler[{self.name}]", daemon=True).start()

