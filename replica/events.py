# SPDX-License-Identifier: GPL-2.0-or-later
"""What happens to a replicated resource between commands: C's events and the peer's control frames.

Owns:
- the control messages exchanged after the handshake, as events (`decode_control` turns one
  whole frame from C's control queue into one of them, or raises RemoteProtocolError; the
  `encode_*` helpers build them), and
- `ResourceEvents`, the part of ResourceRuntime run by its two background threads:

    event reader: select() on C's event fd ─┬─ al_miss ──► AL transaction (md_lock), set hot
                                            └─ others ──► queue
    monitor (every 0.1 s, under `lock`): queue ──► peer_lost/peer_protocol/io_error/peer_control
                                         tick  ──► ping-int/ping-timeout/timeout, resync
                                                   progress, bitmap persisted every 2 s
                                                   (0.5 s during a resync)

Control messages (frame type, fields)::

    PeerState       STATE         aux = role << 8 | disk           role/disk changed
    SyncUuid        SYNC_UUID     offset = sync UUID, aux = full   SyncSource starts a resync
    PeerUuids       UUIDS         tuple + flags                    resync finished (target adopts
                                                                   it) or SKIP_INITIAL_SYNC
    FullSyncRequest SYNC_DECISION aux = FullSyncSource             `invalidate` on the peer
    Outdate         OUTDATE                                        graceful disconnect of a Primary
    PeerDisconnect  DISCONNECT                                     `disconnect` on the peer
    PeerRefuse      REFUSE        payload = reason                 the peer drops the link
"""
import logging
import os
import queue
import select
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from replica import metadata as md_mod
from replica import mirror
from replica.errors import RemoteProtocolError, ReplicaError
from replica.protocol import repl
from replica.protocol.repl_wire import ReplPacket, WireDisk, WireRole
from replica.roles import Request
from replica.states import DiskState, Refusal, ReplState, Role
from replica.uuids import GenerationUuids, SyncDecision, UuidFlag

log = logging.getLogger("replicad.resource")

HANDLER_TIMEOUT_S = 60.0
BITMAP_PERSIST_S = 2.0
BITMAP_PERSIST_RESYNC_S = 0.5     # changed pages only: one small write + fsync per interval
_ROLE_WIRE = {Role.Unknown: WireRole.UNKNOWN, Role.Primary: WireRole.PRIMARY,
              Role.Secondary: WireRole.SECONDARY}
_WIRE_ROLE = {int(v): k for k, v in _ROLE_WIRE.items()}
_DISK_WIRE = {d: WireDisk[d.name.upper()] for d in DiskState}
_WIRE_DISK = {int(v): k for k, v in _DISK_WIRE.items()}
_FULL_SYNC_SOURCE = SyncDecision.FullSyncSource.hg & 0xFFFFFFFF


# --- control messages --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PeerState:
    role: Role
    disk: DiskState


@dataclass(frozen=True, slots=True)
class SyncUuid:
    uuid: int
    full: bool


@dataclass(frozen=True, slots=True)
class PeerUuids:
    uuids: GenerationUuids
    flags: UuidFlag


@dataclass(frozen=True, slots=True)
class FullSyncRequest:
    pass


@dataclass(frozen=True, slots=True)
class Outdate:
    pass


@dataclass(frozen=True, slots=True)
class PeerDisconnect:
    pass


@dataclass(frozen=True, slots=True)
class PeerRefuse:
    reason: str


ControlMessage = (PeerState | SyncUuid | PeerUuids | FullSyncRequest | Outdate | PeerDisconnect
                  | PeerRefuse)


def decode_control(raw: bytes) -> ControlMessage:
    """One whole control frame (header + payload) -> its message; RemoteProtocolError otherwise."""
    dec = repl.ReplDecoder(max_payload=mirror.MAX_CONTROL_PAYLOAD)
    dec.receive_data(raw)
    dec.receive_data(b"")
    frame = dec.next_event()
    if not isinstance(frame, repl.Frame) or dec.buffered:
        raise RemoteProtocolError(f"repl: control frame: expected exactly one frame in "
                                  f"{len(raw)} bytes")
    t = frame.type
    if t is ReplPacket.STATE:
        role, disk = _WIRE_ROLE.get((frame.aux >> 8) & 0xFF), _WIRE_DISK.get(frame.aux & 0xFF)
        if role is None or disk is None or frame.aux >> 16:
            raise RemoteProtocolError(f"repl: STATE: invalid role/disk: aux=0x{frame.aux:08x}")
        return PeerState(role, disk)
    if t is ReplPacket.SYNC_UUID:
        if frame.aux not in (0, 1) or frame.offset in (0, 4):
            raise RemoteProtocolError(f"repl: SYNC_UUID: invalid: uuid={frame.offset:016X} "
                                      f"aux={frame.aux}")
        return SyncUuid(frame.offset, bool(frame.aux))
    if t is ReplPacket.UUIDS:
        uuids, flags = repl.decode_uuids(frame)
        return PeerUuids(uuids, flags)
    if t is ReplPacket.SYNC_DECISION and frame.aux == _FULL_SYNC_SOURCE:
        return FullSyncRequest()
    if t is ReplPacket.OUTDATE:
        return Outdate()
    if t is ReplPacket.DISCONNECT:
        return PeerDisconnect()
    if t is ReplPacket.REFUSE:
        return PeerRefuse(frame.payload.decode("utf-8", "replace"))
    raise RemoteProtocolError(f"repl: unexpected control frame {t.name} (aux={frame.aux}) after "
                              "the handshake")


def encode_state(role: Role, disk: DiskState, current_uuid: int) -> bytes:
    return repl.encode_simple(ReplPacket.STATE, offset=current_uuid,
                              aux=(_ROLE_WIRE[role] << 8) | _DISK_WIRE[disk])


def encode_sync_uuid(uuid: int, full: bool) -> bytes:
    return repl.encode_simple(ReplPacket.SYNC_UUID, offset=uuid, aux=int(full))


def encode_full_sync_request() -> bytes:
    return repl.encode_simple(ReplPacket.SYNC_DECISION, aux=_FULL_SYNC_SOURCE)


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

