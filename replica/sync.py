# SPDX-License-Identifier: GPL-2.0-or-later
"""Resynchronisation of one resource: who starts it, its progress, how it ends (and verify).

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

Pauses: `pause()`/`resume()` (pause-sync/resume-sync, DRBD's user pause), the peer's pause
(RESYNC_PAUSE) and resync-after (the runner asks `resync_blocked()` each step) show as
PausedSyncS/PausedSyncT and in status as `suspended` (user, peer, dependency).

Online verify (VerifyS/VerifyT) is `self.verify`, a replica.verify.VerifyControl: it shares
the connection's lifetime with the resync (stop() ends both).
"""
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from replica.mirror import DIGESTS, digest_id
from replica.peer_link import ResyncRunner
from replica.protocol.repl_control import FullSyncRequest, PeerUuids, ResyncPause, SyncUuid
from replica.rate_control import ControllerSettings
from replica.resync import ResyncProgress
from replica.roles import Request
from replica.states import DiskState, ReplState, Role
from replica.uuids import MdFlag
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
        self._target_prepared = False         # before-resync-target ran for the coming resync
        self.peer_paused = False              # the peer ran pause-sync (DRBD's peer_isp)
        self.dependency: str | None = None    # the resource we wait for (resync-after, aftr_isp)
        # the daemon's resources by name, for resync-after (set by replica.daemon)
        self.lookup: Callable[[str], ResourceRuntime | None] = lambda name: None
        self.verify = VerifyControl(rt)

    def begin_source(self, full: bool, peer_crashed: bool = False) -> None:
        """`peer_crashed`: the peer's handshake said it crashed as Primary (csums-after-crash-only)."""
        rt, disk = self.rt, self.rt.disk
        # DRBD's drbd_start_resync: the before-resync-source handler runs to its end first;
        # an exit code other than 0 (or 3, "old userland tools") drops the connection
        rc = rt.run_handler_wait("before-resync-source")
        if rc == 3:
            log.info("%s: before-resync-source handler returned 3, ignoring. Old userland tools?",
                     self.name)
        elif rc != 0:
            rt.conn.disconnect_after_handler(rc, "before-resync-source")
            return
        crashed = peer_crashed or MdFlag.CRASHED_PRIMARY in disk.meta().sb.flags
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
        settings = ControllerSettings.from_disk(rt.resource.disk)
        csums = self._csums_alg(crashed)
        log.info("%s: resync started as SyncSource: %d KiB to send (%s), %s%s", self.name,
                 total // 1024, "full" if full else "bitmap", _controller_text(settings),
                 f", csums-alg {csums}" if csums else "")
        self.runner = ResyncRunner(self, disk.the_engine(), disk.meta().bitmap, settings,
                                   csums_alg=csums)
        self.runner.start()

    def before_target(self) -> int | None:
        """DRBD's before-resync-target, before this node becomes SyncTarget, once per resync
        (until it finishes or the connection goes): the handler's exit code (0 = go ahead;
        also when no handler is set). The caller drops the connection otherwise, as DRBD
        does. Runs to its end (DRBD waits for it too): a
        snapshot of the consistent-but-old data taken here is complete before the resync
        overwrites anything, provided the data is not already arriving (`connect`: it runs
        before the socket is handed to C; `invalidate`: before the full sync is asked for)."""
        if self._target_prepared:
            return 0
        rc = self.rt.run_handler_wait("before-resync-target")
        self._target_prepared = rc == 0
        return rc

    def _csums_alg(self, crashed: bool) -> str | None:
        """The digest of a checksum-based resync, or None (DRBD's use_checksum_based_resync:
        csums-alg set, and with csums-after-crash-only only after a Primary crashed)."""
        net = self.rt.resource.net
        alg = net.csums_alg
        if not alg or (net.csums_after_crash_only and not crashed):
            return None
        if digest_id(alg) is None:
            log.error("%s: csums-alg %s: unknown digest (known: %s): resyncing without "
                      "checksums", self.name, alg, ", ".join(DIGESTS))
            return None
        return alg

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
            self.finish_progress(runner)
            disk.set_uuids(disk.uuids.finish_resync_source(), "resync finished",
                           rt.state.role is Role.Primary)
            disk.clear_crashed_primary()
            disk.store_bitmap(force=True)
            rt.conn.send_control(PeerUuids(disk.uuids))
            rt.set_state(rt.request(Request.SYNC_FINISHED, "resync"), "resync finished")
            rt.conn.send_state()

    def finish_progress(self, runner: ResyncRunner | None = None) -> None:
        self._target_prepared = False
        p = self.progress
        took = time.monotonic() - self._started if p else 0.0
        total = p.total_bytes if p else 0
        rate = total / took if took > 0 else 0.0
        self.last_resync = {"bytes": total, "seconds": round(took, 3), "rate_bps": round(rate)}
        if runner is not None and runner.csums_alg:
            self.last_resync.update(csums_alg=runner.csums_alg,
                                    csum_checked_bytes=runner.csum_bytes_checked,
                                    csum_equal_bytes=runner.csum_bytes_equal,
                                    data_sent_bytes=runner.bytes_sent)
        log.info("%s: resync finished: %d KiB in %.2f s (%.0f KiB/s)", self.name, total // 1024,
                 took, rate / 1024)
        self.progress = None

    # --- pause-sync / resume-sync, the peer's pause, resync-after ---------------------------

    def suspended(self) -> list[str]:
        """Why the resync waits (DRBD 9's resync-suspended: user, peer, dependency)."""
        why = []
        if self.rt.state.susp_user:
            why.append("user")
        if self.peer_paused:
            why.append("peer")
        if self.dependency is not None:
            why.append("dependency")
        return why

    def resync_blocked(self) -> bool:
        """The runner's question each step (its thread): may it send now? Also follows the
        resource named by resync-after, and shows the pause as PausedSyncS/T."""
        rt = self.rt
        # never wait for the lock: its holder may be stopping this very runner (and joining it)
        if not rt.lock.acquire(blocking=False):
            return bool(self.suspended())
        try:
            after = rt.resource.disk.resync_after
            dep = None
            if after:
                other = self.lookup(after.split("/")[0])
                if other is not None and other is not rt and other.state.repl.is_resync:
                    dep = after
            if dep != self.dependency:
                log.info("%s: resync %s: resync-after %s %s", self.name,
                         "paused" if dep else "resumed", after,
                         "is resyncing" if dep else "finished its resync")
                self.dependency = dep
                rt.conn.send_control(ResyncPause(dep is not None))
            self.show_pause()
            return bool(self.suspended())
        finally:
            rt.lock.release()

    def show_pause(self) -> None:
        """SyncSource/SyncTarget <-> PausedSyncS/PausedSyncT after a pause reason changed."""
        rt = self.rt
        s = rt.state
        paused = bool(self.suspended())
        if paused and s.repl in (ReplState.SyncSource, ReplState.SyncTarget):
            repl = ReplState.PausedSyncS if s.repl is ReplState.SyncSource else ReplState.PausedSyncT
        elif not paused and s.repl in (ReplState.PausedSyncS, ReplState.PausedSyncT):
            repl = ReplState.SyncSource if s.repl is ReplState.PausedSyncS else ReplState.SyncTarget
        else:
            return
        rt.set_state(replace(s, repl=repl), "resync " + ("paused: " + ", ".join(
            self.suspended()) if paused else "resumed"))

    def pause(self) -> None:
        """`pause-sync` (under the runtime's lock): DRBD's user pause, shown on both sides."""
        rt = self.rt
        rt.set_state(rt.request(Request.PAUSE_SYNC, "pause-sync"), "pause-sync")
        rt.conn.send_control(ResyncPause(True))

    def resume(self) -> None:
        rt = self.rt
        rt.set_state(rt.request(Request.RESUME_SYNC, "resume-sync"), "resume-sync")
        rt.conn.send_control(ResyncPause(False))
        self.show_pause()

    def on_peer_pause(self, paused: bool) -> None:
        """The peer paused (pause-sync, or resync-after on its side) or resumed."""
        self.peer_paused = paused
        self.show_pause()

    def apply_settings(self) -> None:
        """The resource's disk options changed (disk-options, adjust): a running resync
        follows them from its next step."""
        runner = self.runner
        if runner is not None:
            settings = ControllerSettings.from_disk(self.rt.resource.disk)
            runner.apply_settings(settings)
            log.info("%s: resync controller: %s", self.name, _controller_text(settings))

    def stop(self) -> None:
        self.verify.stop()
        self._target_prepared = False
        self.peer_paused = False
        self.dependency = None
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
        extra: dict[str, Any] = {"suspended": self.suspended()}
        runner = self.runner
        if runner is not None:
            extra["controller_rate_bps"] = round(runner.controller.rate_bps)
            extra["dynamic"] = runner.settings.is_dynamic
            extra["throttled"] = runner.throttled
        return {**extra,"percent": round(rep.percent, 2), "done_bytes": rep.done_bytes,
                "total_bytes": rep.total_bytes, "rate_bps": round(rep.rate_bps),
                "avg_rate_bps": round(rep.avg_rate_bps),
                "eta_s": None if rep.eta_s is None else round(rep.eta_s, 1)}

    # --- a re-attached failed disk ---------------------------------------------------------

    def request_full_resync(self, why: str) -> None:
        """Ask the UpToDate peer for a full resync of this re-attached disk. Writes go on to
        the peer alone meanwhile (the peer marks them); any sent from here on may race the
        resync, so the disk is handed back only if none was (`disk_usable_after_resync`)."""
        rt = self.rt
        if rc := self.before_target():
            rt.conn.disconnect_after_handler(rc)
            return
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


def _controller_text(s: ControllerSettings) -> str:
    k = 1024
    if not s.is_dynamic:
        return f"fixed resync-rate {s.resync_rate_bps // k} KiB/s (c-plan-ahead 0)"
    target = (f"c-fill-target {s.fill_target_bytes // k} KiB" if s.fill_target_bytes
              else f"c-delay-target {s.delay_target_s:g} s")
    return (f"dynamic: resync-rate {s.resync_rate_bps // k} KiB/s, c-plan-ahead "
            f"{s.plan_ahead_s:g} s, {target}, c-max-rate {s.max_rate_bps // k} KiB/s, "
            f"c-min-rate {s.min_rate_bps // k} KiB/s")
