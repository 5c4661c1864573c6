# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd: the heartbeat daemon - one asyncio loop driving membership, groups and scripts.

    hbd [-f] [--config-dir DIR] [--node NAME] [--run-dir DIR] [--metrics ADDR:PORT]
                                                                  run (daemonize without -f)
    hbd --config-test [--config-dir DIR] [--node NAME]            parse, check, print, exit

Environment: HBD_CONFIG_DIR (default /etc/ha.d), HBD_NODE (default `uname -n`),
HBD_RUN_DIR (default /run/hbd), HBD_METRICS (the Prometheus endpoint, hbd.metrics; none by
default).  The run dir holds ``hbd.pid``, the control
socket ``hbd.sock`` (hbd.control, JSON lines, used by hbctl), ``journal.jsonl``
(hbd.journal) and ``hb_generation``.  Exit codes: 0 ok, 1 runtime failure, 6 configuration error.

This module owns the daemon's lifecycle: start-up (configuration, pid file,
generation, non-idle resources released), the event loop and its pump,
signals, the control socket, logging, and shutdown.  What it wires lives in
one module each, every one a composed object with a narrow interface:

    hbd.media_link  MediaLink   the UDP media on the loop: receive, send, swap on reload
    hbd.node_events NodeEvents  what each membership event means (log, journal, metrics,
                                disk fencing, groups); the journal of the peer's holdings
    hbd.group_ops   GroupOps    the group manager's actions carried out: scripts in order,
                                STONITH, the journal of group changes
    hbd.announce                IPaddr/IPaddr2 in-process and gratuitous ARP
    hbd.reload      Reloader    SIGHUP / hbctl reload (this Daemon is its ReloadTarget)
    hbd.control                 the hbctl socket's commands

Layers (each arrow is a method call; the pump moves them until nothing is left)::

    MediaLink --datagrams--> protocol.membership --events--> NodeEvents --> groups.GroupManager
        ^                                                                          |
        +---------- datagrams <-- send_message <-- SendMessage <------ actions ----+
                                                                                   |
    resources.ResourceRunner <-- StartGroup/StopGroup --- GroupOps <---------------+
    stonith.fence            <-- FenceNode -------------/   (results back to the manager)

Signals become loop events: SIGTERM/SIGINT = clean shutdown (release groups,
then ``shutdone`` so the peer takes over at once); SIGUSR1 = dump membership
and groups to the log; SIGHUP = reopen the logfile/debugfile (rotation) and
reload ha.cf, haresources and authkeys (hbd.reload: what changed is applied,
unchanged groups keep running, an invalid configuration is logged and the
running one kept; ``hbctl reload`` does the same).  At start-up every resource whose status
says "running" is stopped first (heartbeat only warns, "Non-idle resources can
affect data integrity"; stopping is the safe reading of that warning).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Sequence

from hacommon import logfiles
from hacommon.daemonize import daemonize
from hacommon.errors import ConfigError, HaError
from hbd import stonith
from hbd.announce import ipaddr_handlers, reannounce
from hbd.authkeys import AuthKeys, load_authkeys
from hbd.config import HaConfig, load_ha_config
from hbd.control import ControlCommands, open_control_socket
from hbd.disk_fencing import DiskFencing
from hbd.group_ops import GroupOps
from hbd.groups import (
    Action,
    FenceNode,
    GroupChanged,
    GroupManager,
    Notice,
    Reannounce,
    SendMessage,
    ShutdownComplete,
    StartGroup,
    StopGroup,
)
from hbd.haresources import ResourceGroup, load_haresources
from hbd.journal import Journal
from hbd.media import Media
from hbd.media_link import MediaLink
from hbd.metrics import EventCounts, loop_snapshot, open_metrics
from hbd.node_events import NodeEvents
from hbd.protocol.membership import Membership
from hbd.reload import Reloader
from hbd.resources import ResourceRunner, resource_dirs, script_env

DEFAULT_CONFIG_DIR = "/etc/ha.d"
DEFAULT_RUN_DIR = "/run/hbd"
PID_NAME = "hbd.pid"
JOURNAL_NAME = "journal.jsonl"
GENERATION_NAME = "hb_generation"
EXIT_CONFIG = 6
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "crit": logging.CRITICAL}

log = logging.getLogger("hbd")


