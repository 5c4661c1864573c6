# SPDX-License-Identifier: GPL-2.0-or-later
"""One configured resource at run time on this node: disk, metadata, engine, export, peer link.

A resource with a single `on` section is standalone: `up` opens the whole disk and serves it
Primary/UpToDate (no metadata, no peer). A resource with two `on` sections is replicated::

    Diskless ──attach──► disk open, metadata open (AL replayed), engine + export running
              (Secondary, export read-only)                         │
    StandAlone ──connect──► Connecting ──handshake (peer_link)──► Connected
        ▲                        ▲                                     │ peer lost, ping timeout
        │                        └─────────────────────────────────────┘
        └── split brain, authentication failed, incompatible net settings (protocol...)
    up = attach + connect;  down = disconnect + detach (clean_shutdown of the metadata)

This module owns the disk side (attach/detach, roles, export, metadata flags, status); the
connection side (connect/disconnect, handshake verdict, resync start/finish) is the mixin
replica.resource_connection.ResourceConnection, the background threads replica.events.

Every state change goes through replica.roles (one table, DRBD's guards) and is logged on one
line; the metadata flags follow the state (`_persist_flags`). Threads: the daemon's command
threads, `PeerLink`, `ResyncRunner`, the event reader (drains C's event fd; activity-log misses
are answered there, under `md_lock` only, so a writer waiting in C never waits for `lock`) and
the monitor (peer events, control frames, ping-int/ping-timeout/timeout, bitmap persistence).
Lock order: `lock` before `md_lock`. Peer control frames after the handshake:

    STATE        role/disk changed                SYNC_UUID    SyncSource starts (aux 1 = full)
    UUIDS        resync done (target adopts the   SYNC_DECISION invalidate: "sync me fully"
                 tuple), or SKIP_INITIAL_SYNC     OUTDATE      graceful disconnect of a Primary
"""
import fcntl
import logging
import os
import queue
import threading
import time
from dataclasses import replace

from replica import metadata as md_mod
from replica.config import Endpoint, Resource
from replica.errors import ReplicaError
from replica.events import ResourceEvents
from replica.protocol.repl_control import FullSyncRequest, encode_control
from replica.metadata_dump import dump_md, format_dump_md
from replica.mirror import Engine
from replica.nbd_server import ExportServer
from replica.peer_link import PeerLink, ResyncRunner
from replica.resource_connection import ResourceConnection
from replica.protocol import repl
from replica.protocol.nbd import ExportInfo, transmission_flags_for
from replica.resync import ResyncProgress
from replica.roles import Request, ResourceState, needs_new_current_uuid, request_or_raise
from replica.states import ConnState, DiskState, Refusal, ReplState, Role
from replica.uuids import MdFlag, UuidFlag

log = logging.getLogger("replicad.resource")


def engine_io_error_mode(on_io_error: str) -> str:
    """disk { on-io-error } -> what C does with the failing request (replica.mirror): pass_on
    passes the error on; detach and call-local-io-error (the handler runs, then detach, as in
    DRBD) stop using the disk at the first error and fail over to the peer."""
    if on_io_error == "pass_on":
        return "pass_on"
    if on_io_error in ("detach", "call-local-io-error"):
        return "fail_over"
    raise ValueError(f"{on_io_error!r}: on-io-error: expected one of pass_on, "
                     "call-local-io-error, detach")



