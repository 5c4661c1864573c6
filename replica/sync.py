# SPDX-License-Identifier: GPL-2.0-or-later
"""Resynchronisation of one resource: who starts it, its progress, how it ends (verify next).

Owns `ResyncControl`: the ResyncRunner of a SyncSource (replica.peer_link sends the dirty
extents through C), the progress shown by `status`, the last resync's numbers, and the rule
that a re-attached failed disk is handed back only after a resync no write raced. States
change through the runtime (replica.resource), UUIDs and bitmap through the disk
(replica.disk), control messages through the connection (replica.connection)::

    begin_source(full) ── new bitmap UUID, SYNC_UUID ──► SyncSource, ResyncRunner ...
        ... runner_finished(runner) ── UUIDS ──► Established, UpToDate/UpToDate
    begin_target() ──► SyncTarget ... (peer UUIDS: replica.connection) ... finish_progress()
    request_full_resync(why): a re-attached disk asks the UpToDate peer for everything
    stop(): the connection went away (the next one starts over from the bitmap)

Online verify (VerifyS/VerifyT) is `self.verify`, a replica.verify.VerifyControl: it shares
the connection's lifetime with the resync (stop() ends both).
"""
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from replica.peer_link import ResyncRunner
from replica.protocol.repl_control import FullSyncRequest, PeerUuids, SyncUuid
from replica.resync import ResyncProgress
from replica.roles import Request
from replica.states import DiskState, ReplState, Role
from replica.verify import VerifyControl

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")


class ResyncControl:
    def __init__(self, rt: "ResourceRuntime"):
        self.rt = rt
        self.name = rt.name
        self.runner: ResyncRunner | None = None
        self.progress: ResyncProgress | None = None
        self.last_resync: dict[str, Any] | None = None
        self._started = 0.0
        self._remote_writes_at = 0            # engine.remote_writes() when a resync was asked
        self.verify = VerifyControl(rt)

    def begin_source(self, full: bool) -> None:
        rt, disk = self.rt, self.rt.disk
        if full:
            disk.set_all_out_of_sync()
        uuids, sync_uuid = disk.uuids.start_resync_source(disk.rng)
        disk.set_uuids(uuids, "resync start (SyncSource)", rt.state.role is Role.Primary)
        disk.store_bitmap(force=True)
        rt.conn.send_control(SyncUuid(sync_uuid, full))
        rt.set_state(replace(rt.state, repl=ReplState.SyncSource,
                             peer_disk=DiskState.Inconsistent), "resync start")
        total = disk.out_of_sync_bytes()
        self._started = time.monotonic()
        self.progress = ResyncProgress(total, self._started)
        log.info("%s: resync started as SyncSource: %d KiB to send (%s), resync-rate %d KiB/s",
                 self.name, total // 1024, "full" if full else "bitmap",
                 rt.resource.disk.resync_rate_bps // 1024)
        self.runner = ResyncRunner(self, disk.the_engine(), disk.meta().bitmap,
                                   rt.resource.disk.resync_rate_bps)
        self.runner.start()

    def begin_target(self) -> None:
        rt = self.rt
        rt.set_state(replace(rt.state, repl=ReplState.SyncTarget, disk=DiskState.Inconsistent),
                     "resync start")
        self._started = time.monotonic()
        self.progress = ResyncProgress(rt.disk.out_of_sync_bytes(), self._started)

    def resync_finished(self, runner: ResyncRunner) -> None:
        """The runner's callback (its thread): the SyncSource sent and saw acknowledged all."""
        rt, disk = self.rt, self.rt.disk
        with rt.lock:
            if runner is not self.runner:
                return
            self.runner = None
            self.finish_progress()
            disk.set_uuids(disk.uuids.finish_resync_source(), "resync finished",
                           rt.state.role is Role.Primary)
            disk.clear_crashed_primary()
            disk.store_bitmap(force=True)
            rt.conn.send_control(PeerUuids(disk.uuids))
            rt.set_state(rt.request(Request.SYNC_FINISHED, "resync"), "resync finished")
            rt.conn.send_state()

    def finish_progress(self) -> None:
        p = self.progress
        took = time.monotonic() - self._started if p else 0.0
        total = p.total_bytes if p else 0
        rate = total / took if took > 0 else 0.0
        self.last_resync = {"bytes": total, "seconds": round(took, 3), "rate_bps": round(rate)}
        log.info("%s: resync finished: %d KiB in %.2f s (%.0f KiB/s)", self.name, total // 1024,
                 took, rate / 1024)
        self.progress = None

    def stop(self) -> None:
        self.verify.stop()
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        self.progress = None

    def update_progress(self, now: float) -> None:
        if self.progress is not None and self.rt.disk.has_md:
            p = self.progress
            p.update(p.total_bytes - self.rt.disk.out_of_sync_bytes(), now)

    def status(self, now: float) -> dict[str, Any] | None:
        if self.progress is None:
            return None
        self.update_progress(now)
        rep = self.progress.report(now)
        return {"percent": round(rep.percent, 2), "done_bytes": rep.done_bytes,
                "total_bytes": rep.total_bytes, "rate_bps": round(rep.rate_bps),
                "avg_rate_bps": round(rep.avg_rate_bps),
                "eta_s": None if rep.eta_s is None else round(rep.eta_s, 1)}

    # --- a re-attached failed disk ---------------------------------------------------------

    def request_full_resync(self, why: str) -> None:
        """Ask the UpToDate peer for a full resync of this re-attached disk. Writes go on to
        the peer alone meanwhile (the peer marks them); any sent from here on may race the
        resync, so the disk is handed back only if none was (`disk_usable_after_resync`)."""
        rt = self.rt
        self._remote_writes_at = rt.disk.the_engine().remote_writes()
        rt.set_state(replace(rt.state, repl=ReplState.StartingSyncT), why)
        rt.conn.send_state()
        rt.conn.send_control(FullSyncRequest())

    def disk_usable_after_resync(self) -> bool:
        """The SyncTarget's resync is done: True if the disk may serve I/O (always, unless it
        is a re-attached failed disk that got writes it may have missed: then resync again)."""
        rt = self.rt
        engine = rt.disk.the_engine()
        if not engine.disk_failed():
            return True
        if engine.reuse_disk(self._remote_writes_at):
            log.info("%s: disk back in use after the resync", self.name)
            return True
        log.warning("%s: writes reached only the peer during the resync: resyncing again",
                    self.name)
        self.finish_progress()
        rt.set_state(replace(rt.state, repl=ReplState.Established), "resync incomplete")
        self.request_full_resync("resync again")
        return False