def load_all(config_dir: str, node: str) -> tuple[HaConfig, tuple[ResourceGroup, ...], AuthKeys]:
    """(HaConfig, groups, AuthKeys) or ConfigError."""
    cfg = load_ha_config(config_dir)
    if node.lower() not in [n.lower() for n in cfg.nodes]:
        raise ConfigError(f"{cfg.path}: this node {node!r} (--node, HBD_NODE or uname -n) is not a node line: "
                          f"nodes={' '.join(cfg.nodes)}")
    groups = load_haresources(config_dir, cfg.nodes)
    keys = load_authkeys(config_dir)
    return cfg, groups, keys


def config_report(cfg: HaConfig, groups: Sequence[ResourceGroup], keys: AuthKeys, node: str,
                  config_dir: str) -> str:
    dirs = resource_dirs(config_dir)
    runner = ResourceRunner(dirs=dirs, env={}, log=lambda level, text: None)
    lines = [f"ha.cf: {cfg.path}",
             f"node: {' '.join(cfg.nodes)} (this node: {node})",
             f"keepalive {cfg.keepalive_s:g}s deadtime {cfg.deadtime_s:g}s warntime {cfg.warntime_s:g}s "
             f"initdead {cfg.initdead_s:g}s udpport {cfg.udpport}",
             "media: " + ", ".join([f"bcast {d}" for d in cfg.bcast]
                                   + [f"mcast {m.dev} {m.group} {m.port} ttl={m.ttl} loop={m.loop}" for m in cfg.mcast]
                                   + [f"ucast {u.dev} {u.addr}" for u in cfg.ucast]),
             f"auto_failback {cfg.auto_failback}",
             f"gratuitous arp: {cfg.gratuitous_arp_count} request + {cfg.gratuitous_arp_count} reply, "
             f"{cfg.gratuitous_arp_interval_ms} ms apart",
             f"authkeys: auth {keys.active.index} ({keys.active.name}), accepted: "
             + " ".join(f"{i}:{m.name}" for i, m in sorted(keys.methods.items()))]
    devices = stonith.load_devices(cfg, node, config_dir)
    lines.append("stonith: " + ("; ".join(f"{d.type} {' '.join(d.params)}".rstrip() for d in devices)
                                if devices else "none (shared disks are not protected)"))
    lines.append("resource search path: " + " ".join(dirs))
    for g in groups:
        runner.check_group(g)
        res = " ".join(str(r) for r in g.resources)
        lines.append(f"group {g.name} (haresources:{g.line}) preferred node {g.node}: {res}")
    for w in (*cfg.warnings, *keys.warnings):
        lines.append(f"warning: {w}")
    lines.append("configuration OK")
    return "\n".join(lines)


