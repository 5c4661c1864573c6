# SPDX-License-Identifier: GPL-2.0-or-later
"""One configured resource at run time on this node: the runtime that alone changes its state.

A resource with a single `on` section is standalone: `up` opens the whole disk and serves it
Primary/UpToDate (no metadata, no peer). A resource with two `on` sections is replicated::

    Diskless ──attach──► disk open, metadata open (AL replayed), engine + export running
              (Secondary, export read-only)                         │
    StandAlone ──connect──► Connecting ──handshake (peer_link)──► Connected
        ▲                        ▲                                     │ peer lost, ping timeout
        │                        └─────────────────────────────────────┘
        └── split brain, authentication failed, incompatible net settings (protocol...)
    up = attach + connect;  down = disconnect + detach (clean_shutdown of the metadata)

`ResourceRuntime` owns the state: every change goes through `request` (replica.roles: one
table, DRBD's guards) and `set_state`, which logs it on one line, applies the role to the
frontend and has the disk persist the metadata flags. It is composed of, each with its own
constructor and public interface (none calls another's private methods):

    disk      replica.disk.ResourceDisk         backing fd, metadata, engine, AL, bitmap
    conn      replica.connection.PeerConnection peer link, handshake verdict, control messages
    sync      replica.sync.ResyncControl        resync now (verify next), progress
    frontend  replica.frontends.NbdFrontend     the NBD export
    device    replica.blockdev.BlockDevice      /dev/replica/RES and /dev/drbdN while Primary
                                                (kernel NBD or FUSE+loop over the same engine)
    monitor   replica.monitor.ResourceMonitor   C's events, timers (no periodic wake-up)
    fencing   replica.fencing.PeerFencing       fence-peer/unfence-peer, suspend-io, peer-dead
    events    replica.resource_events.ResourceEvents  this resource's lines on the daemon's
                                                EventBus: `create`/`change`/`destroy` from here
                                                (set_state, up/down), `call`/`response helper`
                                                from the handler runner
    handler_runner replica.handler_runner.HandlerRunner  `handlers { }`: DRBD's helpers and
                                                their environment (run_handler... delegate)

`status()` is replica.resource_status.status_of: it reads these parts and changes nothing.

Threads: the daemon's command threads, the PeerLink, the ResyncRunner, the monitor's two.
Lock order: `lock` (this runtime), then the disk's `md_lock`. Peer control frames after the
handshake: replica.protocol.repl_control.
"""
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from replica.blockdev import BlockDevice
from replica.config import DiskOptions, Endpoint, HostSection, NetOptions, Resource
from replica.connection import PeerConnection
from replica.disk import ResourceDisk, engine_io_error_mode
from replica.errors import ReplicaError
from replica.events import EventBus
from replica.fencing import PeerFencing, needs_fencing
from replica.frontends import NbdFrontend
from replica.handler_runner import HANDLER_TIMEOUT_S, HandlerRunner
from replica.mirror import MirrorEvent
from replica.monitor import ResourceMonitor
from replica.protocol.nbd import ExportInfo, transmission_flags_for
from replica.protocol.repl_control import FullSyncRequest, PeerUuids
from replica.resize import ResizeControl
from replica.resource_events import ResourceEvents
from replica.resource_status import status_of
from replica.roles import Request, ResourceState, needs_new_current_uuid, request, request_or_raise
from replica.runtime_options import RuntimeOptions
from replica.startup import wfc_option
from replica.states import ConnState, DiskState, Refusal, ReplState, Role
from replica.sync import ResyncControl
from replica.uuids import UuidFlag

__all__ = ["ResourceRuntime", "engine_io_error_mode"]

log = logging.getLogger("replicad.resource")


