# SPDX-License-Identifier: GPL-2.0-or-later
"""Online verify of one resource (DRBD's `drbdadm verify`): VerifyS / VerifyT, progress, the
out-of-sync blocks it finds, and the `out-of-sync` handler.

Owns `VerifyControl` (held by replica.sync.ResyncControl as `sync.verify`) and `VerifyRunner`
(one thread per running verify on the VerifyS). Digests never cross into Python: C reads each
range, digests its 4 KiB blocks, compares them on the peer and marks the differing blocks out
of sync on both sides (csrc/connection.c, OV_REQUEST/OV_REPLY); Python decides, paces, counts
and logs::

    replicactl verify RES [--start S] [--stop S]            (either node, Connected, UpToDate/UpToDate)
    VerifyS: start() ── VerifyStart(start, end, verify-alg) ──► VerifyT: on_peer_start()
                                                                same verify-alg, Established?
             ◄── VerifyStart(accepted) ─────────────────────── yes: VerifyT; no: VerifyEnd(REFUSED)
             VerifyRunner: rm_verify_send per 1 MiB, paced by verify_rate_bps() (c-max-rate, or
             resync-rate with c-plan-ahead 0), at most WINDOW unanswered; no request goes out
             before the VerifyT accepted (C on the VerifyT compares and marks whatever arrives,
             and the VerifyT counts from its acceptance)
    both:    on_out_of_sync(offset, length) per run C found: "Out of sync: start=S, size=N (sectors)"
    VerifyS: all answered ── VerifyEnd(FINISHED) ──► VerifyT ── both: finish(): Established,
             "Online verify done", "Online verify found N 4k block out of sync!", bitmap stored,
             `out-of-sync` handler when N > 0
    disconnect / connection lost: stop() on both sides (the marked blocks stay marked)

The blocks found stay out of sync in both bitmaps, as in DRBD 8.4: the next resync (after a
disconnect/connect, which a Primary left alone turns into a bitmap resync) repairs them.
"""
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from replica import mirror
from replica.errors import ReplicaError
from replica.protocol.repl_control import VerifyEnd, VerifyStart
from replica.protocol.repl_wire import VerifyOutcome
from replica.resync import ResyncProgress, TokenBucket
from replica.states import DiskState, Refusal, ReplState

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")

SECTOR = 512
BLOCK = mirror.BLOCK_SIZE
CHUNK = mirror.MAX_VERIFY_CHUNK         # one OV_REQUEST
WINDOW = 32 * CHUNK                     # requests in flight at most (both sides read meanwhile)
REPLY_WAIT_S = 60.0                     # the last replies: give up (stopped) after this