def next_generation(run_dir: str) -> int:
    """Heartbeat's hb_generation: bigger on every start (file + clock, survives a tmpfs run dir)."""
    path = os.path.join(run_dir, GENERATION_NAME)
    try:
        with open(path) as f:
            stored = int(f.read().strip() or 0)
    except (OSError, ValueError):
        stored = 0
    gen = max(stored + 1, int(time.time()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{gen}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return gen


# --- the daemon ---------------------------------------------------------------------------

class Daemon:
    """One hbd: the loop, signals, the control socket, and the objects it wires (module docstring).

    Membership, GroupManager and the objects that serve them (NodeEvents, GroupOps) are born in
    run() (they need the generation and the clock); `m` and `g` raise before that."""

    def __init__(self, cfg: HaConfig, groups: Sequence[ResourceGroup], keys: AuthKeys, *, node: str,
                 config_dir: str, run_dir: str, foreground: bool = False) -> None:
        self.cfg, self.groups_cfg, self.keys = cfg, groups, keys
        self.foreground = foreground
        self.node = node.lower()
        self.config_dir, self.run_dir = config_dir, run_dir
        self.journal = Journal(os.path.join(run_dir, JOURNAL_NAME), self.node)
        dirs = resource_dirs(config_dir)
        self.runner = ResourceRunner(
            dirs=dirs, env=script_env(os.environ, config_dir=config_dir, node=self.node, run_dir=run_dir, cfg=cfg),
            log=self._log, journal=self.journal.record, inprocess=ipaddr_handlers(self._garp))
        self.devices = stonith.load_devices(cfg, self.node, config_dir)
        self.by_key = {g.name: g for g in groups}
        self.link = MediaLink(Media(cfg), receive=lambda data, addr, now: self.m.receive_datagram(data, addr, now),
                              received=self.kick)
        self._m: Membership | None = None
        self._g: GroupManager | None = None
        self._nodes: NodeEvents | None = None
        self._ops: GroupOps | None = None
        # asyncio primitives bind to the running loop on first use (Python >= 3.10)
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._shutting_down = False
        self._control: ControlCommands | None = None
        self.fencing: DiskFencing | None = None
        self.event_counts = EventCounts()                 # hbd.metrics: what scrapes count
        self.reloader = Reloader(self, load_all)          # SIGHUP, hbctl reload
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def m(self) -> Membership:
        if self._m is None:
            raise HaError("hbd: membership used before the daemon runs")
        return self._m

    @property
    def g(self) -> GroupManager:
        if self._g is None:
            raise HaError("hbd: groups used before the daemon runs")
        return self._g

    @property
    def media(self) -> Media:
        """The heartbeat media now served (hbd.media_link; a reload swaps them)."""
        return self.link.media

    @media.setter
    def media(self, media: Media) -> None:
        self.link.media = media

    def _garp(self) -> tuple[int, int]:
        return self.cfg.gratuitous_arp_count, self.cfg.gratuitous_arp_interval_ms

    def _log(self, level: str, text: str) -> None:
        log.log(LEVELS.get(level, logging.INFO), "%s", text)

    # --- start-up ---------------------------------------------------------------------------
    async def release_non_idle(self) -> None:
        for g in reversed(self.groups_cfg):
            running = [r for r, up in await self.runner.group_status(g) if up is not False]
            if running:
                self._log("crit", f"group {g.name!r}: non-idle at start-up ({' '.join(running)} running "
                                  f"or unknown): stopping it before joining the cluster")
                if not await self.runner.stop_group(g):
                    raise HaError(f"hbd: start-up: group {g.name!r} cannot be stopped: refusing to join")

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        generation = next_generation(self.run_dir)
        self.journal.record("daemon", state="start", generation=generation)
        self._log("info", f"hbd {self.node}: starting, generation {generation}, "
                          f"keepalive {self.cfg.keepalive_s:g}s deadtime {self.cfg.deadtime_s:g}s")
        await self.release_non_idle()
        now = time.monotonic()
        self._m = Membership(self.node, self.cfg.nodes, keepalive_s=self.cfg.keepalive_s,
                            warntime_s=self.cfg.warntime_s, deadtime_s=self.cfg.deadtime_s,
                            initdead_s=self.cfg.initdead_s, authkeys=self.keys, generation=generation,
                            now=now, udpport=self.cfg.udpport, wall_clock_offset=time.time() - now,
                            max_rexmit_delay_s=self.cfg.max_rexmit_delay_ms / 1000.0)
        self._g = GroupManager(self.node, [n.lower() for n in self.cfg.nodes], self.groups_cfg,
                              auto_failback=self.cfg.auto_failback, stonith_configured=bool(self.devices),
                              initdead_s=self.cfg.initdead_s, now=now)
        self.fencing = DiskFencing(node=self.node, node_status=self.m.node_status,
                                   send_message=self._send_fencing_message,
                                   journal=self.journal.record, env=self.runner.env)
        self._nodes = NodeEvents(membership=self.m, groups=self.g, journal=self.journal,
                                 event_counts=self.event_counts, fencing=self.fencing, log=self._log)
        self._ops = GroupOps(node=self.node, groups=self.g, runner=self.runner, journal=self.journal,
                             event_counts=self.event_counts, fencing=self.fencing, log=self._log, kick=self.kick,
                             group=lambda key: self.by_key[key], devices=lambda: self.devices,
                             standby_planned=lambda: self._control is None or self._control.standby_planned)
        self.link.attach(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_state)
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        self._control = ControlCommands(node=self.node, membership=self.m, groups=self.g, journal=self.journal,
                                        kick=self.kick, fencing=self.fencing,
                                        reload=lambda: self.reloader.reload("hbctl reload"))
        control = open_control_socket(self.run_dir, self._control, loop)
        worker = asyncio.create_task(self._ops.work())
        try:
            self._pump()
            while not self._done.is_set():
                timers = [t for t in (self.m.get_timer(), self.g.get_timer()) if t is not None]
                delay = max(0.0, min(timers) - time.monotonic()) if timers else 1.0
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))
                except TimeoutError:
                    pass
                now = time.monotonic()
                t = self.m.get_timer()
                if t is not None and now >= t:
                    self.m.handle_timer(now)
                t = self.g.get_timer()
                if t is not None and now >= t:
                    self.g.handle_timer(now)
                self._pump()
        finally:
            worker.cancel()
            control.close()
            self.link.close()
            self.journal.record("daemon", state="stopped")
            self.journal.close()
        self._log("info", f"hbd {self.node}: stopped")
        return 0 if self._clean_exit else 1

    # --- the pump: move datagrams, events and actions until nothing is left -------------------
    def _pump(self) -> None:
        nodes, ops = self._nodes, self._ops
        if nodes is None or ops is None:
            raise HaError("hbd: pumped before the daemon runs")
        for _ in range(1000):
            moved = False
            now = time.monotonic()
            for d in self.m.datagrams_to_send(now):
                self.link.send(d)
                moved = True
            while (e := self.m.next_event()) is not None:
                moved = True
                nodes.handle(e, now)
            while (a := self.g.next_action()) is not None:
                moved = True
                self._on_group_action(a, ops)
            if not moved:
                if self.reloader.pending is not None:       # a reload's haresources, once stable
                    self.reloader.maybe_apply_groups()
                    if self.reloader.pending is None:
                        continue
                nodes.journal_peer_holdings()
                return

    def _send_fencing_message(self, msg_type: str, fields: dict[str, str]) -> None:
        self.m.send_message(msg_type, fields)
        self.kick()

    def kick(self) -> None:
        """Something changed outside the loop's own callbacks (a request, a result): act on it now."""
        self._pump()
        self._wake.set()

    def _on_group_action(self, a: Action, ops: GroupOps) -> None:
        if isinstance(a, SendMessage):
            if a.msg_type == "shutdone":
                self.m.send_shutdone()
            else:
                self.m.send_message(a.msg_type, a.fields)
        elif isinstance(a, (StartGroup, StopGroup)):
            ops.queue(a)
        elif isinstance(a, FenceNode):
            ops.fence(a.node)
        elif isinstance(a, GroupChanged):
            ops.record_change(a)
        elif isinstance(a, Notice):
            self._log(a.level, a.text)
        elif isinstance(a, Reannounce):
            reannounce(self.by_key[a.key], self._garp)
        elif isinstance(a, ShutdownComplete):
            self._clean_exit = a.clean
            now = time.monotonic()
            for d in self.m.datagrams_to_send(now):
                self.link.send(d)
                self.link.send(d)       # same bytes twice: a lost shutdone costs a deadtime
            self._done.set()

    _clean_exit = True

    # --- signals ------------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        if self._shutting_down:
            self._log("info", "shutdown already in progress")
            return
        self._shutting_down = True
        self._log("info", f"hbd {self.node}: shutdown requested: releasing resources")
        self.journal.record("daemon", state="stop")
        self.g.shutdown(time.monotonic())
        self.kick()

    def metrics_snapshot(self) -> dict | None:
        """For a scrape (hbd.metrics), from any thread: membership, groups and counts, taken
        on the loop; None before the loop runs or when it does not answer."""
        if self._loop is None or self._m is None or self._g is None:
            return None
        return loop_snapshot(self._loop, lambda: {"membership": self.m.snapshot(), "groups": self.g.snapshot(),
                                                  "events": self.event_counts.snapshot()})

    def dump_state(self) -> None:
        self._log("info", "state dump: membership " + json.dumps(self.m.snapshot(), default=str))
        self._log("info", "state dump: groups " + json.dumps(self.g.snapshot(), default=str))

    def on_sighup(self) -> None:
        """Reopen the log files (rotation), then reload the configuration (hbd.reload)."""
        reopened = logfiles.reopen_all(log)
        if reopened:
            self._log("info", f"SIGHUP: reopened {', '.join(reopened)}")
        if not self._shutting_down:
            task = asyncio.get_running_loop().create_task(self.reloader.reload("SIGHUP"))
            task.add_done_callback(_log_reload_failure)

    # --- what a reload changes (hbd.reload.ReloadTarget) ---------------------------------------
    def swap_media(self, media: Media) -> None:
        """Serve the new (opened) media, then close the old ones."""
        self.link.swap(media)

    def set_up_logging(self, cfg: HaConfig) -> None:
        setup_logging(cfg, self.node, self.foreground)

    def script_env(self, cfg: HaConfig) -> dict[str, str]:
        return script_env(os.environ, config_dir=self.config_dir, node=self.node, run_dir=self.run_dir, cfg=cfg)


