# SPDX-License-Identifier: GPL-2.0-or-later
"""The network side of a replicated resource: connect/disconnect, the handshake's verdict, resync.

Owns `ResourceConnection`, a mixin of replica.resource.ResourceRuntime (which owns the disk,
the export, the roles and the state; replica.events owns the background threads). It is the
part the PeerLink thread calls back into, under the runtime's `lock`::

    connect ──► PeerLink started (Connecting)
    PeerLink: hello_info(), encoded_bitmap() ──► handshake ──► one of
        link_established(sock, done, bitmap): size mismatch / split brain / unrelated data
            ──► StandAlone (handlers run) | Connected: C attached, maybe _begin_source/_target
        discard_network_config(): authentication failed, incompatible net settings
            ──► StandAlone until the next connect (DRBD "Discarding network configuration.")
    disconnect / _lost(why) ──► _drop_link: C detached, resync stopped, new current UUID if a
                                Primary is left alone, bitmap stored, PeerLink reconnects
    resync: _begin_source (new bitmap UUID, SYNC_UUID, ResyncRunner) ... resync_finished
            _begin_target ... (events.py: PeerUuids) ... _finish_progress
"""
import logging
import time
from dataclasses import replace

from replica.peer_link import PeerLink, ResyncRunner
from replica.protocol import repl
from replica.protocol.repl_control import PeerState, SyncUuid, encode_control
from replica.protocol.repl_wire import ReplPacket
from replica.resync import ResyncProgress
from replica.roles import (Request, ResourceState, apply_handshake, apply_split_brain,
                           needs_new_current_uuid)
from replica.states import ConnState, DiskState, Refusal, ReplState, Role
from replica.uuids import MdFlag

log = logging.getLogger("replicad.resource")


