# SPDX-License-Identifier: GPL-2.0-or-later
"""hbmon: a Mon-compatible service monitor that can restart a service or fail its group over.

    hbmon [-f] [--config-dir DIR] [--node NAME] [--run-dir DIR] [--ha-dir DIR] [--hbd-run-dir DIR]
    hbmon --config-test [--config-dir DIR]

Environment: HBMON_CONFIG_DIR (default /etc/mon; the file is mon.cf there), HBMON_NODE
(default `uname -n`), HBMON_RUN_DIR (default /run/hbmon), HBD_CONFIG_DIR (/etc/ha.d: where
``restart`` finds resource scripts, as hbd does) and HBD_RUN_DIR (/run/hbd: hbd's control
socket, for ``hbctl standby``).  The run dir holds ``hbmon.pid``, the control socket
``hbmon.sock`` (hacommon.control; ``{"cmd": "status"}``), the state file ``hbmon.json``
(rewritten after every check; hbctl reads it when hbmon does not answer) and the journal
``hbmon.jsonl``.  These names do not clash with hbd's, so one run dir may serve both.
Exit codes: 0 ok, 1 runtime failure, 6 configuration error.

Scheduling: one asyncio task per service.  A service runs at most one monitor at a time;
at most ``maxprocs`` monitors run at once (mon.cf global, 0 = no limit).  The first run of
each service is delayed by a random 0..randstart; each next run comes ``interval``
(``failure_interval`` while failing) after the previous one started, +- random ``randskew``.
A monitor still running after ``timeout`` (hbmon's keyword; default the interval, at most
60 s) is killed with its process group and counts as a failure.  Alerts run in the
background: a slow mail.alert never delays a check.

Monitor protocol (Mon's): ``PROG [ARGS] HOST...`` (hosts of the watch group unless the
line ends in ";;", minus exclude_hosts) with MON_* in the environment; exit 0 = ok; the
first line of stdout is the summary (failed hosts), the rest the detail.  Alert protocol:
``PROG -s SERVICE -g GROUP -h "HOSTS" -t TIME -l SECS [-u] [ARGS]``, summary and detail on
stdin, MON_ALERTTYPE failure|up, MON_RETVAL, MON_OPSTATUS, MON_GROUP, MON_SERVICE.

Journal records (one JSON object per line, fsync'd; hbd.journal's shape plus "time")::

    {"ts": ISO-8601 UTC, "time": epoch, "mono": monotonic, "node": N, "event": "service",
     "service": S, "watch": W, "group": G, "state": "up"|"down", "planned": false, "why": summary}
    {... "event": "recovery", "service", "watch", "group", "action": "restart"|"failover",
     "result": "ok"|"failed"|"skipped", "detail"}
    {... "event": "alert", "service", "watch", "kind": "failure"|"up", "prog", "rc"}

"group" is the haresources group holding the ``restart`` resource (its key, e.g. the
virtual IP), else the watch group.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from hacommon.control import ControlError, ControlServer, exchange
from hacommon.daemonize import daemonize
from hacommon.errors import ConfigError, HaError
from hbmon.config import AlertSpec, MonConfig, ServiceConfig, load_mon_config
from hbmon.state import AlertToRun, Outcome, ServiceState

DEFAULT_CONFIG_DIR = "/etc/mon"
DEFAULT_RUN_DIR = "/run/hbmon"
PID_NAME = "hbmon.pid"
SOCKET_NAME = "hbmon.sock"
STATE_NAME = "hbmon.json"
JOURNAL_NAME = "hbmon.jsonl"
EXIT_CONFIG = 6
ALERT_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 120.0
MONITOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "monitors")

NO_ANSWER = "(hbd does not answer)"     # _group_state: hbd's control socket is silent
log = logging.getLogger("hbmon")


def find_program(name: str, dirs: Sequence[str], what: str) -> str:
    if "/" in name:
        if os.access(name, os.X_OK):
            return name
        raise ConfigError(f"{what} {name!r}: not an executable file")
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ConfigError(f"{what} {name!r} not found: searched {', '.join(dirs)}")


def monitor_dirs(cfg: MonConfig) -> tuple[str, ...]:
    """mon.cf's mondir (or Mon's defaults), then hbmon's own monitors."""
    return (*cfg.mondirs, MONITOR_DIR)