def _log_reload_failure(task: asyncio.Task) -> None:
    """A reload is the loop's task: a bug in it must reach the log, not vanish with the task."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("reload (SIGHUP): failed: %r", task.exception())


# --- process plumbing ---------------------------------------------------------------------

def setup_logging(cfg: HaConfig, node: str, foreground: bool) -> None:
    for old in list(log.handlers):      # a reload sets logging up again
        log.removeHandler(old)
        old.close()                     # files and the syslog socket; never stderr itself
    log.setLevel(logging.DEBUG)
    log.propagate = False
    fmt_file = logging.Formatter(f"%(asctime)s.%(msecs)03d hbd[%(process)d]: {node}: %(levelname)s: %(message)s",
                                 "%Y/%m/%d_%H:%M:%S")
    logging.raiseExceptions = False
    if cfg.logfacility and cfg.logfacility != "none" and not os.path.exists("/dev/log"):
        print(f"hbd: logfacility {cfg.logfacility}: no syslog socket /dev/log: logging to files/stderr only",
              file=sys.stderr)
    elif cfg.logfacility and cfg.logfacility != "none":
        try:
            syslog = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.facility_names.get(
                    cfg.logfacility, logging.handlers.SysLogHandler.LOG_DAEMON))
            syslog.setFormatter(logging.Formatter(f"hbd[%(process)d]: {node}: %(levelname)s: %(message)s"))
            syslog.setLevel(logging.INFO)
            log.addHandler(syslog)
        except OSError as e:
            print(f"hbd: logfacility {cfg.logfacility}: syslog unavailable: {e.strerror}", file=sys.stderr)
    for path, level in ((cfg.logfile, logging.INFO), (cfg.debugfile, logging.DEBUG)):
        if path:
            h = logfiles.ReopeningFileHandler(path)     # reopened on SIGHUP and after rotation
            h.setFormatter(fmt_file)
            h.setLevel(level)
            log.addHandler(h)
    if foreground:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(fmt_file)
        stderr.setLevel(logging.INFO)
        log.addHandler(stderr)


def check_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"hbd" not in f.read():
                return
    except OSError:
        return
    raise HaError(f"already running: pid {pid} ({path})")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hbd", description="Heartbeat-compatible cluster daemon")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr too")
    p.add_argument("--config-dir", default=os.environ.get("HBD_CONFIG_DIR", DEFAULT_CONFIG_DIR))
    p.add_argument("--node", default=os.environ.get("HBD_NODE") or os.uname().nodename)
    p.add_argument("--run-dir", default=os.environ.get("HBD_RUN_DIR", DEFAULT_RUN_DIR))
    p.add_argument("--config-test", action="store_true", help="check the configuration, print it, exit")
    p.add_argument("--metrics", metavar="ADDR:PORT", default=os.environ.get("HBD_METRICS"),
                   help="serve Prometheus metrics there (default: $HBD_METRICS, else none)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    node = args.node.lower()
    try:
        cfg, groups, keys = load_all(args.config_dir, node)
        if args.config_test:
            print(config_report(cfg, groups, keys, node, args.config_dir))
            return 0
        stonith.load_devices(cfg, node, args.config_dir)
    except ConfigError as e:
        print(f"hbd: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir = os.path.abspath(args.run_dir)
    config_dir = os.path.abspath(args.config_dir)
    pid_path = os.path.join(run_dir, PID_NAME)
    daemon: Daemon | None = None
    metrics = None
    try:
        os.makedirs(run_dir, mode=0o755, exist_ok=True)
        check_pidfile(pid_path)
        if args.metrics:    # bound before we detach, so a taken port is an error on stderr
            try:
                metrics = open_metrics(args.metrics, lambda: daemon.metrics_snapshot() if daemon else None)
            except OSError as e:    # its text already starts "hbd: metrics: ADDR: ..."
                print(e.strerror, file=sys.stderr)
                return 1
    except (OSError, HaError) as e:
        print(f"hbd: {e}", file=sys.stderr)
        return 1
    if not args.foreground:
        daemonize()
    with open(pid_path, "w") as f:
        f.write(f"{os.getpid()}\n")
    setup_logging(cfg, node, args.foreground)
    try:
        daemon = Daemon(cfg, groups, keys, node=node, config_dir=config_dir, run_dir=run_dir,
                        foreground=args.foreground)
        daemon.media.open()     # pyroute2's sync API must run outside the asyncio loop
        if metrics is not None:
            metrics.start()
            log.info("metrics: serving %s", metrics.url())
        return asyncio.run(daemon.run())
    except ConfigError as e:
        log.critical("configuration error: %s", e)
        return EXIT_CONFIG
    except (HaError, OSError) as e:
        log.critical("%s", e)
        return 1
    finally:
        if metrics is not None:
            metrics.close()
        try:
            os.unlink(pid_path)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
