# SPDX-License-Identifier: GPL-2.0-or-later
"""One service's state and Mon's alert decisions, without I/O or clocks (times are passed in).

The daemon (hbmon.daemon) runs the monitor and hands each result to
``ServiceState.on_result``; the answer says which transition happened (for the
journal) and which alert programs to run.  Mon's rules (mon 1.3 ``do_alert``)::

    failure alert, per period that contains `now`:
        suppressed while a dependency fails and dep_behavior is "a"
        alertafter N        only from the Nth consecutive failure on
        alertafter T        only once the service has failed for T
        alertafter N T      only once N failures fell within T
        numalerts N         at most N alerts per failure episode
        alertevery T [mode] not again within T, unless the summary changed (mode
                            "summary", the default), or summary or detail changed
                            ("observe_detail"); "strict"/"ignore_summary": never
    upalert, on failure -> ok: in each period that sent a failure alert this episode
        (or in every period, when it says no_comp_alerts)

Recovery (hbmon's own, not Mon's): while the service fails and is not suppressed,
each failed check asks for one restart until ``restart_max`` restarts were made;
the check after the last restart that still fails asks for one failover.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hbmon.config import AlertSpec, PeriodConfig, ServiceConfig

Tm = tuple[int, int, int, int, int]      # (wday 0=Sunday, hour, minute, mday, month 0-11)


@dataclass(slots=True)
class PeriodState:
    alert_count: int = 0
    last_alert: float | None = None
    last_summary: str | None = None
    last_detail: str | None = None
    alert_sent: bool = False


@dataclass(frozen=True, slots=True)
class AlertToRun:
    spec: AlertSpec
    kind: str                  # "failure" | "up"
    period: str
    next_in_s: float           # Mon's -l: seconds until the next alert may come (alertevery)


@dataclass(frozen=True, slots=True)
class Outcome:
    transition: str | None     # "down" | "up" | None
    alerts: tuple[AlertToRun, ...]
    recovery: str | None       # "restart" | "failover" | None
    suppressed: bool           # the dependency failed (monitor or alerts suppressed)


@dataclass(slots=True)
class ServiceState:
    cfg: ServiceConfig
    status: str = "untested"           # untested | ok | fail
    consec_failures: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    last_success: float | None = None
    last_check: float | None = None
    last_rc: int | None = None
    last_summary: str = ""
    last_detail: str = ""
    depend_ok: bool = True
    failure_times: list[float] = field(default_factory=list)
    periods: list[PeriodState] = field(default_factory=list)
    restarts: int = 0
    failed_over: bool = False
    alerts_sent: int = 0

    def __post_init__(self) -> None:
        self.periods = [PeriodState() for _ in self.cfg.periods]

    def on_suppressed(self, now: float) -> Outcome:
        """The dependency fails and dep_behavior is m/hm: the monitor was not run."""
        self.depend_ok = False
        self.last_check = now
        return Outcome(None, (), None, True)

    def on_result(self, ok: bool, rc: int, summary: str, detail: str, now: float, tm: Tm,
                  depend_ok: bool = True) -> Outcome:
        self.last_check = now
        self.last_rc = rc
        self.depend_ok = depend_ok
        prev = self.status
        if ok:
            self.status = "ok"
            self.last_success = now
            transition = "up" if prev == "fail" else ("up" if prev == "untested" else None)
            alerts = self._upalerts() if prev == "fail" else []
            self.consec_failures = 0
            self.first_failure = None
            self.failure_times.clear()
            self.restarts = 0
            self.failed_over = False
            self.last_summary, self.last_detail = summary, detail
            for p in self.periods:
                p.alert_count, p.last_alert, p.alert_sent = 0, None, False
                p.last_summary = p.last_detail = None
            self.alerts_sent += len(alerts)
            return Outcome(transition, tuple(alerts), None, False)
        self.status = "fail"
        self.consec_failures += 1
        self.last_failure = now
        if self.first_failure is None:
            self.first_failure = now
        self.failure_times.append(now)
        self.last_summary, self.last_detail = summary, detail
        transition = "down" if prev != "fail" else None
        if not depend_ok and self.cfg.dep_behavior == "a":
            return Outcome(transition, (), None, True)
        alerts = self._failure_alerts(now, tm)
        self.alerts_sent += len(alerts)
        recovery = None
        if self.cfg.restart and not self.failed_over:
            if self.restarts < self.cfg.restart_max:
                recovery = "restart"
                self.restarts += 1
            elif self.cfg.failover:
                recovery = "failover"
                self.failed_over = True
        return Outcome(transition, tuple(alerts), recovery, False)

    def _failure_alerts(self, now: float, tm: Tm) -> list[AlertToRun]:
        out: list[AlertToRun] = []
        for pc, ps in zip(self.cfg.periods, self.periods, strict=True):
            if not pc.period.contains(tm) or not pc.alerts or not self._alertafter_met(pc, now):
                continue
            if pc.numalerts and ps.alert_count >= pc.numalerts:
                continue
            if pc.alertevery_s and ps.last_alert is not None and now - ps.last_alert < pc.alertevery_s:
                changed = ps.last_summary != self.last_summary
                if pc.alertevery_mode == "observe_detail":
                    changed = changed or ps.last_detail != self.last_detail
                elif pc.alertevery_mode in ("strict", "ignore_summary"):
                    changed = False
                if not changed:
                    continue
            ps.alert_count += 1
            ps.last_alert = now
            ps.alert_sent = True
            ps.last_summary, ps.last_detail = self.last_summary, self.last_detail
            out += [AlertToRun(a, "failure", pc.period.text, pc.alertevery_s) for a in pc.alerts]
        return out

    def _alertafter_met(self, pc: PeriodConfig, now: float) -> bool:
        if pc.alertafter_within is not None and pc.alertafter_ival_s is not None:
            recent = [t for t in self.failure_times if now - t <= pc.alertafter_ival_s]
            self.failure_times[:] = recent
            return len(recent) >= pc.alertafter_within
        if pc.alertafter_ival_s is not None:
            return self.first_failure is not None and now - self.first_failure >= pc.alertafter_ival_s
        return self.consec_failures >= pc.alertafter_consec

    def _upalerts(self) -> list[AlertToRun]:
        out: list[AlertToRun] = []
        for pc, ps in zip(self.cfg.periods, self.periods, strict=True):
            if ps.alert_sent or pc.no_comp_alerts:
                out += [AlertToRun(a, "up", pc.period.text, 0.0) for a in pc.upalerts]
        return out

    def snapshot(self) -> dict:
        return {"service": self.cfg.name, "watch": self.cfg.watch, "status": self.status,
                "depend_ok": self.depend_ok, "consec_failures": self.consec_failures,
                "last_check": self.last_check, "last_success": self.last_success,
                "last_failure": self.last_failure, "first_failure": self.first_failure,
                "last_rc": self.last_rc, "summary": self.last_summary, "restarts": self.restarts,
                "failed_over": self.failed_over, "alerts_sent": self.alerts_sent,
                "interval_s": self.cfg.interval_s}
