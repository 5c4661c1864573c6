# SPDX-License-Identifier: GPL-2.0-or-later
"""The local disk of one resource: backing fd, metadata, the C engine, the activity log.

Owns `ResourceDisk`. It opens and locks the backing disk, opens the metadata (replaying the
activity log), builds the engine (replica.mirror) over them, and keeps the metadata in step:
UUIDs, flags, bitmap persistence, AL transactions. It decides nothing about roles or states:
the runtime (replica.resource) tells it the state to persist and when to attach or detach::

    closed ──attach()──► fd (flock), md (AL applied), engine (read-only, bitmap, AL, on-io-error)
       ▲                      │ io error, on-io-error detach: fail_disk() ──► failed (md kept:
       │                      │                        the fd stays open and locked)
       │                      │ failed ──reattach()──► new md, full resync from the peer
       └──── close() ◄── clean_shutdown()

Threads: the runtime's `lock` holders and the event reader (al_miss, under `md_lock` only, so a
writer waiting in C never waits for the runtime's `lock`). Lock order: runtime `lock`, then
`md_lock`.
"""
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable

from replica import metadata as md_mod
from replica.config import HostSection, Resource
from replica.errors import ReplicaError
from replica.metadata import Metadata
from replica.metadata_dump import dump_md, format_dump_md
from replica.mirror import Engine
from replica.roles import AttachInfo, ResourceState
from replica.states import DiskState, Role
from replica.uuids import GenerationUuids, MdFlag, UuidFlag

log = logging.getLogger("replicad.resource")

BITMAP_PERSIST_S = 2.0
BITMAP_PERSIST_RESYNC_S = 0.5     # changed pages only: one small write + fsync per interval


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