def parse_sectors(text: str) -> int:
    """drbdsetup's `--start`/`--stop`: sectors, or a number with a unit (s, k/K, m/M, g/G, t/T:
    KiB powers; drbdsetup's default unit for these is the 512-byte sector). Returns bytes."""
    units = {"s": SECTOR, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip()
    scale = SECTOR
    if t and t[-1].lower() in units:
        scale, t = units[t[-1].lower()], t[:-1]
    if not (t.isascii() and t.isdigit()):
        raise ReplicaError(f"verify: {text!r}: expected sectors or a size with a unit "
                           "(s, K, M, G, T)")
    return int(t) * scale


def verify_rate_bps(disk: Any) -> int:
    """The pace of a verify, 0 = unlimited: the resync's bound, as DRBD runs verify requests
    through its resync controller: c-max-rate while the controller is on (c-plan-ahead > 0; DRBD
    9.0.28's 0 = no cap), resync-rate in fixed mode (c-plan-ahead 0)."""
    return int(disk.c_max_rate_bps if disk.c_plan_ahead_s else disk.resync_rate_bps)


def check_alg(option: str, alg: str | None) -> None:
    """A verify-alg/data-integrity-alg C cannot compute: DRBD's refusal of an unknown kernel hash."""
    if alg and mirror.digest_id(alg) is None:
        raise ReplicaError(f"The '{option}' you specified is not known in the kernel. ({alg!r}; "
                           f"available: {', '.join(sorted(mirror.DIGESTS))})")


class VerifyRunner:
    """VerifyS: sends [start, end) to C in CHUNK requests, paced by rate_bps (0 = unlimited),
    with at most WINDOW bytes unanswered; then waits for the last replies and calls
    owner.runner_done(self, finished)."""

    def __init__(self, owner: "VerifyControl", engine: mirror.Engine, alg: str, start: int,
                 end: int, rate_bps: int):
        self.owner, self.engine, self.alg = owner, engine, alg
        self.start, self.end, self.rate_bps = start, end, rate_bps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"verify[{owner.name}]",
                                        daemon=True)
        st = engine.stats()
        self._sent_base = st["verify_bytes_sent"]
        self._done_base = st["verify_bytes_done"]

    def run(self) -> None:
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _answered(self) -> tuple[int, int, bool]:
        st = self.engine.stats()
        return (st["verify_bytes_sent"] - self._sent_base, st["verify_bytes_done"] - self._done_base,
                bool(st["peer_connected"]))

    def _run(self) -> None:
        bucket = TokenBucket(self.rate_bps, CHUNK, time.monotonic())
        offset = self.start
        try:
            while offset < self.end and not self._stop.is_set():
                sent, done, up = self._answered()
                if not up:
                    return
                if sent - done >= WINDOW:
                    self._stop.wait(0.0005)
                    continue
                wait = bucket.delay(time.monotonic())
                if wait > 0 and self._stop.wait(wait):
                    return
                n = min(CHUNK, self.end - offset)
                self.engine.verify_send(self.alg, offset, n)
                bucket.consume(n, time.monotonic())
                offset += n
            deadline = time.monotonic() + REPLY_WAIT_S
            while not self._stop.is_set():
                sent, done, up = self._answered()
                if done >= sent or not up or time.monotonic() > deadline:
                    self.owner.runner_done(self, finished=up and done >= sent)
                    return
                self._stop.wait(0.001)
        except OSError as exc:
            # the link went away: C reports peer_lost and the connection stops us
            log.warning("verify: %s: stopped: %s", self.owner.name, exc)