class ResourceConnection:
    """Mixin of ResourceRuntime: its connection to the peer and the resyncs it starts."""

    # --- connect/disconnect ---------------------------------------------------------------------

    def connect(self, discard_my_data: bool = False) -> None:
        if self.peer_host is None:
            raise Refusal.NO_NET_CONFIG.error(self.name)
        new = self._request(Request.CONNECT, "connect")
        self._discard_my_data = discard_my_data
        self._standalone_reason = ""
        self.link = PeerLink(self, node=self.host.name, peer=self.peer_host.name,
                             local_addr=self.host.address, peer_addr=self.peer_host.address,
                             net=self.resource.net)
        self.link.start()
        self._set_state(new, "connect" + (" --discard-my-data" if discard_my_data else ""))

    def disconnect(self) -> None:
        if self.state.conn is ConnState.StandAlone and self.link is None:
            return                      # drbd: disconnecting a StandAlone device succeeds
        new = self._request(Request.DISCONNECT, "disconnect")
        if self.state.is_connected and self.engine is not None:
            if new.peer_disk is DiskState.Outdated:
                self._send(repl.encode_simple(ReplPacket.OUTDATE))
            self._send(repl.encode_simple(ReplPacket.DISCONNECT))
        self._drop_link(new, "disconnect")
        link, self.link = self.link, None
        if link is not None:
            link.stop()

    def _drop_link(self, new: ResourceState, why: str) -> None:
        """Common part of disconnect and connection loss: detach C, stop resync, new UUID."""
        old = self.state
        if self.engine is not None and old.is_connected:
            self.engine.peer_detach()       # first: a resync_send blocked in C returns
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        self.progress = None
        if self.md is not None and old.disk is not DiskState.Diskless and needs_new_current_uuid(
                old, new, forced=False, bitmap_uuid=self.md.uuids.bitmap):
            self._new_current_uuid(f"{why}: Primary without peer")
        self._set_state(new, why)
        self._store_bitmap()
        if self.link is not None:
            self.link.link_down()

    def _lost(self, why: str) -> None:
        if not self.state.is_connected:
            return
        log.warning("%s: connection to %s lost: %s", self.name, self.link.peer_text
                    if self.link else "peer", why)
        self._drop_link(self._request(Request.CONNECTION_LOST, "connection lost"),
                        "connection lost")

    def _send(self, frame: bytes) -> None:
        try:
            self.engine.send_control(frame)
        except OSError as exc:
            log.warning("%s: send to peer: %s", self.name, exc)

    def _send_state(self) -> None:
        if self.state.is_connected:
            self._send(encode_control(PeerState(self.state.role, self.state.disk,
                                                self.md.uuids.current)))

    # --- peer link callbacks (PeerLink thread) ---------------------------------------------

    def hello_info(self) -> repl.HelloInfo:
        with self.lock:
            with self.md_lock:
                return repl.HelloInfo(
                    node_name=self.host.name, data_size=self.size,
                    uuids=self.md.uuids.with_role(self.state.role is Role.Primary),
                    role=self.state.role, disk=self.state.disk,
                    flags=self.md.uuid_flags(discard_my_data=self._discard_my_data),
                    bits=self.md.bitmap.count(),
                    settings=repl.LinkSettings.from_net(self.resource.net))

    def encoded_bitmap(self) -> bytes:
        return self.md.bitmap.encode()

    def discard_network_config(self, link: PeerLink, why: str) -> None:
        """The handshake failed for good (authentication, incompatible net settings): StandAlone
        until the next `connect`, as DRBD does; the PeerLink thread ends after this."""
        with self.lock:
            if self.link is not link:
                return                      # disconnected meanwhile, or a newer link
            self.link = None
            self._standalone_reason = why
            self._set_state(apply_split_brain(self.state), "network configuration discarded")

    def link_established(self, sock, done: repl.HandshakeDone, peer_bitmap) -> bool:
        """Apply the handshake's verdict; attach C to the socket. False: stay StandAlone."""
        with self.lock:
            if self.link is None or self.engine is None:
                return False
            v = done.verdict
            peer = self.link.peer_text
            log.info("%s: handshake with %s: %s; self %s, peer %s", self.name, peer, v.reason,
                     self.md.uuids.text(), done.peer.uuids.text())
            if done.peer.data_size != self.size:
                # every block must exist on both sides: no shrinking to the smaller disk yet
                log.error("%s: peer %s: data size mismatch: local %d bytes, peer %d bytes: "
                          "dropping connection (use backing disks of the same size)", self.name,
                          peer, self.size, done.peer.data_size)
                self.link.last_error = (f"data size mismatch: local {self.size}, peer "
                                        f"{done.peer.data_size} bytes")
                self._set_state(apply_split_brain(self.state), "data size mismatch")
                self.link = None
                self._standalone_reason = f"peer {peer}: data size mismatch"
                return False
            if v.decision.drops_connection:
                if v.split_brain:
                    log.error("%s: Split-Brain detected but unresolved, dropping connection! "
                              "(peer %s)", self.name, peer)
                else:
                    log.error("%s: %s (peer %s): dropping connection", self.name, v.reason, peer)
                self._set_state(apply_split_brain(self.state), str(v.decision))
                self.link = None
                self._standalone_reason = f"peer {peer}: {v.reason}"
                if v.handler:
                    self._run_handler(v.handler)
                return False
            if v.split_brain:
                log.warning("%s: %s", self.name, v.reason)
                self._run_handler("initial-split-brain")
            self._discard_my_data = False
            d = v.decision
            bm = self.md.bitmap
            if d.is_full:
                bm.set_all()
            elif d.is_bitmap and peer_bitmap is not None:
                # C may be setting bits right now (a Primary writing without peer): widen each
                # run to whole bytes so Python only ever stores 0xFF bytes and cannot undo a
                # bit C sets concurrently in the same byte (a few extra blocks resync, never fewer)
                for a, b in peer_bitmap.iter_dirty_runs():
                    bm.set_bits(a & ~7, min(bm.nbits, (b + 7) & ~7))
            sync_source = True if d.is_sync_source else False if d.is_sync_target else None
            new = apply_handshake(self.state, peer_role=done.peer.role,
                                  peer_disk=done.peer.disk, sync_source=sync_source)
            self.engine.peer_attach(sock.fileno(), self.resource.net.protocol)
            self._ping_sent_ns = 0
            self._attached_ns = time.monotonic_ns()
            self._set_state(new, f"connected to {peer}, {d}")
            if d.is_sync_target:
                self._begin_target()
            elif d.is_sync_source:
                self._begin_source(full=d.is_full)
            return True

    # --- resync --------------------------------------------------------------------------------

    def _begin_source(self, full: bool) -> None:
        if full:
            self.md.bitmap.set_all()
        uuids, sync_uuid = self.md.uuids.start_resync_source(self.rng)
        self._set_uuids(uuids, "resync start (SyncSource)")
        self._store_bitmap(force=True)
        self._send(encode_control(SyncUuid(sync_uuid, full)))
        self._set_state(replace(self.state, repl=ReplState.SyncSource,
                                peer_disk=DiskState.Inconsistent), "resync start")
        total = self.md.bitmap.dirty_bytes()
        self._resync_started = time.monotonic()
        self.progress = ResyncProgress(total, self._resync_started)
        log.info("%s: resync started as SyncSource: %d KiB to send (%s), resync-rate %d KiB/s",
                 self.name, total // 1024, "full" if full else "bitmap",
                 self.resource.disk.resync_rate_bps // 1024)
        self.runner = ResyncRunner(self, self.engine, self.md.bitmap,
                                   self.resource.disk.resync_rate_bps)
        self.runner.start()

    def _begin_target(self) -> None:
        self._set_state(replace(self.state, repl=ReplState.SyncTarget, disk=DiskState.Inconsistent),
                        "resync start")
        self._resync_started = time.monotonic()
        self.progress = ResyncProgress(self.md.bitmap.dirty_bytes(), self._resync_started)

    def resync_finished(self, runner: ResyncRunner) -> None:
        with self.lock:
            if runner is not self.runner:
                return
            self.runner = None
            self._finish_progress()
            self._set_uuids(self.md.uuids.finish_resync_source(), "resync finished")
            if MdFlag.CRASHED_PRIMARY in self.md.flags:
                with self.md_lock:
                    self.md.set_flags(clear=MdFlag.CRASHED_PRIMARY)
            self._store_bitmap(force=True)
            self._send(repl.encode_uuids(self.md.uuids))
            self._set_state(self._request(Request.SYNC_FINISHED, "resync"), "resync finished")
            self._send_state()

    def _finish_progress(self) -> None:
        p = self.progress
        took = time.monotonic() - self._resync_started if p else 0.0
        total = p.total_bytes if p else 0
        rate = total / took if took > 0 else 0.0
        self.last_resync = {"bytes": total, "seconds": round(took, 3), "rate_bps": round(rate)}
        log.info("%s: resync finished: %d KiB in %.2f s (%.0f KiB/s)", self.name, total // 1024,
                 took, rate / 1024)
        self.progress = None