class Journal:
    """hbmon's journal: hbd.journal's record shape plus an epoch "time"; fsync after each record."""

    def __init__(self, path: str, node: str):
        self.path, self.node = path, node
        self._f = open(path, "a", encoding="utf-8")

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        now = time.time()
        rec: dict[str, Any] = {"ts": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
                               "time": round(now, 6), "mono": round(time.monotonic(), 6),
                               "node": self.node, "event": event}
        rec.update(fields)
        self._f.write(json.dumps(rec, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        return rec

    def close(self) -> None:
        self._f.close()


async def run_program(argv: list[str], *, timeout_s: float, env: dict[str, str],
                      stdin: bytes | None = None) -> tuple[int, str, bool]:
    """(exit code or -1, stdout, timed out); the process group is killed on timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        return -1, f"{argv[0]}: cannot execute: {e.strerror}", False
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        return -1, f"{os.path.basename(argv[0])}: timed out after {timeout_s:g} s", True
    text = (out or b"").decode("utf-8", "replace")
    if not text.strip() and err:
        text = err.decode("utf-8", "replace")
    return (proc.returncode if proc.returncode is not None else -1), text, False


class Daemon:
    def __init__(self, cfg: MonConfig, *, node: str, run_dir: str, ha_dir: str, hbd_run_dir: str):
        self.cfg, self.node, self.run_dir = cfg, node, run_dir
        self.ha_dir, self.hbd_run_dir = ha_dir, hbd_run_dir
        self.states = {s.key: ServiceState(s) for s in cfg.services()}
        self.journal = Journal(os.path.join(run_dir, JOURNAL_NAME), node)
        self._procs = asyncio.Semaphore(cfg.maxprocs) if cfg.maxprocs else None
        self._stop = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self._snapshot: dict[str, Any] = {}
        self.groups = self._haresources_groups()

    # --- heartbeat side ------------------------------------------------------------------------
    def _haresources_groups(self) -> dict[str, tuple[str, str]]:
        """resource script name -> (group key, preferred node), from ha.d when readable."""
        try:
            from hbd.config import load_ha_config
            from hbd.haresources import load_haresources
            nodes = load_ha_config(self.ha_dir).nodes
            out: dict[str, tuple[str, str]] = {}
            for g in load_haresources(self.ha_dir, nodes):
                for r in g.resources:
                    out.setdefault(r.name, (g.name, g.node))
            return out
        except (HaError, OSError) as e:
            log.info("no heartbeat configuration in %s (%s): recovery restarts only, group = watch", self.ha_dir, e)
            return {}

    def group_of(self, svc: ServiceConfig) -> str:
        if svc.restart and svc.restart[0] in self.groups:
            return self.groups[svc.restart[0]][0]
        return svc.watch

    def _hbd(self, req: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return exchange(os.path.join(self.hbd_run_dir, "hbd.sock"), req, timeout_s=10.0)
        except (ControlError, OSError):
            return None

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.journal.record("daemon", state="start", program="hbmon")
        self._publish()
        control = ControlServer(os.path.join(self.run_dir, SOCKET_NAME), self._on_request, name="hbmon")
        log.info("hbmon %s: watching %d services (%s)", self.node, len(self.states), self.cfg.path)
        tasks = [asyncio.create_task(self._service_loop(st)) for st in self.states.values() if st.cfg.monitor]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in list(self._bg):
                t.cancel()
            await asyncio.gather(*self._bg, return_exceptions=True)
            control.close()
            self.journal.record("daemon", state="stopped", program="hbmon")
            self.journal.close()
        log.info("hbmon %s: stopped", self.node)
        return 0

    def _on_request(self, req: dict[str, Any]) -> dict[str, Any]:     # control thread
        if req.get("cmd") == "ping":
            return {"ok": True}
        if req.get("cmd") == "status":
            return {"ok": True, **self._snapshot}
        return {"ok": False, "error": f"control: unknown command {req.get('cmd')!r}"}

    def _publish(self) -> None:
        snap = {"node": self.node, "pid": os.getpid(), "config": self.cfg.path, "time": time.time(),
                "services": [dict(st.snapshot(), group=self.group_of(st.cfg)) for st in self.states.values()]}
        self._snapshot = snap
        path = os.path.join(self.run_dir, STATE_NAME)
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(snap, f)
            os.replace(path + ".tmp", path)
        except OSError as e:
            log.warning("state file %s: %s", path, e.strerror)

    def _depend_ok(self, svc: ServiceConfig) -> bool:
        if svc.depend is None:
            return True

        def ok(group: str, name: str) -> bool:
            st = self.states.get(f"{group}/{name}")
            return st is None or (st.status != "fail" and st.depend_ok)
        return svc.depend.evaluate(ok)

    async def _service_loop(self, st: ServiceState) -> None:
        svc = st.cfg
        randstart = self.cfg.randstart_s
        await asyncio.sleep(random.uniform(0, randstart) if randstart else 0)
        while True:
            started = time.monotonic()
            await self.check_once(st)
            ival = (svc.failure_interval_s if st.status == "fail" and svc.failure_interval_s else svc.interval_s)
            ival = (ival or 60.0) + (random.uniform(-svc.randskew_s, svc.randskew_s) if svc.randskew_s else 0.0)
            await asyncio.sleep(max(0.0, started + ival - time.monotonic()))

    def hosts(self, svc: ServiceConfig) -> list[str]:
        return [h for h in self.cfg.hostgroups.get(svc.watch, [svc.watch]) if h not in svc.exclude_hosts]

    def _env(self, st: ServiceState) -> dict[str, str]:
        env = dict(os.environ)
        env.update(st.cfg.env)
        env.update({"MON_LAST_SUMMARY": st.last_summary, "MON_LAST_OUTPUT": st.last_detail,
                    "MON_LAST_FAILURE": str(int(st.last_failure or 0)),
                    "MON_FIRST_FAILURE": str(int(st.first_failure or 0)),
                    "MON_LAST_SUCCESS": str(int(st.last_success or 0)),
                    "MON_DESCRIPTION": st.cfg.description, "MON_DEPEND_STATUS": "1" if st.depend_ok else "0",
                    "MON_LOGDIR": self.cfg.globals.get("logdir", self.run_dir),
                    "MON_STATEDIR": self.cfg.globals.get("statedir", self.run_dir),
                    "HBD_CONFIG_DIR": self.ha_dir, "HBD_RUN_DIR": self.hbd_run_dir, "HBMON_NODE": self.node})
        return env

    async def check_once(self, st: ServiceState) -> Outcome:
        svc = st.cfg
        now = time.time()
        tm = time.localtime(now)
        tmv = ((tm.tm_wday + 1) % 7, tm.tm_hour, tm.tm_min, tm.tm_mday, tm.tm_mon - 1)
        dep_ok = self._depend_ok(svc)
        if not dep_ok and svc.dep_behavior in ("m", "hm"):
            if st.depend_ok:
                log.info("%s: dependency %s fails: monitor suppressed", svc.key, svc.depend.text if svc.depend else "")
            out = st.on_suppressed(now)
            self._publish()
            return out
        state_at_start = await asyncio.to_thread(self._group_state, svc) if svc.restart else None
        try:
            prog = find_program(svc.monitor[0], monitor_dirs(self.cfg), "monitor")
        except ConfigError as e:
            rc, text, timed_out = -1, str(e), False
        else:
            argv = [prog, *svc.monitor[1:], *(self.hosts(svc) if svc.monitor_hosts else [])]
            if self._procs is not None:
                async with self._procs:
                    rc, text, timed_out = await run_program(argv, timeout_s=svc.effective_timeout_s, env=self._env(st))
            else:
                rc, text, timed_out = await run_program(argv, timeout_s=svc.effective_timeout_s, env=self._env(st))
        summary, _, detail = text.partition("\n")
        summary = summary.strip()
        if rc != 0 and not summary:
            summary = f"exit status {rc}"
        out = st.on_result(rc == 0, rc, summary, detail, now, tmv, dep_ok)
        if out.transition:
            log.log(logging.WARNING if out.transition == "down" else logging.INFO,
                    "service %s: %s%s", svc.key, out.transition, f": {summary}" if summary else "")
            self.journal.record("service", service=svc.name, watch=svc.watch, group=self.group_of(svc),
                                state=out.transition, planned=False, why=summary or "ok", rc=rc)
        if out.suppressed:
            log.info("%s: failing, but dependency %s fails too: alerts suppressed", svc.key,
                     svc.depend.text if svc.depend else "")
        for a in out.alerts:
            self._background(self._alert(st, a, now))
        if out.recovery:
            await self._recover(st, out.recovery, state_at_start)
        self._publish()
        return out

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _alert(self, st: ServiceState, a: AlertToRun, when: float) -> None:
        svc = st.cfg
        spec: AlertSpec = a.spec
        try:
            prog = find_program(spec.prog, self.cfg.alertdirs, "alert")
        except ConfigError as e:
            log.error("%s: %s", svc.key, e)
            self.journal.record("alert", service=svc.name, watch=svc.watch, kind=a.kind, prog=spec.prog, rc=-1)
            return
        argv = [prog, "-s", svc.name, "-g", svc.watch, "-h", " ".join(self.hosts(svc)), "-t", str(int(when)),
                "-l", str(int(a.next_in_s))]
        if a.kind == "up":
            argv.append("-u")
        argv += list(spec.args)
        env = self._env(st)
        env.update({"MON_ALERTTYPE": a.kind, "MON_RETVAL": str(st.last_rc if st.last_rc is not None else 0),
                    "MON_OPSTATUS": "1" if a.kind == "up" else "0", "MON_GROUP": svc.watch,
                    "MON_SERVICE": svc.name})
        stdin = (st.last_summary + "\n" + st.last_detail).encode()
        rc, text, _ = await run_program(argv, timeout_s=ALERT_TIMEOUT_S, env=env, stdin=stdin)
        log.log(logging.INFO if rc == 0 else logging.ERROR, "%s: %s alert %s: exit %d%s", svc.key, a.kind,
                spec.prog, rc, f": {text.strip()[:200]}" if rc and text.strip() else "")
        self.journal.record("alert", service=svc.name, watch=svc.watch, kind=a.kind, prog=spec.prog, rc=rc)

    def _group_state(self, svc: ServiceConfig) -> str | None:
        """hbd's state here of the group holding the service's restart resource: None when no
        haresources group holds it, NO_ANSWER when hbd does not answer."""
        held = self.groups.get(svc.restart[0]) if svc.restart else None
        if not held:
            return None
        status = self._hbd({"cmd": "status", "journal": 0})
        if not status or not status.get("ok"):
            return NO_ANSWER
        return str({g["key"]: g["state"] for g in status["groups"]["groups"]}.get(held[0], "unknown"))

    async def _recover(self, st: ServiceState, action: str, state_at_start: str | None = None) -> None:
        """Recover only a service whose group hbd has started here: not while hbd starts or
        stops it, and not on the word of a check that began before the group was started (it
        saw a service hbd was still starting; a check with a timeout can end seconds after the
        start). `state_at_start`: the group's state when the failed check began. When hbd
        answers neither then nor now, recovery goes on (as without a group)."""
        svc = st.cfg
        group = self.group_of(svc)
        held = self.groups.get(svc.restart[0])
        now_state = await asyncio.to_thread(self._group_state, svc)
        detail = ""
        if held and now_state not in (None, NO_ANSWER, "started"):
            detail = f"group {held[0]} is {now_state} here, not started: nothing to recover"
        elif held and state_at_start not in (None, "started") and state_at_start != now_state:
            detail = f"group {held[0]} was {state_at_start} here when the check began: nothing to recover"
        if detail:
            log.info("%s: %s", svc.key, detail)
            self.journal.record("recovery", service=svc.name, watch=svc.watch, group=group, action=action,
                                result="skipped", detail=detail)
            return
        if action == "restart":
            ok, detail = await self._restart(svc)
            log.log(logging.INFO if ok else logging.ERROR, "%s: restart %d/%d via %s: %s", svc.key, st.restarts,
                    svc.restart_max, svc.restart[0], detail)
            self.journal.record("recovery", service=svc.name, watch=svc.watch, group=group, action="restart",
                                result="ok" if ok else "failed", detail=detail, attempt=st.restarts)
            return
        which = "all"
        if held:
            which = "local" if held[1].lower() == self.node.lower() else "foreign"
        # a recovery, not maintenance: journaled by hbd as an unplanned stop (availability)
        reply = await asyncio.to_thread(self._hbd, {"cmd": "standby", "which": which, "planned": False,
                                                    "why": f"service {svc.key} failing"})
        if reply is None:
            ok, detail = False, f"hbd does not answer on {self.hbd_run_dir}/hbd.sock"
        else:
            ok, detail = bool(reply.get("ok")), str(reply.get("error", f"hbctl standby {which}: accepted"))
        log.log(logging.WARNING if ok else logging.ERROR, "%s: still failing after %d restarts: standby %s: %s",
                svc.key, svc.restart_max, which, detail)
        self.journal.record("recovery", service=svc.name, watch=svc.watch, group=group, action="failover",
                            result="ok" if ok else "failed", detail=detail, which=which)

    async def _restart(self, svc: ServiceConfig) -> tuple[bool, str]:
        from hbd.resources import find_script, resource_dirs, script_env
        try:
            path = find_script(svc.restart[0], resource_dirs(self.ha_dir))
        except ConfigError as e:
            return False, str(e)
        env = script_env(os.environ, config_dir=self.ha_dir, node=self.node, run_dir=self.hbd_run_dir)
        for action in ("stop", "start"):
            rc, text, timed_out = await run_program([path, *svc.restart[1:], action], timeout_s=RECOVERY_TIMEOUT_S,
                                                    env=env)
            if rc != 0:
                what = "timed out" if timed_out else f"exit {rc}"
                return False, f"{svc.restart[0]} {action}: {what}: {text.strip()[:200]}"
        return True, f"{svc.restart[0]} stop + start: ok"


# --- process plumbing ---------------------------------------------------------------------

def config_report(cfg: MonConfig) -> str:
    lines = [f"mon.cf: {cfg.path}", f"mondir: {':'.join(monitor_dirs(cfg))}",
             f"alertdir: {':'.join(cfg.alertdirs)}"]
    for g, hosts in cfg.hostgroups.items():
        lines.append(f"hostgroup {g}: {' '.join(hosts)}")
    for s in cfg.services():
        extra = f" depend {s.depend.text} ({s.dep_behavior})" if s.depend else ""
        rec = f" restart {' '.join(s.restart)} x{s.restart_max} failover {'yes' if s.failover else 'no'}" \
            if s.restart else ""
        lines.append(f"service {s.key}: every {s.interval_s or 0:g}s timeout {s.effective_timeout_s:g}s "
                     f"monitor {' '.join(s.monitor)}{extra}{rec}; {len(s.periods)} period(s)")
    lines += [f"warning: {w}" for w in cfg.warnings]
    lines.append("configuration OK")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hbmon", description="Mon-compatible service monitor with recovery")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("--config-dir", default=os.environ.get("HBMON_CONFIG_DIR", DEFAULT_CONFIG_DIR))
    p.add_argument("--node", default=os.environ.get("HBMON_NODE") or os.uname().nodename)
    p.add_argument("--run-dir", default=os.environ.get("HBMON_RUN_DIR", DEFAULT_RUN_DIR))
    p.add_argument("--ha-dir", default=os.environ.get("HBD_CONFIG_DIR", "/etc/ha.d"),
                   help="heartbeat configuration (resource scripts for restart)")
    p.add_argument("--hbd-run-dir", default=os.environ.get("HBD_RUN_DIR", "/run/hbd"),
                   help="hbd's run dir (its control socket, for standby)")
    p.add_argument("--config-test", action="store_true", help="check mon.cf, print it, exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    node = args.node.lower()
    try:
        cfg = load_mon_config(os.path.abspath(args.config_dir))
    except ConfigError as e:
        print(f"hbmon: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.config_test:
        print(config_report(cfg))
        return 0
    run_dir = os.path.abspath(args.run_dir)
    pid_path = os.path.join(run_dir, PID_NAME)
    try:
        os.makedirs(run_dir, mode=0o755, exist_ok=True)
    except OSError as e:
        print(f"hbmon: {run_dir}: {e.strerror}", file=sys.stderr)
        return 1
    if not args.foreground:
        daemonize()
    with open(pid_path, "w") as f:
        f.write(f"{os.getpid()}\n")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.StreamHandler(sys.stderr) if args.foreground else logging.FileHandler(
        os.path.join(run_dir, "hbmon.log"))
    handler.setFormatter(logging.Formatter(f"%(asctime)s.%(msecs)03d hbmon[%(process)d]: {node}: "
                                           f"%(levelname)s: %(message)s", "%Y/%m/%d_%H:%M:%S"))
    log.addHandler(handler)
    for w in cfg.warnings:
        log.warning("%s", w)
    try:
        daemon = Daemon(cfg, node=node, run_dir=run_dir, ha_dir=os.path.abspath(args.ha_dir),
                        hbd_run_dir=os.path.abspath(args.hbd_run_dir))
        return asyncio.run(daemon.run())
    except (HaError, OSError) as e:
        log.critical("%s", e)
        return 1
    finally:
        try:
            os.unlink(pid_path)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