class VerifyControl:
    def __init__(self, rt: "ResourceRuntime"):
        self.rt = rt
        self.name = rt.name
        self.runner: VerifyRunner | None = None
        self.progress: ResyncProgress | None = None
        self.last_verify: dict[str, Any] | None = None
        self._source = False
        self._started = 0.0
        self._base: dict[str, int] = {}
        self._range = (0, 0)
        self._alg = ""
        self._run: tuple[int, int] | None = None      # the out-of-sync run being gathered

    @property
    def running(self) -> bool:
        return self.progress is not None

    # --- VerifyS --------------------------------------------------------------------------

    def start(self, start: int = 0, stop: int | None = None) -> None:
        """`replicactl verify` (under the runtime's lock): this node becomes VerifyS."""
        rt = self.rt
        if not rt.disk.has_md:
            raise Refusal.IS_DISKLESS.error(self.name)
        s = rt.state
        if not s.is_connected:
            raise Refusal.NEED_CONNECTION.error(self.name)
        if s.repl is not ReplState.Established or self.running:
            raise Refusal.RESYNC_RUNNING.error(self.name)
        if s.disk is not DiskState.UpToDate or s.peer_disk is not DiskState.UpToDate:
            raise Refusal.NO_UP_TO_DATE_DISK.error(self.name)
        alg = rt.resource.net.verify_alg
        if not alg:
            raise ReplicaError(f"{self.name}: verify: verify-alg not configured "
                               "(net { verify-alg ALG; })")
        check_alg("verify-alg", alg)
        size = rt.disk.size
        begin = min(start, size) // BLOCK * BLOCK        # DRBD rounds down to a bitmap block
        end = size if stop is None else min(stop, size)
        if end < begin:
            raise ReplicaError(f"{self.name}: verify: --stop {end // SECTOR} lies before "
                               f"--start {begin // SECTOR} (sectors)")
        rt.conn.send_control(VerifyStart(begin, end, alg))
        self._begin(source=True, begin=begin, end=end, why="verify start")
        self._alg = alg
        rate = verify_rate_bps(rt.resource.disk)
        log.info("%s: Starting Online Verify from sector %d (to %d, verify-alg %s, %s)",
                 self.name, begin // SECTOR, end // SECTOR, alg,
                 f"at most {rate // 1024} KiB/s" if rate else "unthrottled")

    def _accepted(self, msg: VerifyStart) -> None:
        """The VerifyT accepted: the requests may go."""
        if not (self._source and self.running and self.runner is None
                and (msg.start, msg.end, msg.alg) == (*self._range, self._alg)):
            log.warning("%s: unexpected verify acceptance from the peer: ignored", self.name)
            return
        self.runner = VerifyRunner(self, self.rt.disk.the_engine(), self._alg, msg.start, msg.end,
                                   verify_rate_bps(self.rt.resource.disk))
        self.runner.run()

    def runner_done(self, runner: VerifyRunner, finished: bool) -> None:
        """The runner's callback (its thread): every request answered, or given up."""
        rt = self.rt
        # whoever stops the runner holds the lock while joining it: never wait for it blindly
        while not rt.lock.acquire(timeout=0.05):
            if runner.stopping:
                return
        try:
            if runner is not self.runner:
                return
            self.runner = None
            outcome = VerifyOutcome.FINISHED if finished else VerifyOutcome.STOPPED
            rt.conn.send_control(VerifyEnd(outcome, self._oos_blocks()))
            self._finish(outcome)
        finally:
            rt.lock.release()

    # --- VerifyT (connection.on_control, under the runtime's lock) -------------------------

    def on_peer_start(self, msg: VerifyStart) -> None:
        if msg.accepted:
            self._accepted(msg)
            return
        rt = self.rt
        s = rt.state
        ours = rt.resource.net.verify_alg
        why = ""
        if s.repl is not ReplState.Established or self.running:
            why = f"{Refusal.RESYNC_RUNNING} ({s.repl})"
        elif msg.alg != ours:
            why = f"different verify-alg settings: me={ours or 'unset'!r} peer={msg.alg!r}"
        elif mirror.digest_id(msg.alg) is None:
            why = f"verify-alg {msg.alg!r} is not available here"
        elif msg.end > rt.disk.size:
            why = f"range end {msg.end} beyond the device ({rt.disk.size} bytes)"
        if why:
            log.error("%s: peer asked for an online verify: refused: %s", self.name, why)
            rt.conn.send_control(VerifyEnd(VerifyOutcome.REFUSED, 0, why))
            return
        log.info("%s: Online Verify (VerifyT) from sector %d to %d, verify-alg %s", self.name,
                 msg.start // SECTOR, msg.end // SECTOR, msg.alg)
        self._begin(source=False, begin=msg.start, end=msg.end, why="peer verify start")
        rt.conn.send_control(VerifyStart(msg.start, msg.end, msg.alg, accepted=True))

    def on_peer_end(self, msg: VerifyEnd) -> None:
        if not self.running:
            return
        if msg.outcome is VerifyOutcome.REFUSED:
            log.error("%s: the peer refused the online verify: %s", self.name, msg.reason)
            if self.runner is not None:
                runner, self.runner = self.runner, None
                runner.stop()
        self._finish(msg.outcome)

    # --- both sides -------------------------------------------------------------------------

    def on_out_of_sync(self, offset: int, length: int) -> None:
        """C found [offset, + length) different and marked it (monitor thread): gathered into
        runs, logged as DRBD does."""
        if self._run is not None and self._run[1] == offset:
            self._run = (self._run[0], offset + length)
            return
        self._print_run()
        self._run = (offset, offset + length)

    def _print_run(self) -> None:
        if self._run is not None:
            a, b = self._run
            log.warning("%s: Out of sync: start=%d, size=%d (sectors)", self.name, a // SECTOR,
                        (b - a) // SECTOR)
            self._run = None

    def _begin(self, source: bool, begin: int, end: int, why: str) -> None:
        rt = self.rt
        st = rt.disk.the_engine().stats()
        self._base = {k: st[k] for k in ("verify_bytes_done", "verify_bytes_checked",
                                         "verify_oos_blocks")}
        self._source = source
        self._started = time.monotonic()
        self._run = None
        self.progress = ResyncProgress(end - begin, self._started)
        self._range = (begin, end)
        rt.set_state(replace(rt.state, repl=ReplState.VerifyS if source else ReplState.VerifyT),
                     why)

    def _stats(self) -> dict[str, int]:
        engine = self.rt.disk.engine
        return engine.stats() if engine is not None else {}

    def _oos_blocks(self) -> int:
        return self._stats().get("verify_oos_blocks", 0) - self._base.get("verify_oos_blocks", 0)

    def _done_bytes(self) -> int:
        key = "verify_bytes_done" if self._source else "verify_bytes_checked"
        return self._stats().get(key, 0) - self._base.get(key, 0)

    def _finish(self, outcome: VerifyOutcome) -> None:
        rt = self.rt
        self._print_run()
        took = max(time.monotonic() - self._started, 1e-9)
        done, oos = self._done_bytes(), self._oos_blocks()
        p = self.progress
        self.progress = None
        self.last_verify = {"outcome": outcome.name.lower(), "role": "VerifyS" if self._source
                            else "VerifyT", "bytes": done, "total_bytes": p.total_bytes if p else 0,
                            "seconds": round(took, 3), "rate_bps": round(done / took),
                            "oos_blocks": oos, "start_sector": self._range[0] // SECTOR,
                            "ended_at": round(time.time(), 3)}
        if outcome is VerifyOutcome.FINISHED:
            log.info("%s: Online verify done (total %d sec; paused 0 sec; %d K/sec)", self.name,
                     round(took), done / took / 1024)
        else:
            log.warning("%s: Online verify %s after %d of %d KiB", self.name,
                        outcome.name.lower(), done // 1024, (p.total_bytes if p else 0) // 1024)
        if oos:
            log.warning("%s: Online verify found %d 4k block out of sync!", self.name, oos)
        if rt.state.repl in (ReplState.VerifyS, ReplState.VerifyT):
            rt.set_state(replace(rt.state, repl=ReplState.Established), "verify "
                         + outcome.name.lower())
        rt.disk.store_bitmap(force=True)
        if oos and outcome is not VerifyOutcome.REFUSED:
            rt.run_handler("out-of-sync")

    def stop(self) -> None:
        """The connection went away (disconnect, loss): both sides stop; the blocks found so far
        stay marked. The caller sets the new state."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.stop()
        if self.progress is not None:
            self._print_run()
            p = self.progress
            log.warning("%s: Online verify stopped (connection lost) after %d of %d KiB; %d 4k "
                        "block out of sync", self.name, self._done_bytes() // 1024,
                        p.total_bytes // 1024, self._oos_blocks())
            self.progress = None

    def status(self, now: float) -> dict[str, Any] | None:
        """`status --json` "verify": like "resync" (percent, rate, ETA) plus the blocks found."""
        p = self.progress
        if p is None:
            return None
        p.update(self._done_bytes(), now)
        rep = p.report(now)
        return {"percent": round(rep.percent, 2), "done_bytes": rep.done_bytes,
                "total_bytes": rep.total_bytes, "rate_bps": round(rep.rate_bps),
                "avg_rate_bps": round(rep.avg_rate_bps),
                "eta_s": None if rep.eta_s is None else round(rep.eta_s, 1),
                "role": "VerifyS" if self._source else "VerifyT",
                "start_sector": self._range[0] // SECTOR, "oos_blocks": self._oos_blocks()}
