# SPDX-License-Identifier: GPL-2.0-or-later
"""The connection of one resource to its peer: link, handshake verdict, control messages, timers.

Owns `PeerConnection`: the PeerLink (replica.peer_link: TCP, handshake, reconnect), what the
handshake's verdict does, the control messages exchanged afterwards (codec:
replica.protocol.repl_control), and the connection's timers (ping-int, ping-timeout,
ko-count * timeout). States change through the runtime (replica.resource), UUIDs and bitmap
through the disk (replica.disk), resyncs through sync (replica.sync). The PeerLink thread
calls back in under the runtime's `lock`::

    connect ──► PeerLink started (Connecting)
    PeerLink: hello_info(), encoded_bitmap() ──► handshake ──► one of
        link_established(sock, done, bitmap): size mismatch / split brain / unrelated data
            ──► StandAlone (handlers run) | Connected: C attached, maybe a resync starts
            (first, outside the lock and before C has the socket, the handlers DRBD waits
            for: initial-split-brain of a resolved split brain, before-resync-target; the
            loser of call-pri-lost-after-sb steps down to Secondary)
        discard_network_config(): authentication failed, incompatible net settings
            ──► StandAlone until the next connect (DRBD "Discarding network configuration.")
    disconnect / lost(why) ──► drop(): C detached, resync stopped, new current UUID if a
                               Primary is left alone, bitmap stored, PeerLink reconnects
"""
import logging
import os
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from replica.bitmap import Bitmap
from replica.errors import RemoteProtocolError
from replica.mirror import MirrorEvent
from replica.peer_link import PeerLink
from replica.protocol import repl
from replica.protocol.repl_control import (
    ControlMessage,
    FullSyncRequest,
    Outdate,
    PeerDisconnect,
    PeerRefuse,
    PeerState,
    PeerUuids,
    ResyncPause,
    SyncUuid,
    VerifyEnd,
    VerifyStart,
    decode_control,
    encode_control,
)
from replica.roles import Request, ResourceState, apply_handshake, apply_split_brain, needs_new_current_uuid
from replica.states import ConnState, DiskState, Refusal, ReplState, Role
from replica.uuids import UuidFlag
from replica.verify import check_alg

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")