class ResourceRuntime(ResourceConnection, ResourceEvents):
    def __init__(self, resource: Resource, node: str, default_export_path: str, rng=os.urandom):
        self.resource = resource
        self.name = resource.name
        self.host = resource.host(node)
        self.peer_host = resource.peer(node)
        self.endpoint = self.host.export or Endpoint(kind="unix", path=default_export_path,
                                                     host=None, port=None)
        self.rng = rng
        self.lock = threading.RLock()
        self.md_lock = threading.Lock()
        self.state = ResourceState(allow_two_primaries=resource.net.allow_two_primaries,
                                   fencing=resource.disk.fencing != "dont-care")
        self.fd: int | None = None
        self.engine: Engine | None = None
        self.server: ExportServer | None = None
        self.md: md_mod.Metadata | None = None
        self.link: PeerLink | None = None
        self.runner: ResyncRunner | None = None
        self.progress: ResyncProgress | None = None
        self.last_resync: dict | None = None
        self._resync_started = 0.0
        self.size = 0
        self._discard_my_data = False
        self._standalone_reason = ""          # why the peer link gave up for good
        self._remote_writes_at = 0            # engine.remote_writes() when a resync was asked
        self._events: queue.Queue = queue.Queue()
        self._threads_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ping_sent_ns = 0
        self._attached_ns = 0
        self._bm_stored_at = 0.0
        self._bm_stored_count = -1

    # --- properties -----------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.server is not None

    @property
    def role(self) -> str:
        return str(self.state.role) if self.is_up else "Unknown"

    @property
    def ctx(self) -> str:
        return self.name

    # --- state changes -----------------------------------------------------------------------

    def _set_state(self, new: ResourceState, why: str = "") -> None:
        old = self.state
        if new == old:
            return
        changes = [f"{label} {getattr(old, f)} -> {getattr(new, f)}"
                   for f, label in (("role", "role"), ("conn", "connection"),
                                    ("repl", "replication"), ("disk", "disk"),
                                    ("peer_role", "peer role"), ("peer_disk", "peer disk"))
                   if getattr(old, f) != getattr(new, f)]
        self.state = new
        if changes:
            log.info("%s: %s%s", self.name, ", ".join(changes), f" ({why})" if why else "")
        if self.engine is not None and old.role != new.role:
            self._apply_role_to_export()
        self._persist_flags()

    def _request(self, req: Request, what: str, **kw) -> ResourceState:
        self.state = replace(self.state, open_rw=self._open_rw())
        return request_or_raise(self.state, req, f"{self.name}", **kw)

    def _open_rw(self) -> bool:
        if self.engine is None or self.state.role is not Role.Primary:
            return False
        return self.engine.stats().get("active_connections", 0) > 0

    def _persist_flags(self) -> None:
        if self.md is None:
            return
        s = self.state
        want = {MdFlag.CONSISTENT: s.disk in (DiskState.UpToDate, DiskState.Outdated,
                                              DiskState.Consistent),
                MdFlag.WAS_UP_TO_DATE: s.disk is DiskState.UpToDate,
                MdFlag.PRIMARY_IND: s.role is Role.Primary,
                MdFlag.CONNECTED_IND: s.is_connected,
                MdFlag.PEER_OUT_DATED: s.peer_disk is DiskState.Outdated}
        if s.disk in (DiskState.Diskless, DiskState.Negotiating, DiskState.Attaching):
            return
        with self.md_lock:
            flags = self.md.flags
            for f, on in want.items():
                flags = flags | f if on else flags & ~f
            uuids = self.md.uuids.with_role(s.role is Role.Primary)
            if flags != self.md.flags or uuids != self.md.uuids:
                self.md.write_superblock(flags=flags, uuids=uuids)

    def _set_uuids(self, uuids, why: str) -> None:
        with self.md_lock:
            uuids = uuids.with_role(self.state.role is Role.Primary)
            if uuids != self.md.uuids:
                log.info("%s: uuids %s -> %s (%s)", self.name, self.md.uuids.text(), uuids.text(),
                         why)
                self.md.write_superblock(uuids=uuids)

    def _new_current_uuid(self, why: str) -> None:
        self._set_uuids(self.md.uuids.new_current(self.rng, primary=True), why)

    # --- up/down -----------------------------------------------------------------------------

    def up(self) -> None:
        if self.resource.standalone:
            self._up_standalone()
            return
        if self.md is None:
            self.attach()
        if self.state.conn is ConnState.StandAlone:
            self.connect()

    def down(self, force: bool = False) -> None:
        """drbdadm down; `force` (daemon exit) also ends NBD clients of a Primary."""
        if self.resource.standalone:
            self._down_standalone()
            return
        if self.md is None:
            return
        if not force and self.state.role is Role.Primary and self._open_rw():
            raise Refusal.DEVICE_IN_USE.error(self.name)
        if self.link is not None:
            self.disconnect()
        if self.state.role is Role.Primary:
            self._set_state(replace(self.state, role=Role.Secondary), "down")
        self.detach()
        log.info("%s: down", self.name)

    def _up_standalone(self) -> None:
        if self.is_up:
            return
        self.fd = self._open_disk()
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            self.engine = Engine(self.fd, self.size)
            self.server = ExportServer(self.name, self.endpoint, self.engine, self._export_info())
        except BaseException:
            self._release()
            raise
        self.state = ResourceState(role=Role.Primary, disk=DiskState.UpToDate)
        log.info("%s: up: disk %s (%d bytes) exported at %s", self.name, self.host.disk, self.size,
                 self.endpoint.nbd_uri(self.name))

    def _down_standalone(self) -> None:
        if not self.is_up:
            return
        self.server.stop()
        self.server = None
        if self.engine is not None:
            self.engine.flush()
        self._release()
        self.state = ResourceState()
        log.info("%s: down", self.name)

    def _release(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.md is not None:
            self.md.close()
            self.md = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open_disk(self) -> int:
        path = self.host.disk
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ReplicaError(f"{self.name}: cannot open disk '{path}': {exc.strerror}") from exc
        try:
            # One daemon per disk: a second `up` elsewhere on this machine must not share it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReplicaError(f"{self.name}: disk '{path}' is in use by another process") from None
        return fd

    def _export_info(self) -> ExportInfo:
        ro = self.state.role is not Role.Primary and not self.resource.standalone
        return ExportInfo(name=self.name, size=self.size,
                          transmission_flags=transmission_flags_for(read_only=ro,
                                                                    can_multi_conn=True),
                          description=f"replica resource {self.name} on {self.host.name}")

    def _apply_role_to_export(self) -> None:
        ro = self.state.role is not Role.Primary
        self.engine.set_read_only(ro)
        if self.server is not None:
            self.server.export = self._export_info()
        log.info("%s: export %s: %s", self.name, self.endpoint.nbd_uri(self.name),
                 "read-only (Secondary: writes are refused with EPERM)" if ro else "read-write")

    # --- attach/detach -----------------------------------------------------------------------

    def attach(self) -> None:
        if self.md is not None and self.state.disk is DiskState.Diskless:
            self._reattach_failed_disk()
            return
        if self.md is not None:
            raise Refusal.DISK_CONFIGURED.error(self.name)
        self.fd = self._open_disk()
        try:
            try:
                self.md = md_mod.open_md(self.host.disk, self.host.meta_disk, apply_al=True)
            except md_mod.MetadataError as exc:
                raise ReplicaError(f"{self.name}: attach: {exc}; to initialise it run "
                                   f"'replicactl create-md {self.name}'") from None
            if self.md.crashed_primary:
                log.warning("%s: attach: the node crashed while Primary: activity-log extents "
                            "are marked out of sync", self.name)
            self.size = self.md.sb.data_size
            self.engine = Engine(self.fd, self.size, read_only=True)
            self.engine.set_bitmap(self.md.bitmap)
            if self.resource.disk.al_updates:
                self.engine.enable_al()
            self.engine.set_on_io_error(engine_io_error_mode(self.resource.disk.on_io_error))
            new = self._request(Request.ATTACH, "attach", attach=self.md.attach_info())
            self.server = ExportServer(self.name, self.endpoint, self.engine, self._export_info())
        except BaseException:
            self._release()
            raise
        self._set_state(new, "attach")
        self._start_threads()
        log.info("%s: attached: disk %s (%d data bytes, meta-disk %s), uuids %s, %d KiB out of "
                 "sync, exported at %s read-only (Secondary: writes are refused with EPERM)",
                 self.name, self.host.disk, self.size, self.host.meta_disk, self.md.uuids.text(),
                 self.md.bitmap.dirty_bytes() // 1024, self.endpoint.nbd_uri(self.name))

    def detach(self) -> None:
        if self.md is None:
            raise Refusal.IS_DISKLESS.error(self.name)
        new = self._request(Request.DETACH, "detach")
        if self.link is not None:            # no Diskless-over-the-network mode: drop the link
            self.disconnect()
            new = self._request(Request.DETACH, "detach")
        self._stop_threads()
        self.server.stop()
        self.server = None
        self.engine.flush()
        with self.md_lock:
            try:
                self.md.clean_shutdown()
            except (md_mod.MetadataError, OSError) as exc:
                log.error("%s: detach: metadata: %s", self.name, exc)
        self._set_state(new, "detach")
        self._release()

    def _start_threads(self) -> None:
        self._threads_stop.clear()
        for target, label in ((self._event_reader, "events"), (self._monitor, "monitor")):
            t = threading.Thread(target=target, name=f"{label}[{self.name}]", daemon=True)
            t.start()
            self._threads.append(t)

    def _stop_threads(self) -> None:
        self._threads_stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self._threads = []

    def _store_bitmap(self, force: bool = False) -> None:
        if self.md is None or self.state.disk is DiskState.Diskless:
            return                          # a failed disk: its metadata is left alone
        count = self.md.bitmap.count()
        if not force and count == self._bm_stored_count:
            self._bm_stored_at = time.monotonic()
            return
        with self.md_lock:
            try:
                self.md.store_bitmap(changed_only=not force)
            except OSError as exc:
                log.error("%s: bitmap: %s", self.name, exc)
                return
        self._bm_stored_count = count
        self._bm_stored_at = time.monotonic()

    # --- local disk failure (disk { on-io-error }) ------------------------------------------------

    def _on_io_error(self, ev) -> None:
        """C reported a local I/O error. pass_on: the client got the error and C marked the
        blocks out of sync; nothing else changes. detach / call-local-io-error (after running
        the `local-io-error` handler): C already stopped using the disk (fail_over); the disk
        goes Diskless, as DRBD's "Local IO failed ... Detaching...", and a Primary goes on
        through the peer."""
        policy = self.resource.disk.on_io_error
        if policy == "pass_on":
            log.error("%s: on-io-error pass_on: error passed on, blocks marked out of sync: "
                      "offset=%d length=%d", self.name, ev.offset, ev.length)
            return
        if self.md is None or self.state.disk is DiskState.Diskless:
            return
        if policy == "call-local-io-error":
            self._run_handler("local-io-error")
        self.engine.set_disk_failed(True)   # e.g. a read error C found after its reply began
        log.error("%s: Local IO failed in %s. Detaching...", self.name,
                  "write" if ev.length else "flush")
        self._store_bitmap(force=True)      # the blocks that may differ, while md is usable
        with self.md_lock:
            try:                            # never claim UpToDate for this disk again
                self.md.set_flags(clear=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE)
            except (md_mod.MetadataError, OSError) as exc:
                log.error("%s: detach: metadata: %s", self.name, exc)
        self._set_state(self._request(Request.IO_ERROR, "io-error"),
                        "local I/O error, on-io-error " + policy)
        self._send_state()
        if self.state.role is Role.Primary:
            log.warning("%s: Diskless Primary: reads and writes go to the peer%s", self.name,
                        "" if self.state.peer_disk is DiskState.UpToDate
                        else " (no UpToDate peer: I/O fails with EIO)")

    def _reattach_failed_disk(self) -> None:
        """`attach` after an I/O error detached the disk: the repaired disk comes back
        Inconsistent and becomes SyncTarget of a full resync (as `invalidate` does), and serves
        I/O again once that is done. The backing fd stayed open (and locked) meanwhile."""
        with self.md_lock:
            try:
                md = md_mod.open_md(self.host.disk, self.host.meta_disk, apply_al=True)
                md.set_flags(clear=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE)
            except (md_mod.MetadataError, OSError) as exc:
                raise ReplicaError(f"{self.name}: attach: {exc}") from None
            self.md.close()
            self.md = md
        self.engine.set_bitmap(self.md.bitmap)
        self.md.bitmap.set_all()
        self._set_state(replace(self.state, disk=DiskState.Inconsistent), "attach")
        self._store_bitmap(force=True)
        log.info("%s: attached: disk %s again after an I/O error: Inconsistent, full resync "
                 "from the peer", self.name, self.host.disk)
        s = self.state
        if s.is_connected and s.peer_disk is DiskState.UpToDate:
            self._request_resync_after_failure("attach")

    def _request_resync_after_failure(self, why: str) -> None:
        """Ask the UpToDate peer for a full resync of this re-attached disk. Writes go on to
        the peer alone meanwhile (the peer marks them); any sent from here on may race the
        resync, so the disk is handed back only if none was (`disk_usable_after_resync`)."""
        self._remote_writes_at = self.engine.remote_writes()
        self._set_state(replace(self.state, repl=ReplState.StartingSyncT), why)
        self._send_state()
        self._send(encode_control(FullSyncRequest()))

    def disk_usable_after_resync(self) -> bool:
        """The SyncTarget's resync is done: True if the disk may serve I/O (always, unless it
        is a re-attached failed disk that got writes it may have missed: then resync again)."""
        if not self.engine.disk_failed():
            return True
        if self.engine.reuse_disk(self._remote_writes_at):
            log.info("%s: disk back in use after the resync", self.name)
            return True
        log.warning("%s: writes reached only the peer during the resync: resyncing again",
                    self.name)
        self._finish_progress()
        self._set_state(replace(self.state, repl=ReplState.Established), "resync incomplete")
        self._request_resync_after_failure("resync again")
        return False

    # --- user requests ------------------------------------------------------------------------

    def _need_disk(self) -> None:
        if self.md is None:
            raise Refusal.IS_DISKLESS.error(self.name)

    def primary(self, force: bool = False) -> None:
        if self.resource.standalone:
            return
        self._need_disk()
        old = self.state
        new = self._request(Request.PROMOTE, "primary", force=force)
        if new == old:
            return
        forced = force and old.disk is not DiskState.UpToDate
        if needs_new_current_uuid(old, new, forced=force, bitmap_uuid=self.md.uuids.bitmap):
            self._new_current_uuid("primary --force" if forced else "Primary without peer")
        self._set_state(new, "primary --force" if force else "primary")
        self._send_state()
        if forced and new.is_connected and new.peer_disk is not DiskState.UpToDate:
            self._begin_source(full=True)

    def secondary(self) -> None:
        if self.resource.standalone:
            return
        self._need_disk()
        self._set_state(self._request(Request.DEMOTE, "secondary"), "secondary")
        self._send_state()

    def invalidate(self) -> None:
        self._need_disk()
        new = self._request(Request.INVALIDATE, "invalidate")
        if new.is_connected:
            self._set_state(new, "invalidate")
            self._send(encode_control(FullSyncRequest()))
        else:
            self.md.bitmap.set_all()
            self._store_bitmap(force=True)
            self._set_state(new, "invalidate: full sync from the peer on the next connect")

    def invalidate_remote(self) -> None:
        self._need_disk()
        self._request(Request.INVALIDATE_REMOTE, "invalidate-remote")
        self._begin_source(full=True)

    def new_current_uuid(self, clear_bitmap: bool = False) -> None:
        self._need_disk()
        if not clear_bitmap:
            self._set_uuids(self.md.uuids.new_current(self.rng, primary=False),
                            "new-current-uuid")
            return
        s = self.state
        if not (s.is_connected and s.repl is ReplState.Established
                and s.disk is DiskState.Inconsistent and s.peer_disk is DiskState.Inconsistent):
            raise ReplicaError(f"{self.name}: new-current-uuid --clear-bitmap: needs a Connected "
                               "pair of just-created disks (Inconsistent/Inconsistent), have "
                               f"{s.cstate_text()} {s.dstate_text()}")
        try:
            uuids = self.md.uuids.skip_initial_sync(self.rng)
        except ValueError as exc:
            raise ReplicaError(f"{self.name}: {exc}") from None
        self._set_uuids(uuids, "new-current-uuid --clear-bitmap")
        self.md.bitmap.clear_all()
        self._store_bitmap(force=True)
        self._send(repl.encode_uuids(self.md.uuids, UuidFlag.SKIP_INITIAL_SYNC))
        self._set_state(replace(s, disk=DiskState.UpToDate, peer_disk=DiskState.UpToDate),
                        "initial sync skipped")

    def dump_md(self) -> dict:
        self._need_disk()
        with self.md_lock:
            return {"text": format_dump_md(self.md), "json": dump_md(self.md)}

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict:
        s = self.state
        st = self.engine.stats() if self.engine else None
        out = {
            "name": self.name,
            "node": self.host.name,
            "up": self.is_up,
            "standalone": self.resource.standalone,
            "role": self.role,
            "peer_role": str(s.peer_role),
            "disk": self.host.disk,
            "disk_state": str(s.disk) if self.is_up else "Diskless",
            "peer_disk_state": str(s.peer_disk),
            "connection": "StandAlone" if self.resource.standalone else str(s.conn),
            "replication": str(s.repl),
            "cstate": s.cstate_text() if not self.resource.standalone else "StandAlone",
            "peer": self.peer_host.name if self.peer_host else None,
            "protocol": self.resource.net.protocol,
            "size": self.size,
            "read_only": self.is_up and not self.resource.standalone
            and s.role is not Role.Primary,
            "nbd_uri": self.endpoint.nbd_uri(self.name),
            "stats": st,
            "last_resync": self.last_resync,
            "link_error": self.link.last_error if self.link else self._standalone_reason,
        }
        if self.md is not None:
            out["uuids"] = self.md.uuids.text()
            out["out_of_sync_bytes"] = self.md.bitmap.dirty_bytes()
        if self.progress is not None:
            rep = self.progress.report(time.monotonic())
            out["resync"] = {"percent": round(rep.percent, 2), "done_bytes": rep.done_bytes,
                             "total_bytes": rep.total_bytes, "rate_bps": round(rep.rate_bps),
                             "avg_rate_bps": round(rep.avg_rate_bps),
                             "eta_s": None if rep.eta_s is None else round(rep.eta_s, 1)}
        return out
