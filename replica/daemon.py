# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad: the per-node replication daemon.

    replicad [-f] [--config F] [--node N] [--run-dir D] [--exit-when-idle]

It reads replica.conf, listens on RUN_DIR/replicad.sock for replicactl's commands, and brings
resources up and down on request. Each resource's data path runs in C (replica.mirror); this
process only decides. SIGTERM/SIGINT take every resource down cleanly and exit.
"""
import argparse
import logging
import logging.handlers
import os
import signal
import sys
import threading

from replica import locations
from replica.config import load_config
from replica.control import ControlError, ControlServer
from replica.daemonize import daemonize
from replica.errors import ReplicaError
from replica.resource import ResourceRuntime

log = logging.getLogger("replicad")


class Daemon:
    def __init__(self, where: locations.Locations, exit_when_idle: bool = False):
        self.where = where
        self.exit_when_idle = exit_when_idle
        self.config = load_config(where.config)
        self.resources: dict[str, ResourceRuntime] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.commands = {
            "ping": self.cmd_ping,
            "up": self.cmd_up,
            "down": self.cmd_down,
            "status": self.cmd_status,
            "shutdown": self.cmd_shutdown,
            "dump-md": self.cmd_dump_md,
        }
        # drbdadm verbs that map to one ResourceRuntime method each: (method, request keys)
        self.verbs = {
            "attach": ("attach", ()),
            "detach": ("detach", ()),
            "connect": ("connect", ("discard_my_data",)),
            "disconnect": ("disconnect", ()),
            "primary": ("primary", ("force",)),
            "secondary": ("secondary", ()),
            "invalidate": ("invalidate", ()),
            "invalidate-remote": ("invalidate_remote", ()),
            "new-current-uuid": ("new_current_uuid", ("clear_bitmap",)),
        }
        for verb in self.verbs:
            self.commands[verb] = self.cmd_verb

    # Commands from replicactl: each returns a reply dict or raises ReplicaError.
    def handle(self, req: dict) -> dict:
        handler = self.commands.get(req["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r} (known: {', '.join(self.commands)})"}
        try:
            with self.lock:
                reply = handler(req)
        except (ReplicaError, OSError) as exc:
            log.warning("%s: %s", req["cmd"], exc)
            return {"ok": False, "error": str(exc)}
        if self.exit_when_idle and req["cmd"] == "down" and not self._any_up():
            log.info("no resource is up any more: exiting")
            self.stop_event.set()
        return {"ok": True, **reply}

    def _runtime(self, name: str) -> ResourceRuntime:
        if name not in self.resources:
            resource = self.config.resource(name)
            self.resources[name] = ResourceRuntime(resource, self.where.node,
                                                   self.where.default_export_path(name))
        return self.resources[name]

    def _any_up(self) -> bool:
        return any(rt.is_up for rt in self.resources.values())

    def cmd_ping(self, req):
        return {"pid": os.getpid()}

    def cmd_up(self, req):
        rt = self._runtime(req["resource"])
        with rt.lock:
            rt.up()
            return {"status": rt.status()}

    def cmd_down(self, req):
        rt = self._runtime(req["resource"])
        with rt.lock:
            rt.down()
        return {}

    def cmd_verb(self, req):
        method, keys = self.verbs[req["cmd"]]
        rt = self._runtime(req["resource"])
        if rt.resource.standalone and req["cmd"] not in ("primary", "secondary"):
            raise ReplicaError(f"{rt.name}: {req['cmd']}: a standalone resource (one 'on' "
                               "section) has no metadata and no peer")
        with rt.lock:
            getattr(rt, method)(**{k: bool(req.get(k)) for k in keys})
            return {"status": rt.status()}

    def cmd_dump_md(self, req):
        rt = self._runtime(req["resource"])
        with rt.lock:
            if rt.md is None:
                return {"attached": False}
            return {"attached": True, **rt.dump_md()}

    def cmd_status(self, req):
        names = [req["resource"]] if req.get("resource") else list(self.config.resources)
        out = []
        for name in names:
            rt = self._runtime(name)
            with rt.lock:
                out.append(rt.status())
        return {"resources": out}

    def cmd_shutdown(self, req):
        self.stop_event.set()
        return {}

    def run(self) -> int:
        os.makedirs(self.where.run_dir, mode=0o755, exist_ok=True)
        control = ControlServer(self.where.control_socket, self.handle)
        with open(self.where.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
        log.info("started: node %s, config %s, run dir %s", self.where.node, self.where.config,
                 self.where.run_dir)
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            control.close()
            with self.lock:
                for rt in self.resources.values():
                    try:
                        with rt.lock:
                            rt.down(force=True)
                    except (ReplicaError, OSError) as exc:
                        log.error("%s: down at exit: %s", rt.name, exc)
            try:
                os.unlink(self.where.pid_file)
            except FileNotFoundError:
                pass
            log.info("stopped")
        return 0


def setup_logging(where: locations.Locations, foreground: bool) -> None:
    """Foreground: stderr. Daemon: RUN_DIR/replicad.log, and syslog (LOG_DAEMON) when present."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    plain = logging.Formatter("replicad[%(process)d]: %(message)s")
    if foreground:
        handlers = [logging.StreamHandler(sys.stderr)]
    else:
        handlers = [logging.FileHandler(where.log_file)]
        if os.path.exists("/dev/log"):
            handlers.append(logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON))
    for handler in handlers:
        handler.setFormatter(plain)
        root.addHandler(handler)
    if not foreground:
        handlers[0].setFormatter(logging.Formatter("%(asctime)s replicad[%(process)d]: %(message)s"))

    def log_thread_crash(args) -> None:
        # a daemon has no stderr: a bug in a background thread must still reach the log
        log.error("thread %s died: %s: %s", args.thread.name if args.thread else "?",
                  args.exc_type.__name__, args.exc_value,
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
    threading.excepthook = log_thread_crash


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="replicad", description="replica-ha replication daemon")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit once the last resource goes down (replicactl starts it so)")
    locations.add_arguments(parser)
    args = parser.parse_args(argv)
    where = locations.resolve(args.config, args.node, args.run_dir)
    try:
        daemon = Daemon(where, exit_when_idle=args.exit_when_idle)
    except ReplicaError as exc:
        print(f"replicad: {exc}", file=sys.stderr)
        return 1
    os.makedirs(where.run_dir, mode=0o755, exist_ok=True)
    if not args.foreground:
        daemonize()
    setup_logging(where, args.foreground)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop_event.set())
    try:
        return daemon.run()
    except ControlError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
