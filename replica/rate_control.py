# SPDX-License-Identifier: GPL-2.0-or-later
"""The resync-rate controller of DRBD 8.4 and its application-I/O throttle, sans-I/O.

Owns two pure objects that the SyncSource's runner (replica.peer_link.ResyncRunner) drives once
per step of STEP_S = 0.1 s (DRBD's SLEEP_TIME), passing what it measured; neither reads a clock,
a counter or a socket.

`RateController(settings)` is drbd_rs_controller() (DRBD 8.4 drbd_worker.c), in bytes instead of
sectors. DRBD runs it on the SyncTarget, which requests blocks; we push from the SyncSource, and
"requested, not yet received" is our "sent, not yet acknowledged" (RS_DATA without RS_DONE)::

    step(acked, in_flight) -> bytes to send in this step
        acked      bytes acknowledged since the previous step      (DRBD: rs_sect_in)
        in_flight  bytes sent and not acknowledged, after `acked`  (DRBD: rs_in_flight)

        steps = c-plan-ahead / STEP_S                 the plan is a FIFO of `steps` slots
        want  = first step:  resync-rate * STEP_S * steps
                c-fill-target != 0:  c-fill-target            bytes we want in flight
                else:  acked * c-delay-target / STEP_S        what arrives in c-delay-target
        correction = want - in_flight - plan_total
        every slot += correction / steps              spread the correction over the plan
        this step   = acked + (the slot that falls out of the FIFO), clamped to
                      [0, c-max-rate * STEP_S]        (c-max-rate 0: no cap, DRBD 9.0.28)

    With `c-plan-ahead 0` the controller is off: resync-rate * STEP_S every step (fixed rate).

`AppIoThrottle(min_rate_bps)` is drbd_rs_should_slow_down(): application I/O keeps priority.
When the application moved more than ACTIVITY_BYTES (DRBD: 64 sectors) since the previous check
and the resync ran faster than c-min-rate over the last RATE_WINDOW_S (DRBD: two sync marks,
about 6 s), the resync waits; so under application load it proceeds at about c-min-rate, and at
full speed again as soon as the application is idle. `c-min-rate 0` never throttles.
"""
from collections import deque
from dataclasses import dataclass

STEP_S = 0.1                    # DRBD SLEEP_TIME (HZ / 10)
ACTIVITY_BYTES = 64 * 512       # application I/O above this between two checks is "active"
RATE_WINDOW_S = 6.0             # the recent resync rate compared with c-min-rate
BLOCK = 4096


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """The `disk {}` options of the controller, in bytes and seconds (replica.config)."""
    resync_rate_bps: int = 250 * 1024
    plan_ahead_s: float = 2.0
    fill_target_bytes: int = 100 * 512
    delay_target_s: float = 1.0
    max_rate_bps: int = 102400 * 1024
    min_rate_bps: int = 250 * 1024

    @classmethod
    def from_disk(cls, disk) -> "ControllerSettings":
        return cls(disk.resync_rate_bps, disk.c_plan_ahead_s, disk.c_fill_target_bytes,
                   disk.c_delay_target_s, disk.c_max_rate_bps, disk.c_min_rate_bps)

    @property
    def is_dynamic(self) -> bool:
        return self.plan_ahead_s > 0


class RateController:
    """`RateController(settings)`; `step(acked, in_flight)` once per STEP_S."""

    def __init__(self, settings: ControllerSettings):
        if min(settings.resync_rate_bps, settings.fill_target_bytes, settings.max_rate_bps,
               settings.min_rate_bps) < 0 or settings.plan_ahead_s < 0 or settings.delay_target_s < 0:
            raise ValueError(f"resync controller: negative setting: {settings}")
        self.settings = settings
        self.steps = max(1, round(settings.plan_ahead_s / STEP_S))
        self._plan: deque[int] = deque([0] * self.steps)
        self._plan_total = 0
        self.last_bytes = 0          # what the last step chose (status: the controller's rate)

    @property
    def rate_bps(self) -> float:
        """The rate the last step chose."""
        return self.last_bytes / STEP_S

    def step(self, acked: int, in_flight: int) -> int:
        """Bytes to send in this step (a multiple of BLOCK, at least one block unless 0)."""
        s = self.settings
        acked, in_flight = max(0, acked), max(0, in_flight)
        if not s.is_dynamic:
            n = int(s.resync_rate_bps * STEP_S)
        else:
            if in_flight + acked == 0:
                want = int(s.resync_rate_bps * STEP_S) * self.steps
            elif s.fill_target_bytes:
                want = s.fill_target_bytes
            else:
                want = int(acked * s.delay_target_s / STEP_S)
            correction = want - in_flight - self._plan_total
            per_step = int(correction / self.steps)          # C division truncates toward 0
            for i in range(self.steps):
                self._plan[i] += per_step
            self._plan_total += per_step * self.steps
            curr = self._plan.popleft()
            self._plan.append(0)
            self._plan_total -= curr
            n = max(0, acked + curr)
            if s.max_rate_bps:
                n = min(n, int(s.max_rate_bps * STEP_S))
        n = (n + BLOCK - 1) // BLOCK * BLOCK
        self.last_bytes = n
        return n


class AppIoThrottle:
    """`AppIoThrottle(min_rate_bps)`; `should_slow_down(app_bytes, resync_bytes, now)`."""

    def __init__(self, min_rate_bps: int):
        self.min_rate_bps = min_rate_bps
        self._last_app: int | None = None
        self._marks: deque[tuple[float, int]] = deque()
        self.app_active = False      # the last check saw application I/O

    def should_slow_down(self, app_bytes: int, resync_bytes: int, now: float) -> bool:
        """`app_bytes`: the application's reads and writes on this node so far (a counter);
        `resync_bytes`: the resync's acknowledged bytes so far. True: send nothing now."""
        self._marks.append((now, resync_bytes))
        while len(self._marks) > 1 and now - self._marks[1][0] >= RATE_WINDOW_S:
            self._marks.popleft()
        if not self.min_rate_bps:
            return False
        last, self._last_app = self._last_app, app_bytes
        self.app_active = last is not None and app_bytes - last > ACTIVITY_BYTES
        return self.app_active and self.recent_rate_bps(now) > self.min_rate_bps

    def recent_rate_bps(self, now: float) -> float:
        t0, b0 = self._marks[0] if self._marks else (now, 0)
        t1, b1 = self._marks[-1] if self._marks else (now, 0)
        dt = max(now - t0, STEP_S)
        return (b1 - b0) / dt

    @property
    def app_active_budget(self) -> int:
        """Bytes one step may send while the application is active and the resync is below
        c-min-rate (a 10 MiB controller step would be a burst the application waits behind)."""
        return max(BLOCK, int(self.min_rate_bps * STEP_S) // BLOCK * BLOCK)