class ResourceDisk:
    def __init__(self, name: str, resource: Resource, host: HostSection,
                 rng: Callable[[int], bytes]):
        self.name = name
        self.resource = resource
        self.host = host
        self.rng = rng
        self.md_lock = threading.Lock()
        self.fd: int | None = None
        self.md: Metadata | None = None
        self.engine: Engine | None = None
        self.size = 0
        self.failed = False               # on-io-error detached the disk; md stays open
        self._bm_stored_at = 0.0
        self._bm_stored_count = -1
        self.al_writes = 0                # AL transactions written (status --statistics)
        self.bm_writes = 0                # bitmap stores written

    # --- what the others read -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.fd is not None or self.md is not None or self.engine is not None

    @property
    def has_md(self) -> bool:
        return self.md is not None

    def meta(self) -> Metadata:
        """The open metadata; a ReplicaError if there is none (callers checked has_md)."""
        if self.md is None:
            raise ReplicaError(f"{self.name}: no metadata open")
        return self.md

    def the_engine(self) -> Engine:
        if self.engine is None:
            raise ReplicaError(f"{self.name}: no engine running")
        return self.engine

    @property
    def uuids(self) -> GenerationUuids:
        return self.meta().uuids

    def out_of_sync_bytes(self) -> int:
        return self.meta().bitmap.dirty_bytes()

    def uuid_flags(self, discard_my_data: bool) -> UuidFlag:
        return self.meta().uuid_flags(discard_my_data=discard_my_data)

    # --- open/close -----------------------------------------------------------------------------

    def open_standalone(self) -> Engine:
        """The whole disk, no metadata: a standalone resource."""
        self.fd = self._open_disk()
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            self.engine = Engine(self.fd, self.size)
        except BaseException:
            self.close()
            raise
        return self.engine

    def attach(self) -> AttachInfo:
        """Open disk, metadata (AL applied) and a read-only engine; close all on failure."""
        self.fd = self._open_disk()
        try:
            try:
                self.md = md_mod.open_md(self.host.disk, self.host.meta_disk, apply_al=True,
                                         growable=True)
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
            return self.md.attach_info()
        except BaseException:
            self.close()
            raise

    def clean_shutdown(self) -> None:
        """detach/down: flush, then store the bitmap and empty the AL (md stays open)."""
        self.the_engine().flush()
        with self.md_lock:
            try:
                self.meta().clean_shutdown()
            except (md_mod.MetadataError, OSError) as exc:
                log.error("%s: detach: metadata: %s", self.name, exc)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.md is not None:
            self.md.close()
            self.md = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.failed = False
        self._bm_stored_count = -1

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

    # --- resize ---------------------------------------------------------------------------------

    def max_size(self) -> int:
        """The data size the backing device could hold now (it may have grown since attach)."""
        return self.meta().max_data_size(os.lseek(self.fd, 0, os.SEEK_END) if self.fd is not None
                                         else 0)

    def resize(self, new_size: int, mark_new: bool) -> None:
        """Online resize to `new_size` bytes: the metadata first (replica.metadata's crash-safe
        move), then C. `mark_new`: the grown area is out of sync (resynced from the peer)."""
        engine = self.the_engine()
        old = self.size
        with self.md_lock:
            md = self.meta()
            try:
                bitmap = md.bitmap.resized(new_size)
            except ValueError as exc:
                raise ReplicaError(f"{self.name}: resize: {exc}") from None
            if mark_new and new_size > old:
                bitmap.set_range(old, new_size - old)
            try:
                md.resize(bitmap)
            except (md_mod.MetadataError, OSError) as exc:
                raise ReplicaError(f"{self.name}: resize: {exc}") from None
        engine.resize(new_size, bitmap)
        self.size = new_size
        self._bm_stored_count = -1
        log.info("%s: resized: %d -> %d data bytes%s", self.name, old, new_size,
                 " (new area out of sync)" if mark_new and new_size > old else "")

    # --- local disk failure -------------------------------------------------------------------

    def fail(self) -> None:
        """on-io-error detach: stop using the disk, keep the blocks that may differ, and never
        claim UpToDate for it again."""
        self.the_engine().set_disk_failed(True)   # e.g. a read error C found after its reply began
        self.store_bitmap(force=True)             # the blocks that may differ, while md is usable
        with self.md_lock:
            try:
                self.meta().set_flags(clear=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE)
            except (md_mod.MetadataError, OSError) as exc:
                log.error("%s: detach: metadata: %s", self.name, exc)
        self.failed = True

    def reattach(self) -> None:
        """`attach` after an I/O error: fresh metadata, every block out of sync. The backing fd
        stayed open (and locked) meanwhile."""
        with self.md_lock:
            try:
                md = md_mod.open_md(self.host.disk, self.host.meta_disk, apply_al=True)
                md.set_flags(clear=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE)
            except (md_mod.MetadataError, OSError) as exc:
                raise ReplicaError(f"{self.name}: attach: {exc}") from None
            self.meta().close()
            self.md = md
        self.the_engine().set_bitmap(md.bitmap)
        md.bitmap.set_all()
        self.failed = False

    # --- metadata ----------------------------------------------------------------------------

    def persist_flags(self, s: ResourceState) -> None:
        """The metadata flags follow the state (DRBD's MDF_* bits)."""
        if self.md is None or self.failed:
            return
        if s.disk in (DiskState.Diskless, DiskState.Negotiating, DiskState.Attaching):
            return
        want = {MdFlag.CONSISTENT: s.disk in (DiskState.UpToDate, DiskState.Outdated,
                                              DiskState.Consistent),
                MdFlag.WAS_UP_TO_DATE: s.disk is DiskState.UpToDate,
                MdFlag.PRIMARY_IND: s.role is Role.Primary,
                MdFlag.CONNECTED_IND: s.is_connected,
                MdFlag.PEER_OUT_DATED: s.peer_disk is DiskState.Outdated}
        with self.md_lock:
            md = self.md
            flags = md.flags
            for f, on in want.items():
                flags = flags | f if on else flags & ~f
            uuids = md.uuids.with_role(s.role is Role.Primary)
            if flags != md.flags or uuids != md.uuids:
                md.write_superblock(flags=flags, uuids=uuids)

    def set_uuids(self, uuids: GenerationUuids, why: str, primary: bool) -> None:
        with self.md_lock:
            md = self.meta()
            uuids = uuids.with_role(primary)
            if uuids != md.uuids:
                log.info("%s: uuids %s -> %s (%s)", self.name, md.uuids.text(), uuids.text(), why)
                md.write_superblock(uuids=uuids)

    def new_current_uuid(self, why: str, primary: bool, as_primary: bool = True) -> None:
        self.set_uuids(self.uuids.new_current(self.rng, primary=as_primary), why, primary)

    def clear_crashed_primary(self) -> None:
        with self.md_lock:
            md = self.meta()
            if MdFlag.CRASHED_PRIMARY in md.flags:
                md.set_flags(clear=MdFlag.CRASHED_PRIMARY)

    def dump(self) -> dict[str, object]:
        with self.md_lock:
            md = self.meta()
            return {"text": format_dump_md(md), "json": dump_md(md)}

    # --- bitmap -----------------------------------------------------------------------------

    def set_all_out_of_sync(self) -> None:
        self.meta().bitmap.set_all()

    def clear_out_of_sync(self) -> None:
        self.meta().bitmap.clear_all()

    def store_bitmap(self, force: bool = False) -> None:
        """Write the changed bitmap pages (all with `force`); a failed disk is left alone."""
        if self.md is None or self.failed:
            return
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
            self.bm_writes += 1
        self._bm_stored_count = count
        self._bm_stored_at = time.monotonic()

    def bitmap_deadline(self, resyncing: bool) -> float | None:
        """When the bitmap should next be stored (monotonic s), or None while nothing new is
        there to store: during a resync every BITMAP_PERSIST_RESYNC_S (it is what a crashed
        node resumes from), else BITMAP_PERSIST_S after a change. Bits C sets in an extent
        that is hot in the AL need no timer: the AL replays them after a crash."""
        if self.md is None or self.failed:
            return None
        if resyncing:
            return self._bm_stored_at + BITMAP_PERSIST_RESYNC_S
        if self.md.bitmap.count() != self._bm_stored_count:
            return self._bm_stored_at + BITMAP_PERSIST_S
        return None

    # --- activity log (event reader thread) ---------------------------------------------------

    def al_miss(self, extent: int, stopping: threading.Event) -> None:
        """A writer waits for `extent`. When the AL is full its least recently used extent
        leaves: C marks it cold and waits for the writes in flight to it (acknowledged by the
        peer or marked out of sync) before the transaction that drops it is written, as DRBD
        waits for an extent's reference count. The wait happens outside md_lock, so the
        monitor can still time the peer out and end those writes."""
        engine = self.the_engine()
        if engine.disk_failed():
            engine.al_set_hot(extent, True)    # no disk to log to: nothing to replay
            return
        with self.md_lock:
            victim = self.meta().al_victim(extent)
        if victim is not None:
            while not engine.al_evict(victim, timeout_s=0.2):
                if stopping.is_set():
                    engine.al_set_hot(victim, True)     # still in the on-disk AL
                    return
        with self.md_lock:
            try:
                self.meta().al_make_hot(extent, can_evict=lambda e: e == victim)
            except (md_mod.MetadataError, OSError, ValueError) as exc:
                log.error("%s: activity log: extent %d: %s", self.name, extent, exc)
                if victim is not None:
                    engine.al_set_hot(victim, True)     # the transaction did not drop it
                return
            self.al_writes += 1
        engine.al_set_hot(extent, True)
