# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad: the per-node replication daemon.

    replicad [-f] [--config F] [--node N] [--run-dir D] [--exit-when-idle]
             [--startup RES|all] [--log-file PATH|none] [--syslog-facility NAME|none]

It listens on RUN_DIR/replicad.sock for replicactl's commands and brings resources up and down
on request. Each resource's data path runs in C (replica.mirror); this process only decides.
SIGTERM/SIGINT take every resource down cleanly and exit.

Configuration, as drbdadm and drbdsetup share it: replicactl parses the file it was given and
names it (and its node) in every command; the daemon reads that file again for the command, so
a corrected or edited --config is what a resource comes up with, never the file the daemon was
started with. A resource in use keeps the configuration it came up with until `down` (DRBD's
kernel state until `adjust`), but for what `net-options`/`disk-options`/`adjust` change (the
`show` request reports it) and a new link: `connect` takes the file's net section and addresses,
as drbdsetup connect is given them. The file given at start is checked once and used for commands
that name none (a replicad run by hand, an older replicactl).

Started by replicactl (--exit-when-idle), the daemon lives only while a resource is in use: a
failed `up`/`attach` or the last `down`/`detach` ends it, and it stops listening before it
answers, so the next replicactl starts a fresh daemon instead of reaching a dying one.

Run as a service (packaging/systemd/replicad.service: `replicad -f --startup all`, Type=notify),
the daemon brings the resources up itself, with `replicactl startup` semantics (up, wait-connect
within the startup{} timeouts, primary where become-primary-on says so: DRBD's drbd.service), and
tells systemd READY=1 once every named resource is up. A resource that does not come up fails the
unit (the daemon exits 1); a wait-connect that timed out does not (DRBD's boot goes on degraded
too), it is said in the unit's STATUS=.

Logging: -f writes to stderr (journald-friendly under systemd: the journal's priority prefix, no
timestamp of our own); a daemonized replicad writes RUN_DIR/replicad.log and syslog (daemon).
--log-file and --syslog-facility (or REPLICAD_LOG_FILE, REPLICAD_SYSLOG_FACILITY) choose either
way, `none` turns one off. The log file is reopened on SIGHUP and whenever logrotate moved it.
"""
import argparse
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hacommon import logfiles, sdnotify
from hacommon.daemonize import daemonize
from hacommon.errors import HaError
from replica import locations, netif
from replica.config import Config, HostSection, load_config
from replica.control import ControlError, ControlServer, error_reply
from replica.errors import ConfigError, ReplicaError
from replica.events import END_OF_INITIAL, Event, EventBus, EventStream
from replica.resource import ResourceRuntime

log = logging.getLogger("replicad")
Request = dict[str, Any]
Reply = dict[str, Any]

IDLE_EXIT_S = 30.0      # --exit-when-idle: the longest life without a resource in use
# commands after which a daemon started by replicactl looks whether anything is still in use
_MAY_LEAVE_IDLE = frozenset({"up", "attach", "connect", "down", "detach", "disconnect"})


def check_address_is_local(resource: str, host: HostSection, config: Config) -> None:
    """drbdadm's "IP ... not found on this host", before `up`/`connect` binds it (bind() would
    fail with EADDRNOTAVAIL, or an initiator would connect from another address and be refused
    by its peer without a word here)."""
    if host.address is None or "disable-ip-verification" in config.global_options \
            or netif.is_local_address(host.address[0]):
        return
    raise ConfigError(f"{host.where}: resource '{resource}': on '{host.name}': address "
                      f"{host.address_text}: IP {host.address[0]} not found on this host (no "
                      f"interface of this network namespace has it)")


class Daemon:
    def __init__(self, where: locations.Locations, exit_when_idle: bool = False):
        self.where = where
        self.exit_when_idle = exit_when_idle
        load_config(where.config)  # a broken file stops us here, before we daemonize
        self.resources: dict[str, ResourceRuntime] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.control: ControlServer | None = None
        self.exit_status = 0
        self._startup_proc: subprocess.Popen[bytes] | None = None
        self._last_command = time.monotonic()
        self.events = EventBus()     # every runtime publishes here; `events` subscribes
        self.commands: dict[str, Callable[[Request], Reply]] = {
            "ping": self.cmd_ping,
            "up": self.cmd_up,
            "down": self.cmd_down,
            "status": self.cmd_status,
            "shutdown": self.cmd_shutdown,
            "dump-md": self.cmd_dump_md,
            "peer-dead": self.cmd_peer_dead,
            "show": self.cmd_show,
            "resize": self.cmd_resize,
            "net-options": self.cmd_options,
            "disk-options": self.cmd_options,
            "handlers": self.cmd_options,
            **{verb: self.cmd_verb for verb in VERBS},
        }

    # Commands from replicactl: each returns a reply dict or raises ReplicaError.
    def handle(self, req: Request) -> Reply | EventStream:
        if req["cmd"] == "events":
            try:
                return self.cmd_events(req)
            except (ReplicaError, OSError) as exc:
                return error_reply(exc)
        handler = self.commands.get(req["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r} (known: "
                    f"{', '.join(self.commands)}, events)"}
        with self.lock:
            try:
                reply = {"ok": True, **handler(req)}
            except (ReplicaError, OSError) as exc:
                log.warning("%s: %s", req["cmd"], exc)
                reply = error_reply(exc)
            self._last_command = time.monotonic()
            if self.exit_when_idle and req["cmd"] in _MAY_LEAVE_IDLE and not self._any_in_use():
                self._exit_idle(f"no resource is in use after {req['cmd']}")
        return reply

    def _exit_idle(self, why: str) -> None:
        """Stop listening now (the reply still goes out on its open connection), then exit."""
        if self.stop_event.is_set():
            return
        log.info("%s: exiting", why)
        if self.control is not None:
            self.control.close()
        self.stop_event.set()

    def _config(self, req: dict) -> Config:
        return load_config(req.get("config") or self.where.config)

    def _runtime(self, req: dict, name: str | None = None,
                 config: Config | None = None) -> ResourceRuntime:
        """The resource's runtime: as it runs when in use, else built from the command's config
        (`config` when the caller has already read it)."""
        name = name or req["resource"]
        node = req.get("node") or self.where.node
        rt = self.resources.get(name)
        if rt is not None and _in_use(rt):
            if rt.host.name != node:
                raise ReplicaError(f"{name}: this replicad ({self.where.run_dir}) runs it as node "
                                   f"'{rt.host.name}', not '{node}'")
            return rt
        resource = (config or self._config(req)).resource(name)
        rt = ResourceRuntime(resource, node, self.where.default_export_path(name),
                             run_dir=self.where.run_dir, events=self.events)
        rt.sync.lookup = self.resources.get            # resync-after names another resource
        self.resources[name] = rt
        return rt

    def _any_in_use(self) -> bool:
        return any(_in_use(rt) for rt in self.resources.values())

    def cmd_ping(self, req: Request) -> Reply:
        return {"pid": os.getpid()}

    def cmd_up(self, req: Request) -> Reply:
        config = self._config(req)
        rt = self._runtime(req, config=config)
        for warning in config.warnings:
            log.warning("%s", warning)
        with rt.lock:
            if not rt.resource.standalone and not rt.has_link:
                check_address_is_local(rt.name, rt.host, config)
            rt.up(config=config.resource(rt.name))
            return {"status": rt.status()}

    def cmd_down(self, req: Request) -> Reply:
        rt = self._runtime(req)
        with rt.lock:
            rt.down(force=bool(req.get("force")))
        return {}

    def cmd_verb(self, req: Request) -> Reply:
        run = VERBS[req["cmd"]]
        rt = self._runtime(req)
        if rt.resource.standalone and req["cmd"] not in ("primary", "secondary"):
            raise ReplicaError(f"{rt.name}: {req['cmd']}: a standalone resource (one 'on' "
                               "section) has no metadata and no peer")
        with rt.lock:
            if req["cmd"] == "connect" and not rt.has_link:
                config = self._config(req).resource(rt.name)
                check_address_is_local(rt.name, config.host(rt.host.name), self._config(req))
                rt.connect(discard_my_data=bool(req.get("discard_my_data")), config=config)
            else:
                run(rt, req)
            return {"status": rt.status()}

    def cmd_resize(self, req: Request) -> Reply:
        """drbdadm resize: agreed with the peer (replica.resize); the daemon's lock is not held
        while the peer answers, the resource's is taken by ResourceRuntime.resize."""
        rt = self._runtime(req)
        size = req.get("size")
        rt.resize(None if size is None else int(size), bool(req.get("assume_clean")),
                  timeout_s=float(req.get("wait_s") or 55.0))
        with rt.lock:
            return {"status": rt.status()}

    def cmd_show(self, req: Request) -> Reply:
        """The running resource's settings (adjust, `dump --running`); up: false when the
        resource is not in use here."""
        name = req["resource"]
        rt = self.resources.get(name)
        if rt is None or not _in_use(rt):
            return {"up": False}
        with rt.lock:
            return rt.show()

    def cmd_options(self, req: Request) -> Reply:
        """net-options / disk-options / handlers: `values` {keyword: text} parsed again here
        with the config's parsers (`set_defaults`: the rest of the section to defaults)."""
        from replica.adjust import apply_disk, apply_handlers, apply_net
        rt = self.resources.get(req["resource"])
        if rt is None or not _in_use(rt):
            raise ReplicaError(f"{req['resource']}: No such resource (not up here)")
        values = {str(k): str(v) for k, v in (req.get("values") or {}).items()}
        set_defaults = bool(req.get("set_defaults"))
        with rt.lock:
            try:
                if req["cmd"] == "net-options":
                    changes = rt.set_options(net=apply_net(rt.resource.net, values, set_defaults),
                                             why="net-options")
                elif req["cmd"] == "disk-options":
                    changes = rt.set_options(disk=apply_disk(rt.resource.disk, values,
                                                             set_defaults), why="disk-options")
                else:
                    changes = rt.set_options(handlers=apply_handlers(
                        rt.resource.handlers, values, set_defaults), why="handlers")
            except ConfigError as exc:
                raise ConfigError(f"{rt.name}: {exc}") from None
            return {"changes": changes, "status": rt.status()}

    def cmd_peer_dead(self, req: Request) -> Reply:
        """The cluster manager (hbd) says node `peer` is dead (`fenced`: STONITH reset it):
        every resource in use whose peer it is (or the one named) drops its link at once, and
        counts the peer's disk as Outdated (no second failure detector to wait out)."""
        name, peer = req.get("resource") or "all", str(req.get("peer") or "")
        done = []
        for rt in list(self.resources.values()):
            if not _in_use(rt) or (name != "all" and rt.name != name) or rt.peer_host is None:
                continue
            if peer and rt.peer_host.name != peer:
                continue
            with rt.lock:
                rt.peer_dead(fenced=bool(req.get("fenced")))
                done.append(rt.name)
        if name != "all" and not done:
            raise ReplicaError(f"{name}: not in use here" + (f" with peer {peer}" if peer else ""))
        return {"resources": done}

    def cmd_dump_md(self, req: Request) -> Reply:
        rt = self._runtime(req)
        with rt.lock:
            if not rt.disk.has_md:
                return {"attached": False}
            return {"attached": True, **rt.dump_md()}

    def cmd_status(self, req: Request) -> Reply:
        config = None
        if req.get("resource"):
            names = [req["resource"]]
        else:
            config = self._config(req)
            in_use = [n for n, rt in self.resources.items() if _in_use(rt)]
            names = [*config.resources, *in_use]
        out = []
        for name in dict.fromkeys(names):
            rt = self._runtime(req, name, config)
            with rt.lock:
                out.append(rt.status())
        return {"resources": out}

    def cmd_events(self, req: Request) -> EventStream:
        """`replicactl events [RES]`: subscribe first, then the state of each resource in use
        as `exists` lines (a change racing the snapshot may show twice, never not at all)."""
        name = req.get("resource")
        if name and name != "all":
            self._config(req).resource(name)        # "no resource ..." with the known names
        else:
            name = None
        sub = self.events.subscribe(name, statistics=bool(req.get("statistics")))
        initial: list[Event] = []
        try:
            with self.lock:
                runtimes = [rt for n, rt in self.resources.items()
                            if _in_use(rt) and (name is None or n == name)]
            for rt in runtimes:
                with rt.lock:
                    initial += rt.events.snapshot()
        except BaseException:
            sub.close()
            raise
        now = self.events.clock()
        initial = [Event(ev.action, ev.obj, ev.keys, ev.stats, time=now) for ev in initial]
        initial.append(Event("exists", END_OF_INITIAL, time=now))
        return EventStream(sub, initial, once=bool(req.get("now")),
                           statistics=bool(req.get("statistics")),
                           timestamps=bool(req.get("timestamps")))

    def cmd_shutdown(self, req: Request) -> Reply:
        self.stop_event.set()
        return {}

    def startup(self, name: str) -> None:
        """Thread (--startup): `replicactl startup NAME` against this daemon, then READY=1 for
        systemd once every resource it names is in use here; else the daemon stops, status 1."""
        try:
            config = load_config(self.where.config)
            names = list(config.resources) if name == "all" else [config.resource(name).name]
        except ReplicaError as exc:
            self._startup_failed(f"startup {name}: {exc}")
            return
        cmd = [sys.executable, "-m", "replica.cli", "--config", self.where.config, "--node",
               self.where.node, "--run-dir", self.where.run_dir, "startup", name]
        log.info("startup %s: %s", name, " ".join(names) or "no resource configured")
        with self.lock:
            if self.stop_event.is_set():
                return
            try:    # its stdout/stderr are ours: under systemd, the journal
                proc = self._startup_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            except OSError as exc:
                self._startup_failed(f"startup {name}: {' '.join(cmd)}: {exc}")
                return
        rc = proc.wait()
        with self.lock:
            self._startup_proc = None
            if self.stop_event.is_set():
                return
            down = [n for n in names if n not in self.resources or not _in_use(self.resources[n])]
        if down:
            self._startup_failed(f"startup {name}: {', '.join(down)} not up (replicactl startup "
                                 f"exited with status {rc})")
            return
        status = f"{len(names)} resource(s) up: {' '.join(names)}" if names else "no resource configured"
        if rc != 0:
            status += f" (replicactl startup exited with status {rc}: see the log)"
        log.info("startup %s: %s: ready", name, status)
        _notify("READY=1", f"STATUS={status}")

    def _startup_failed(self, why: str) -> None:
        log.error("%s: stopping", why)
        _notify(f"STATUS={why}")
        self.exit_status = 1
        self.stop_event.set()

    def run(self, startup: str | None = None) -> int:
        os.makedirs(self.where.run_dir, mode=0o755, exist_ok=True)
        self.control = ControlServer(self.where.control_socket, self.handle, name="replicad")
        with open(self.where.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
        log.info("started: node %s, config %s, run dir %s", self.where.node, self.where.config,
                 self.where.run_dir)
        if startup is not None:
            threading.Thread(target=self.startup, args=(startup,), name="startup", daemon=True).start()
        else:
            _notify("READY=1", f"STATUS=listening on {self.where.control_socket}")
        try:
            # no periodic wake-up: sleep until stopped, or until the idle-exit deadline is due
            while not self.stop_event.wait(self._idle_wait_s()):
                self._exit_if_idle_too_long()
        finally:
            _notify("STOPPING=1")
            self.control.close()
            with self.lock:
                if self._startup_proc is not None:      # stopped while startup still waits
                    self._startup_proc.terminate()
                for rt in self.resources.values():
                    try:
                        with rt.lock:
                            rt.down(force=True)
                    except (ReplicaError, OSError) as exc:
                        log.error("%s: down at exit: %s", rt.name, exc)
            if not self.events.end_all(timeout_s=2.0):     # the last `destroy` lines out
                log.warning("events: a reader did not take its last lines within 2 s")
            _remove_pid_file(self.where.pid_file)
            log.info("stopped")
        return self.exit_status

    def _idle_wait_s(self) -> float | None:
        """Seconds until the idle-exit deadline (None: no deadline, wait for stop_event)."""
        if not self.exit_when_idle:
            return None
        return max(0.05, self._last_command + IDLE_EXIT_S - time.monotonic())

    def _exit_if_idle_too_long(self) -> None:
        """A replicactl killed between starting us and its `up` must not leave us behind.
        While a command runs or a resource is in use the deadline moves on by IDLE_EXIT_S (the
        command that leaves nothing in use ends the daemon itself, in handle())."""
        if not self.lock.acquire(blocking=False):
            self._last_command = time.monotonic()       # a command is running
            return
        try:
            now = time.monotonic()
            idle_s = now - self._last_command
            if self._any_in_use():
                self._last_command = now
            elif idle_s >= IDLE_EXIT_S:
                self._exit_idle(f"no resource in use for {idle_s:.0f} s")
        finally:
            self.lock.release()


# drbdadm verbs that are one ResourceRuntime request each; boolean options come as request keys
VERBS: dict[str, Callable[[ResourceRuntime, Request], None]] = {
    "attach": lambda rt, req: rt.attach(),
    "detach": lambda rt, req: rt.detach(),
    "connect": lambda rt, req: rt.connect(discard_my_data=bool(req.get("discard_my_data"))),
    "disconnect": lambda rt, req: rt.disconnect(),
    "primary": lambda rt, req: rt.primary(force=bool(req.get("force"))),
    "secondary": lambda rt, req: rt.secondary(),
    "invalidate": lambda rt, req: rt.invalidate(),
    "invalidate-remote": lambda rt, req: rt.invalidate_remote(),
    "verify": lambda rt, req: rt.sync.verify.start(int(req.get("start") or 0),
                                                   None if req.get("stop") is None
                                                   else int(req["stop"])),
    "new-current-uuid": lambda rt, req: rt.new_current_uuid(
        clear_bitmap=bool(req.get("clear_bitmap"))),
    "outdate": lambda rt, req: rt.outdate(),
    "resume-io": lambda rt, req: rt.resume_io(),
    "pause-sync": lambda rt, req: rt.sync.pause(),
    "resume-sync": lambda rt, req: rt.sync.resume(),
}


def _in_use(rt: ResourceRuntime) -> bool:
    return rt.in_use


def _notify(*assignments: str) -> None:
    """Tell systemd (a no-op outside it); a notify socket we cannot reach is logged, not fatal."""
    try:
        sdnotify.notify(*assignments)
    except OSError as exc:
        log.error("sd_notify %s: %s", " ".join(assignments), exc)


def _remove_pid_file(path: str) -> None:
    """Remove our pid file, not the one of a daemon started after we stopped listening."""
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except (FileNotFoundError, ValueError):
        pass


def setup_logging(where: locations.Locations, foreground: bool, log_file: str | None = None,
                  syslog_facility: str | None = None) -> None:
    """Foreground: stderr (the journal's priority prefix when stderr is the journal). Daemon:
    RUN_DIR/replicad.log and syslog (daemon) when /dev/log exists. `log_file` and
    `syslog_facility` replace those defaults; "none" turns one off."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    plain = logging.Formatter("replicad[%(process)d]: %(message)s")
    stamped = logging.Formatter("%(asctime)s replicad[%(process)d]: %(message)s")
    handlers: list[logging.Handler] = []
    if foreground:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logfiles.JournalFormatter("%(message)s") if logfiles.journal_stderr()
                            else plain)
        handlers.append(stderr)
    if log_file is None and not foreground:
        log_file = where.log_file
    if log_file and log_file != "none":
        file_handler = logfiles.ReopeningFileHandler(log_file)
        file_handler.setFormatter(stamped)
        handlers.append(file_handler)
    if syslog_facility is None and not foreground:
        syslog_facility = "daemon"
    if syslog_facility and syslog_facility != "none" and os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(address="/dev/log",
                                                facility=logfiles.syslog_facility(syslog_facility))
        syslog.setFormatter(plain)
        handlers.append(syslog)
    for handler in handlers:
        root.addHandler(handler)

    def log_thread_crash(args) -> None:
        # a daemon has no stderr: a bug in a background thread must still reach the log
        log.error("thread %s died: %s: %s", args.thread.name if args.thread else "?",
                  args.exc_type.__name__, args.exc_value,
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
    threading.excepthook = log_thread_crash


def _reopen_logs() -> None:
    log.info("SIGHUP: reopened %s", ", ".join(logfiles.reopen_all()) or "no log file (none configured)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="replicad", description="replica-ha replication daemon")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit once the last resource goes down (replicactl starts it so)")
    parser.add_argument("--metrics", metavar="ADDR:PORT", default=os.environ.get("REPLICA_METRICS"),
                        help="serve Prometheus metrics there (default: $REPLICA_METRICS, else none)")
    parser.add_argument("--startup", metavar="RES|all",
                        help="bring RES (or all) up as `replicactl startup` does; with systemd "
                        "(Type=notify) READY=1 once every one is up")
    parser.add_argument("--log-file", metavar="PATH|none", default=os.environ.get("REPLICAD_LOG_FILE"),
                        help="log to this file, reopened on SIGHUP (default: RUN_DIR/replicad.log "
                        "when daemonized, none with -f)")
    parser.add_argument("--syslog-facility", metavar="NAME|none",
                        default=os.environ.get("REPLICAD_SYSLOG_FACILITY"),
                        help="syslog facility (default: daemon when daemonized, none with -f)")
    locations.add_arguments(parser)
    args = parser.parse_args(argv)
    where = locations.resolve(args.config, args.node, args.run_dir)
    metrics = None
    sdnotify.take_notify_socket()       # ours alone: replicactl and handlers must not use it
    try:
        if args.syslog_facility and args.syslog_facility != "none":
            logfiles.syslog_facility(args.syslog_facility)
        if args.log_file and args.log_file != "none":
            args.log_file = os.path.abspath(args.log_file)      # daemonize() changes to /
        daemon = Daemon(where, exit_when_idle=args.exit_when_idle)
        if args.metrics:
            from replica.metrics import open_metrics
            metrics = open_metrics(args.metrics, daemon.resources)
    except (ReplicaError, HaError, OSError, ValueError) as exc:
        print(f"replicad: {exc}", file=sys.stderr)
        return 1
    os.makedirs(where.run_dir, mode=0o755, exist_ok=True)
    if not args.foreground:
        daemonize()
    setup_logging(where, args.foreground, args.log_file, args.syslog_facility)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop_event.set())
    # SIGHUP (logrotate's postrotate, systemctl reload): reopen the log file, in a thread of its
    # own so that a handler interrupted in the middle of a record is never reentered
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=_reopen_logs, name="sighup").start())
    try:
        if metrics is not None:
            metrics.start()
            log.info("metrics: serving %s", metrics.url())
        return daemon.run(args.startup)
    except ControlError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if metrics is not None:
            metrics.close()


if __name__ == "__main__":
    sys.exit(main())