class ResourceRuntime:
    def __init__(self, resource: Resource, node: str, default_export_path: str,
                 rng: Callable[[int], bytes] = os.urandom, run_dir: str | None = None,
                 events: EventBus | None = None):
        self.resource = resource
        self.name = resource.name
        self.host: HostSection = resource.host(node)
        self.peer_host: HostSection | None = resource.peer(node)
        self.endpoint = self.host.export or Endpoint(kind="unix", path=default_export_path,
                                                     host=None, port=None)
        self.lock = threading.RLock()
        self.state = ResourceState(allow_two_primaries=resource.net.allow_two_primaries,
                                   fencing=resource.disk.fencing != "dont-care")
        self.disk = ResourceDisk(self.name, resource, self.host, rng)
        self.frontend = NbdFrontend(self.name, self.endpoint, self.host.export_tls, self.host.name)
        configured = self.host.device is not None or self.host.minor is not None
        self.device = BlockDevice(self.name, self.host, run_dir or os.path.dirname(
            default_export_path)) if configured else None
        self.conn = PeerConnection(self)
        self.sync = ResyncControl(self)
        self.monitor = ResourceMonitor(self)
        self.fencing = PeerFencing(self)
        self.resizer = ResizeControl(self)
        self.options = RuntimeOptions(self)
        self.wfc_option = "wfc-timeout"      # which startup timeout `wait-connect` uses
        self.events = ResourceEvents(self, events if events is not None else EventBus())
        self.handler_runner = HandlerRunner(self)

    # --- what the daemon asks -------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.frontend.is_serving

    @property
    def in_use(self) -> bool:
        """Anything open or running: disk, metadata, export, peer link (even Diskless)."""
        return self.frontend.is_serving or self.disk.is_open or self.conn.link is not None

    @property
    def has_link(self) -> bool:
        return self.conn.link is not None

    @property
    def role(self) -> str:
        return str(self.state.role) if self.is_up else "Unknown"

    # --- state changes (the only place that assigns self.state after attach) ------------------

    def set_state(self, new: ResourceState, why: str = "") -> None:
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
            self.events.changed(old, new)
        if self.disk.engine is not None and old.role != new.role:
            self._apply_role_to_export()
        self.disk.persist_flags(new)
        self.monitor.wake()                  # its deadlines may have changed
        self.fencing.state_changed(old, new)
        self._state_handlers(old, new)

    def _state_handlers(self, old: ResourceState, new: ResourceState) -> None:
        """Handlers DRBD calls on a state change: `disconnected` when the connection ends, and
        `pri-on-incon-degr` when a Primary is left without UpToDate data anywhere: its own
        disk not UpToDate and no UpToDate peer connected (after_state_ch's "degraded")."""
        if old.is_connected and not new.is_connected:
            self.run_handler("disconnected")

        def incon_degr(s: ResourceState) -> bool:
            return s.role is Role.Primary and s.disk is not DiskState.UpToDate and not (
                s.is_connected and s.peer_disk is DiskState.UpToDate)
        if incon_degr(new) and not incon_degr(old):
            log.error("%s: Primary without UpToDate data (disk %s, peer %s): pri-on-incon-degr",
                      self.name, new.disk, new.peer_disk if new.is_connected else "unreachable")
            self.run_handler("pri-on-incon-degr")

    def request(self, req: Request, what: str, **kw: Any) -> ResourceState:
        """The state `req` leads to (replica.roles), or the Refused error; nothing changes.
        Only a demotion looks at who holds the device (a walk of /proc when there is one)."""
        if req is Request.DEMOTE:
            self.state = replace(self.state, open_rw=self._open_rw())
        return request_or_raise(self.state, req, f"{self.name}", **kw)

    def may_step_down(self) -> bool:
        """A Primary that nothing holds (no NBD client, no opener of its device): after-sb
        call-pri-lost-after-sb may make it Secondary, as DRBD tries to."""
        return self.state.role is Role.Primary and not self._open_rw()

    def _open_rw(self) -> bool:
        return self.state.role is Role.Primary and (self._nbd_clients() > 0
                                                    or bool(self._device_holders()))

    def _nbd_clients(self) -> int:
        """Clients of the NBD export: the engine's connections less the block device's own (the
        kernel NBD backend serves /dev/nbdN through the same C frontend)."""
        own = self.device.own_connections() if self.device is not None else 0
        return max(0, self.frontend.holders() - own)

    def _device_holders(self) -> list[str]:
        return self.device.holders() if self.device is not None else []

    def _refuse_if_held(self) -> None:
        """DRBD refuses to demote (or take down) a Primary whose device is open: so do we, and
        say who holds it (mounts, processes, NBD clients)."""
        if self.state.role is not Role.Primary:
            return
        held = self._device_holders()
        clients = self._nbd_clients()
        if clients:
            held.append(f"{clients} NBD client{'s' if clients > 1 else ''} on {self.frontend.uri}")
        if held:
            raise Refusal.DEVICE_IN_USE.error(self.name, "; ".join(held))

    def _device_up(self) -> None:
        """The block device, now that this node is Primary (a failure demotes again)."""
        if self.device is None or self.device.exists:
            return
        try:
            self.device.create(self.disk.the_engine(), self.disk.size)
        except BaseException as exc:
            log.error("%s: %s: staying Secondary", self.name, exc)
            if not self.resource.standalone:
                self.set_state(replace(self.state, role=Role.Secondary), "no block device")
                self.conn.send_state()
            raise

    def _device_down(self, force: bool = False) -> None:
        if self.device is not None:
            self.device.remove(force=force)
            self.resizer.device_size_stale = False      # made again with the new size

    def _primary(self) -> bool:
        return self.state.role is Role.Primary

    # --- up/down -----------------------------------------------------------------------------

    def up(self, config: Resource | None = None) -> None:
        if self.resource.standalone:
            self._up_standalone()
            return
        if not self.disk.has_md:
            self.attach()
        if self.state.conn is ConnState.StandAlone:
            self.connect(config=config)

    def down(self, force: bool = False) -> None:
        """drbdadm down; `force` (daemon exit) also ends NBD clients of a Primary."""
        if self.resource.standalone:
            self._down_standalone(force)
            return
        if not self.disk.has_md:
            return
        if not force:
            self._refuse_if_held()
        self._device_down(force)
        self.conn.stop_link()
        if self.state.role is Role.Primary:
            self.set_state(replace(self.state, role=Role.Secondary), "down")
        if self.state.disk is DiskState.Diskless:
            self._release_failed_disk()      # on-io-error detach took it: nothing to detach
        else:
            self.detach()
        log.info("%s: down", self.name)

    def _release_failed_disk(self) -> None:
        """`down` of a node whose disk failed (Diskless after on-io-error): drbdadm down does
        not refuse it as `detach` does; the metadata is not written (the disk failed)."""
        self.monitor.stop()
        self.frontend.stop()
        self.disk.close()
        self.events.destroyed()

    def _up_standalone(self) -> None:
        if self.is_up:
            return
        engine = self.disk.open_standalone()
        try:
            self.frontend.start(engine, self.export_info())
            self.state = ResourceState(role=Role.Primary, disk=DiskState.UpToDate)
            self._device_up()
        except BaseException:
            self.frontend.stop()
            self.state = ResourceState()
            self.disk.close()
            raise
        self.events.created(self.state)
        log.info("%s: up: disk %s (%d bytes) exported at %s", self.name, self.host.disk,
                 self.disk.size, self.frontend.uri)

    def _down_standalone(self, force: bool = False) -> None:
        if not self.is_up:
            return
        if not force:
            self._refuse_if_held()
        self._device_down(force)
        self.frontend.stop()
        if self.disk.engine is not None:
            self.disk.engine.flush()
        self.disk.close()
        self.state = ResourceState()
        self.events.destroyed()
        log.info("%s: down", self.name)

    def export_info(self) -> ExportInfo:
        ro = self.state.role is not Role.Primary and not self.resource.standalone
        return ExportInfo(name=self.name, size=self.disk.size,
                          transmission_flags=transmission_flags_for(read_only=ro,
                                                                    can_multi_conn=True),
                          description=f"replica resource {self.name} on {self.host.name}")

    def _apply_role_to_export(self) -> None:
        ro = self.state.role is not Role.Primary
        self.disk.the_engine().set_read_only(ro)
        self.frontend.set_export(self.export_info())
        log.info("%s: export %s: %s", self.name, self.frontend.uri,
                 "read-only (Secondary: writes are refused with EPERM)" if ro else "read-write")

    # --- attach/detach -----------------------------------------------------------------------

    def attach(self) -> None:
        if self.disk.has_md and self.state.disk is DiskState.Diskless:
            self._reattach_failed_disk()
            return
        if self.disk.has_md:
            raise Refusal.DISK_CONFIGURED.error(self.name)
        info = self.disk.attach()
        self.wfc_option = wfc_option(info)
        try:
            new = self.request(Request.ATTACH, "attach", attach=info)
            self.frontend.start(self.disk.the_engine(), self.export_info())
        except BaseException:
            self.disk.close()
            raise
        self.events.created(self.state)
        self.set_state(new, "attach")
        self.monitor.start(self.disk.the_engine())
        log.info("%s: attached: disk %s (%d data bytes, meta-disk %s), uuids %s, %d KiB out of "
                 "sync, exported at %s read-only (Secondary: writes are refused with EPERM)",
                 self.name, self.host.disk, self.disk.size, self.host.meta_disk,
                 self.disk.uuids.text(), self.disk.out_of_sync_bytes() // 1024,
                 self.frontend.uri)

    def detach(self) -> None:
        if not self.disk.has_md:
            raise Refusal.IS_DISKLESS.error(self.name)
        new = self.request(Request.DETACH, "detach")
        if self.conn.link is not None:       # no Diskless-over-the-network mode: drop the link
            self.conn.disconnect()
            new = self.request(Request.DETACH, "detach")
        self.monitor.stop()
        self.frontend.stop()
        self.disk.clean_shutdown()
        self.set_state(new, "detach")
        self.disk.close()
        self.events.destroyed()

    # --- local disk failure (disk { on-io-error }) ------------------------------------------------

    def on_engine_event(self, ev: MirrorEvent) -> None:
        """One event from C (monitor thread, under `lock`)."""
        if ev.type == "io_error":
            log.error("%s: local I/O error: offset=%d length=%d: %s", self.name, ev.offset,
                      ev.length, os.strerror(ev.err) if ev.err else "error")
            self._on_io_error(ev)
        elif ev.type == "overflow":
            # C's event queue was full: the reader already rescanned the activity log and
            # drained the control frames (replica.mirror.Engine.next_events)
            log.warning("%s: event queue overflowed (%d events dropped in all): rescanned",
                        self.name, self.disk.engine.stats()["events_dropped"] if self.disk.engine else 0)
        else:
            self.conn.on_engine_event(ev)

    def _on_io_error(self, ev: MirrorEvent) -> None:
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
        if not self.disk.has_md or self.state.disk is DiskState.Diskless:
            return
        if policy == "call-local-io-error":
            self.run_handler("local-io-error")
        log.error("%s: Local IO failed in %s. Detaching...", self.name,
                  "write" if ev.length else "flush")
        self.disk.fail()
        self.set_state(self.request(Request.IO_ERROR, "io-error"),
                       "local I/O error, on-io-error " + policy)
        self.conn.send_state()
        if self.state.role is Role.Primary:
            log.warning("%s: Diskless Primary: reads and writes go to the peer%s", self.name,
                        "" if self.state.peer_disk is DiskState.UpToDate
                        else " (no UpToDate peer: I/O fails with EIO)")

    def _reattach_failed_disk(self) -> None:
        """`attach` after an I/O error detached the disk: the repaired disk comes back
        Inconsistent and becomes SyncTarget of a full resync (as `invalidate` does), and serves
        I/O again once that is done."""
        self.disk.reattach()
        self.set_state(replace(self.state, disk=DiskState.Inconsistent), "attach")
        self.disk.store_bitmap(force=True)
        log.info("%s: attached: disk %s again after an I/O error: Inconsistent, full resync "
                 "from the peer", self.name, self.host.disk)
        s = self.state
        if s.is_connected and s.peer_disk is DiskState.UpToDate:
            self.sync.request_full_resync("attach")

    # --- handlers { } (replica.handler_runner) ----------------------------------------------

    def handler_env(self) -> dict[str, str]:
        return self.handler_runner.env()

    def call_handler(self, which: str, timeout_s: float = HANDLER_TIMEOUT_S) -> int | None:
        return self.handler_runner.call(which, timeout_s)

    def run_handler(self, which: str, *more: str) -> None:
        self.handler_runner.run(which, *more)

    def run_handler_wait(self, which: str) -> int | None:
        return self.handler_runner.run_wait(which)

    # --- user requests ------------------------------------------------------------------------

    def _need_disk(self) -> None:
        if not self.disk.has_md:
            raise Refusal.IS_DISKLESS.error(self.name)

    def connect(self, discard_my_data: bool = False, config: Resource | None = None) -> None:
        """drbdadm connect; `config`: the resource as the command's file has it now, whose net
        section and addresses a new link takes (drbdsetup connect is given them likewise)."""
        if config is not None and self.conn.link is None and not self.resource.standalone:
            self.options.adopt_link_config(config)
        self.conn.connect(discard_my_data)

    def set_options(self, net: NetOptions | None = None, disk: DiskOptions | None = None,
                    handlers: dict[str, str] | None = None, why: str = "") -> list[str]:
        """net-options, disk-options, handlers, adjust: replica.runtime_options."""
        return self.options.set(net, disk, handlers, why)

    def show(self) -> dict[str, Any]:
        """The running resource (adjust, `dump --running`): replica.runtime_options."""
        return self.options.show()

    def disconnect(self) -> None:
        self.conn.disconnect()

    def primary(self, force: bool = False) -> None:
        if self.resource.standalone:
            return
        self._need_disk()
        if not force and needs_fencing(self.state) and request(
                replace(self.state, open_rw=False), Request.PROMOTE) is Refusal.PRIMARY_NOP:
            self.fencing.fence_peer("primary")     # DRBD: drbd_set_role -> conn_try_outdate_peer
        old = self.state
        new = self.request(Request.PROMOTE, "primary", force=force)
        if new == old:
            self._device_up()
            return
        if self.device is not None:
            self.device.check_available()
        forced = force and old.disk is not DiskState.UpToDate
        if needs_new_current_uuid(old, new, forced=force, bitmap_uuid=self.disk.uuids.bitmap):
            self.disk.new_current_uuid("primary --force" if forced else "Primary without peer",
                                       self._primary())
        self.set_state(new, "primary --force" if force else "primary")
        self.conn.send_state()
        if forced and new.is_connected and new.peer_disk is not DiskState.UpToDate:
            self.sync.begin_source(full=True)
        self._device_up()

    def secondary(self) -> None:
        if self.resource.standalone:
            return
        self._need_disk()
        self._refuse_if_held()
        new = self.request(Request.DEMOTE, "secondary")
        self._device_down()
        self.set_state(new, "secondary")
        self.conn.send_state()

    def outdate(self) -> None:
        """drbdadm outdate: a disconnected Secondary marks its own data Outdated (what the
        peer's fence-peer handler asks for)."""
        self._need_disk()
        new = self.request(Request.OUTDATE, "outdate")
        self.set_state(new, "outdate")

    def peer_dead(self, fenced: bool = False) -> None:
        """The cluster manager declared the peer node dead (`fenced`: STONITH reset it)."""
        if self.resource.standalone or not self.disk.has_md:
            return
        self.fencing.peer_dead(fenced)

    def resume_io(self) -> None:
        """drbdadm resume-io: thaw I/O suspended by fencing."""
        self._need_disk()
        self.fencing.resume_io("resume-io")

    def invalidate(self) -> None:
        self._need_disk()
        new = self.request(Request.INVALIDATE, "invalidate")
        if new.is_connected:
            if rc := self.sync.before_target():
                self.conn.disconnect_after_handler(rc)
                return
            self.set_state(new, "invalidate")
            self.conn.send_control(FullSyncRequest())
        else:
            self.disk.set_all_out_of_sync()
            self.disk.store_bitmap(force=True)
            self.set_state(new, "invalidate: full sync from the peer on the next connect")

    def invalidate_remote(self) -> None:
        self._need_disk()
        self.request(Request.INVALIDATE_REMOTE, "invalidate-remote")
        self.sync.begin_source(full=True)

    def new_current_uuid(self, clear_bitmap: bool = False) -> None:
        self._need_disk()
        if not clear_bitmap:
            self.disk.new_current_uuid("new-current-uuid", self._primary(), as_primary=False)
            return
        s = self.state
        if not (s.is_connected and s.repl is ReplState.Established
                and s.disk is DiskState.Inconsistent and s.peer_disk is DiskState.Inconsistent):
            raise ReplicaError(f"{self.name}: new-current-uuid --clear-bitmap: needs a Connected "
                               "pair of just-created disks (Inconsistent/Inconsistent), have "
                               f"{s.cstate_text()} {s.dstate_text()}")
        try:
            uuids = self.disk.uuids.skip_initial_sync(self.disk.rng)
        except ValueError as exc:
            raise ReplicaError(f"{self.name}: {exc}") from None
        self.disk.set_uuids(uuids, "new-current-uuid --clear-bitmap", self._primary())
        self.disk.clear_out_of_sync()
        self.disk.store_bitmap(force=True)
        self.conn.send_control(PeerUuids(self.disk.uuids, UuidFlag.SKIP_INITIAL_SYNC))
        self.set_state(replace(s, disk=DiskState.UpToDate, peer_disk=DiskState.UpToDate),
                       "initial sync skipped")

    def dump_md(self) -> dict[str, object]:
        self._need_disk()
        return self.disk.dump()

    def resize(self, size: int | None, assume_clean: bool, timeout_s: float) -> None:
        """drbdadm resize (replica.resize): agreed with the peer; waits for it without holding
        the lock (the peer's answer is handled under it)."""
        with self.lock:
            done = self.resizer.start(size, assume_clean)
        done.wait(timeout_s)
        with self.lock:
            self.resizer.result()

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status_of(self)