class PeerConnection:
    def __init__(self, rt: "ResourceRuntime"):
        self.rt = rt
        self.name = rt.name
        self.link: PeerLink | None = None
        self.standalone_reason = ""           # why the peer link gave up for good
        self._discard_my_data = False
        self._ping_sent_ns = 0
        self._attached_ns = 0

    @property
    def peer_text(self) -> str:
        return self.link.peer_text if self.link else "peer"

    @property
    def last_error(self) -> str:
        return self.link.last_error if self.link else self.standalone_reason

    @property
    def tls_text(self) -> str:
        """The TLS session of the link in use ("TLSv1.3 TLS_AES_128_GCM_SHA256 peer /CN=beta")."""
        return self.link.tls_text if self.link else ""

    @property
    def tls_error(self) -> str:
        """Why the last TLS handshake failed ("" once one succeeded)."""
        return self.link.tls_error if self.link else ""

    # --- connect/disconnect ---------------------------------------------------------------------

    def connect(self, discard_my_data: bool = False) -> None:
        rt = self.rt
        if rt.peer_host is None:
            raise Refusal.NO_NET_CONFIG.error(self.name)
        new = rt.request(Request.CONNECT, "connect")
        self._discard_my_data = discard_my_data
        self.standalone_reason = ""
        host = rt.host
        if host.address is None or rt.peer_host.address is None:
            raise Refusal.NO_NET_CONFIG.error(self.name)
        check_alg("data-integrity-alg", rt.resource.net.data_integrity_alg)
        check_alg("verify-alg", rt.resource.net.verify_alg)
        self.link = PeerLink(self, node=host.name, peer=rt.peer_host.name,
                             local_addr=host.address, peer_addr=rt.peer_host.address,
                             net=rt.resource.net)
        self.link.start()
        rt.set_state(new, "connect" + (" --discard-my-data" if discard_my_data else ""))

    def disconnect(self) -> None:
        rt = self.rt
        if rt.state.conn is ConnState.StandAlone and self.link is None:
            return                      # drbd: disconnecting a StandAlone device succeeds
        new = rt.request(Request.DISCONNECT, "disconnect")
        if rt.state.is_connected and rt.disk.engine is not None:
            if new.peer_disk is DiskState.Outdated:
                self.send_control(Outdate())
            self.send_control(PeerDisconnect())
        self.drop(new, "disconnect")
        link, self.link = self.link, None
        if link is not None:
            link.stop()

    def drop(self, new: ResourceState, why: str) -> None:
        """Common part of disconnect and connection loss: detach C, stop resync, new UUID."""
        rt, disk = self.rt, self.rt.disk
        old = rt.state
        if disk.engine is not None and old.is_connected:
            disk.engine.peer_detach()       # first: a resync_send blocked in C returns
        rt.sync.stop()
        if disk.has_md and old.disk is not DiskState.Diskless and needs_new_current_uuid(
                old, new, forced=False, bitmap_uuid=disk.uuids.bitmap):
            disk.new_current_uuid(f"{why}: Primary without peer", old.role is Role.Primary)
        rt.set_state(new, why)
        disk.store_bitmap()
        if self.link is not None:
            self.link.link_down()

    def disconnect_after_handler(self, rc: int | None, which: str = "before-resync-target") -> None:
        """before-resync-target/-source failed: DRBD drops the connection (C_DISCONNECTING:
        StandAlone)."""
        log.error("%s: %s handler returned %s, dropping connection.", self.name, which, rc)
        self.disconnect()
        self.standalone_reason = f"{which} handler returned {rc}"

    def lost(self, why: str) -> None:
        if not self.rt.state.is_connected:
            return
        log.warning("%s: connection to %s lost: %s", self.name, self.peer_text, why)
        self.drop(self.rt.request(Request.CONNECTION_LOST, "connection lost"), "connection lost")
        self.rt.fencing.peer_lost()

    def stop_link(self) -> None:
        """down/detach: the link goes too (no Diskless-over-the-network mode)."""
        if self.link is not None:
            self.disconnect()

    # --- sending -------------------------------------------------------------------------------

    def send_control(self, msg: ControlMessage) -> None:
        engine = self.rt.disk.engine
        if engine is None:
            return
        try:
            engine.send_control(encode_control(msg))
        except OSError as exc:
            log.warning("%s: send to peer: %s", self.name, exc)

    def send_state(self) -> None:
        s = self.rt.state
        if s.is_connected:
            self.send_control(PeerState(s.role, s.disk, self.rt.disk.uuids.current))

    # --- peer link callbacks (PeerLink thread) ---------------------------------------------

    def hello_info(self) -> repl.HelloInfo:
        rt, disk = self.rt, self.rt.disk
        with rt.lock:
            with disk.md_lock:
                md = disk.meta()
                return repl.HelloInfo(
                    node_name=rt.host.name, data_size=disk.size,
                    uuids=md.uuids.with_role(rt.state.role is Role.Primary),
                    role=rt.state.role, disk=rt.state.disk,
                    flags=md.uuid_flags(discard_my_data=self._discard_my_data),
                    bits=md.bitmap.count(),
                    settings=repl.LinkSettings.from_net(rt.resource.net))

    def encoded_bitmap(self) -> bytes:
        return self.rt.disk.meta().bitmap.encode()

    def discard_network_config(self, link: PeerLink, why: str) -> None:
        """The handshake failed for good (authentication, incompatible net settings): StandAlone
        until the next `connect`, as DRBD does; the PeerLink thread ends after this."""
        rt = self.rt
        with rt.lock:
            if self.link is not link:
                return                      # disconnected meanwhile, or a newer link
            self.link = None
            self.standalone_reason = why
            rt.set_state(apply_split_brain(rt.state), "network configuration discarded")

    def may_demote(self) -> bool:
        """For the handshake (PeerLink thread): we are Primary and nobody holds the device, so
        after-sb call-pri-lost-after-sb may make us Secondary (DRBD tries the same)."""
        rt = self.rt
        with rt.lock:
            return rt.may_step_down()

    def _before_sync(self, link: PeerLink, done: repl.HandshakeDone) -> bool:
        """Outside the runtime's lock, before the verdict is applied: the handlers DRBD calls
        from the handshake, in its order and waiting for each (initial-split-brain when a split
        brain was resolved; before-resync-target before this node becomes SyncTarget). False if
        before-resync-target failed: then the connection is dropped, StandAlone."""
        rt, v = self.rt, done.verdict
        if v.decision.drops_connection or done.peer.data_size != rt.disk.size:
            return True
        if v.split_brain:
            log.warning("%s: %s", self.name, v.reason)
        for which in v.handlers:
            rt.run_handler_wait(which)
        if not v.decision.is_sync_target:
            return True
        rc = rt.sync.before_target()
        if rc == 0:
            return True
        log.error("%s: before-resync-target handler returned %s, dropping connection.",
                  self.name, rc)
        with rt.lock:
            if self.link is link:
                self.link = None
                self.standalone_reason = f"before-resync-target handler returned {rc}"
                # DRBD adopts the SyncSource's sync UUID before it calls the handler: the next
                # connect then finds rule 50 (bitmap-peer) instead of a split brain the peer's
                # UUID rotation made unrelated. Our data is untouched; the bitmaps keep the
                # blocks to resync.
                sync_uuid = done.peer.uuids.next_sync_uuid()
                if sync_uuid is not None and rt.disk.has_md:
                    rt.disk.set_uuids(rt.disk.uuids.start_resync_target(sync_uuid),
                                      "before-resync-target failed: the peer's sync UUID",
                                      rt.state.role is Role.Primary)
                rt.set_state(apply_split_brain(rt.state), "before-resync-target failed")
        return False

    def link_established(self, sock: socket.socket, done: repl.HandshakeDone,
                         peer_bitmap: Bitmap | None) -> bool:
        """Apply the handshake's verdict; attach C to the socket. False: stay StandAlone."""
        rt, disk = self.rt, self.rt.disk
        link = self.link
        if link is None or not self._before_sync(link, done):
            return False
        with rt.lock:
            if self.link is None or disk.engine is None:
                return False
            v = done.verdict
            peer = self.link.peer_text
            size = disk.size
            log.info("%s: handshake with %s: %s; self %s, peer %s", self.name, peer, v.reason,
                     disk.uuids.text(), done.peer.uuids.text())
            if done.peer.data_size != size:
                # every block must exist on both sides: no shrinking to the smaller disk yet
                log.error("%s: peer %s: data size mismatch: local %d bytes, peer %d bytes: "
                          "dropping connection (use backing disks of the same size)", self.name,
                          peer, size, done.peer.data_size)
                self.link.last_error = (f"data size mismatch: local {size}, peer "
                                        f"{done.peer.data_size} bytes")
                rt.set_state(apply_split_brain(rt.state), "data size mismatch")
                self.link = None
                self.standalone_reason = f"peer {peer}: data size mismatch"
                return False
            if v.decision.drops_connection or (v.demote and not rt.may_step_down()):
                why, handlers = v.reason, v.handlers
                if not v.decision.drops_connection:
                    # opened since the handshake asked (initial-split-brain ran): DRBD's
                    # failed demotion
                    why = "Split-Brain detected but unresolved, dropping connection!"
                    handlers = ("pri-lost-after-sb", "split-brain")
                if v.split_brain:
                    log.error("%s: %s (peer %s)", self.name, why, peer)
                else:
                    log.error("%s: %s (peer %s): dropping connection", self.name, why, peer)
                rt.set_state(apply_split_brain(rt.state), str(v.decision))
                self.link = None
                self.standalone_reason = f"peer {peer}: {why}"
                if handlers:
                    rt.run_handler(*handlers)
                return False
            if v.demote:
                log.warning("%s: Successfully gave up primary role.", self.name)
                rt._device_down()
                rt.set_state(replace(rt.state, role=Role.Secondary), "pri-lost-after-sb")
            self._discard_my_data = False
            d = v.decision
            bm = disk.meta().bitmap
            if d.is_full:
                bm.set_all()
            elif d.is_bitmap and peer_bitmap is not None:
                # C may be setting bits right now (a Primary writing without peer): widen each
                # run to whole bytes so Python only ever stores 0xFF bytes and cannot undo a
                # bit C sets concurrently in the same byte (a few extra blocks resync, never fewer)
                for a, b in peer_bitmap.iter_dirty_runs():
                    bm.set_bits(a & ~7, min(bm.nbits, (b + 7) & ~7))
            sync_source = True if d.is_sync_source else False if d.is_sync_target else None
            new = apply_handshake(rt.state, peer_role=done.peer.role,
                                  peer_disk=done.peer.disk, sync_source=sync_source)
            disk.engine.peer_attach(sock.fileno(), rt.resource.net.protocol,
                                    rt.resource.net.data_integrity_alg,
                                    max_buffers=rt.resource.net.max_buffers, tls=self.link.tls_session)
            self._ping_sent_ns = 0
            self._attached_ns = time.monotonic_ns()
            hello_disk = rt.state.disk
            rt.set_state(new, f"connected to {peer}, {d}")
            if v.demote or (new.disk is not hello_disk
                            and not (d.is_sync_source or d.is_sync_target)):
                self.send_state()       # the peer saw our hello's role / disk (Outdated -> UpToDate)
            if d.is_sync_target:
                rt.sync.begin_target()
            elif d.is_sync_source:
                rt.sync.begin_source(full=d.is_full,
                                     peer_crashed=UuidFlag.CRASHED_PRIMARY in done.peer.flags)
                if self.link is None:           # before-resync-source said no: dropped
                    return False
            rt.monitor.wake()                   # the ping timer starts now
            return True

    # --- what C reports (monitor thread, under the runtime's lock) ---------------------------

    def on_engine_event(self, ev: MirrorEvent) -> None:
        peer = self.peer_text
        if ev.type == "peer_lost":
            self.lost(f"{os.strerror(ev.err)}" if ev.err else "peer closed the connection")
        elif ev.type == "peer_protocol":
            log.error("%s: protocol error from %s: malformed or unexpected frame type 0x%02x",
                      self.name, peer, ev.offset)
            self.lost("protocol error")
        elif ev.type == "verify_oos":
            self.rt.sync.verify.on_out_of_sync(ev.offset, ev.length)
        elif ev.type == "integrity":
            # DRBD: "Digest integrity check FAILED: %llus +%u"; C drops the link (peer_lost
            # follows), the sender keeps the block out of sync and resyncs it
            log.error("%s: Digest integrity check FAILED: %ds +%d (from %s)", self.name,
                      ev.offset // 512, ev.length, peer)
        elif ev.type == "peer_control":
            while (engine := self.rt.disk.engine) is not None:
                raw = engine.recv_control()
                if not raw:
                    break
                try:
                    self.on_control(decode_control(raw))
                except RemoteProtocolError as exc:
                    log.error("%s: from %s: %s", self.name, peer, exc)
                    self.lost("protocol error")
                    break

    def on_control(self, msg: ControlMessage) -> None:
        rt, disk, sync = self.rt, self.rt.disk, self.rt.sync
        s = rt.state
        primary = s.role is Role.Primary
        if isinstance(msg, PeerState):
            rt.set_state(replace(s, peer_role=msg.role, peer_disk=msg.disk), "peer state")
        elif isinstance(msg, SyncUuid):
            if rc := sync.before_target():             # 0 if it ran for this resync
                self.disconnect_after_handler(rc)
                return
            if msg.full:
                disk.set_all_out_of_sync()
            disk.set_uuids(disk.uuids.start_resync_target(msg.uuid), "resync start (SyncTarget)",
                           primary)
            disk.store_bitmap(force=True)
            rt.set_state(replace(s, peer_disk=DiskState.UpToDate), "peer is SyncSource")
            if rt.state.repl is not ReplState.SyncTarget:
                sync.begin_target()
        elif isinstance(msg, PeerUuids):
            if UuidFlag.SKIP_INITIAL_SYNC in msg.flags:
                disk.set_uuids(disk.uuids.accept_skip_initial_sync(msg.uuids.current),
                               "peer: new-current-uuid --clear-bitmap", primary)
                disk.clear_out_of_sync()
                disk.store_bitmap(force=True)
                rt.set_state(replace(s, disk=DiskState.UpToDate, peer_disk=DiskState.UpToDate),
                             "initial sync skipped")
            elif s.repl.is_sync_target:
                if not sync.disk_usable_after_resync():
                    return
                sync.finish_progress()
                disk.clear_out_of_sync()
                disk.set_uuids(disk.uuids.finish_resync_target(msg.uuids), "resync finished",
                               primary)
                disk.store_bitmap(force=True)
                rt.set_state(rt.request(Request.SYNC_FINISHED, "resync"), "resync finished")
                self.send_state()
                rt.run_handler("after-resync-target")
        elif isinstance(msg, FullSyncRequest):
            if s.disk is not DiskState.UpToDate or s.repl.is_resync:
                log.warning("%s: peer asked for a full sync, but %s", self.name,
                            Refusal.NO_UP_TO_DATE_DISK if s.disk is not DiskState.UpToDate
                            else Refusal.RESYNC_RUNNING)
                return
            log.info("%s: peer invalidated its disk: full sync as SyncSource", self.name)
            sync.begin_source(full=True)
        elif isinstance(msg, Outdate):
            if s.disk.rank >= DiskState.Outdated.rank and s.role is not Role.Primary:
                rt.set_state(replace(s, disk=DiskState.Outdated), "outdated by the peer")
        elif isinstance(msg, PeerDisconnect):
            self.lost("peer disconnected")
        elif isinstance(msg, PeerRefuse):
            self.lost(f"peer refused: {msg.reason}")
        elif isinstance(msg, ResyncPause):
            sync.on_peer_pause(msg.paused)
        elif isinstance(msg, VerifyStart):
            sync.verify.on_peer_start(msg)
        elif isinstance(msg, VerifyEnd):
            sync.verify.on_peer_end(msg)

    def check_timers(self, now_ns: int) -> int | None:
        """ping-int, ping-timeout and DRBD's request timer (ko-count * timeout); returns the
        next deadline (monotonic ns) while Connected, None otherwise."""
        if not self.rt.state.is_connected or self.rt.disk.engine is None:
            return None
        st = self.rt.disk.engine.stats()
        if not st.get("peer_connected", 1):
            return None                          # peer_lost is queued
        net = self.rt.resource.net
        ping_int_ns, ping_timeout_ns = int(net.ping_int_s * 1e9), int(net.ping_timeout_s * 1e9)
        # a link that never carried a frame counts as heard from when it was attached
        last_rx = max(st.get("peer_last_rx_ns", 0), self._attached_ns)
        if self._ping_sent_ns and last_rx > self._ping_sent_ns:
            self._ping_sent_ns = 0
        if self._ping_sent_ns:
            if now_ns - self._ping_sent_ns > ping_timeout_ns:
                self.lost(f"PingAck did not arrive in time (ping-timeout "
                          f"{net.ping_timeout_s:g} s)")
                return None
            deadline = self._ping_sent_ns + ping_timeout_ns + 1
        elif now_ns - last_rx > ping_int_ns:
            self._ping_sent_ns = now_ns
            self.rt.disk.engine.peer_ping()
            deadline = now_ns + ping_timeout_ns + 1
        else:
            deadline = last_rx + ping_int_ns + 1
        # DRBD's request timer: one request unanswered for ko-count * timeout expels the
        # peer (0 disables it; a silent peer is still caught by the pings above). Checked
        # when the ping timer is due, or at the oldest request's own deadline while one waits.
        oldest = st.get("peer_oldest_pending_ns", 0)
        if net.ko_count and oldest:
            waited_ms = (now_ns - oldest) // 1_000_000
            limit_ms = net.ko_count * net.timeout_s * 1000
            if waited_ms > limit_ms:
                self.lost(f"Remote failed to finish a request within {waited_ms}ms > ko-count "
                          f"({net.ko_count}) * timeout ({round(net.timeout_s * 10)} * 0.1s)")
                return None
            deadline = min(deadline, oldest + int(limit_ms * 1_000_000) + 1_000_000)
        return deadline
