# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's command context: `Ctl` (where, the parsed config, the control socket, the
replicad this command started) and what every command group shares: exit codes, the
`_verb` handler factory, config warnings.

Command groups (replica.cli_roles, cli_observe, cli_runtime) import from here and never from
each other or from replica.cli, which assembles them into the Command table.
"""
import subprocess
import sys
import time
from collections.abc import Callable

from replica import locations
from replica.config import load_config
from replica.control import ControlError, is_daemon_running, request
from replica.errors import ReplicaError

DAEMON_START_TIMEOUT_S = 15.0
EXIT_ERROR = 1
EXIT_NO_RESOURCE = 10
EXIT_REFUSED = 17        # drbdsetup's exit code for a refused state change (SS_* error)
EXIT_TIMEOUT = 5         # drbdsetup wait-connect / wait-sync: the timeout expired
EXIT_USAGE = 20          # drbdsetup: an option or value it cannot parse
DEFAULT_CMD_TIMEOUT_S = 60.0
QUICK_COMMANDS = frozenset({"ping", "status", "dump-md"})
LONG_COMMANDS = frozenset({"down", "detach", "disconnect"})   # they wait for in-flight I/O


class Ctl:
    def __init__(self, where: locations.Locations, args):
        self.where = where
        self.args = args
        self._config = None
        self.started_pid: int | None = None    # the replicad this command started, if any

    @property
    def config(self):
        if self._config is None:
            self._config = load_config(self.where.config)
        return self._config

    def resource_names(self, name: str) -> list[str]:
        if name == "all":
            return list(self.config.resources)
        self.config.resource(name)  # raises "no resource ..." with the known names
        return [name]

    def call(self, cmd: str, **fields) -> dict:
        return request(self.where.control_socket, cmd, timeout_s=self.cmd_timeout(cmd),
                       config=self.where.config, node=self.where.node, **fields)

    def cmd_timeout(self, cmd: str) -> float:
        """global { cmd-timeout-short | -medium | -long; }: how long drbdadm waits for a command
        (status and other queries: short; down, detach, disconnect: long; other state changes:
        medium). Unset: 60 s."""
        which = ("cmd-timeout-short" if cmd in QUICK_COMMANDS else
                 "cmd-timeout-long" if cmd in LONG_COMMANDS else "cmd-timeout-medium")
        try:
            value = self.config.global_options.get(which)
        except ReplicaError:
            value = None
        return float(str(value).split()[0]) if value else DEFAULT_CMD_TIMEOUT_S

    @property
    def daemon_running(self) -> bool:
        return is_daemon_running(self.where.control_socket)

    def check_hosts(self, name: str) -> None:
        """Every named resource has an `on` section for this node (else file:line says so)."""
        for res in self.resource_names(name):
            self.config.resource(res).host(self.where.node)

    def ensure_daemon(self, name: str) -> None:
        # a broken config is reported here, not by a daemon in the background
        self.check_hosts(name)
        if self.daemon_running:
            return
        cmd = [sys.executable, "-m", "replica.daemon", "--config", self.where.config,
               "--node", self.where.node, "--run-dir", self.where.run_dir, "--exit-when-idle"]
        started = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if started.returncode != 0:
            raise ReplicaError(started.stderr.strip() or f"replicad exited with status {started.returncode}")
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self.started_pid = request(self.where.control_socket, "ping", timeout_s=5)["pid"]
                return
            except (ControlError, OSError):
                time.sleep(0.05)
        raise ReplicaError(f"replicad did not answer on {self.where.control_socket} within "
                           f"{DAEMON_START_TIMEOUT_S:.0f} s (see {self.where.log_file})")

    def reap_started_daemon(self) -> None:
        """After a failure: wait until the replicad we started has exited, if it stopped
        listening (nothing in use); one that still answers has a resource up and stays."""
        if self.started_pid is None or self.daemon_running:
            return
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while _process_alive(self.started_pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def status_of(self, name: str | None) -> list[dict]:
        try:
            return self.call("status", resource=name)["resources"]
        except ControlError:
            if self.daemon_running:
                raise
            return []

    def is_attached(self, name: str) -> bool:
        return any(st.get("up") for st in self.status_of(name))


def _process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaps yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def print_config_warnings(ctl: Ctl) -> None:
    """Options DRBD itself ignores in our setting: said, never silently dropped."""
    for warning in ctl.config.warnings:
        print(f"replicactl: warning: {warning}", file=sys.stderr)


def daemon_missing(ctl: Ctl, name: str) -> bool:
    """True, having said so for each resource named, when no replicad runs (the caller then
    returns EXIT_NO_RESOURCE, as drbdsetup does for a resource the kernel does not know)."""
    if ctl.daemon_running:
        return False
    for res in ctl.resource_names(name):
        print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
    return True


def wait_each(ctl: Ctl, name: str, verb: str, verdict_of: Callable, timed_out: Callable,
              timeout_rc: int) -> int:
    """The loop of wait-connect and wait-sync: poll each resource's status until
    `verdict_of(status, startup)` is done, within its startup{} timeout (wfc-timeout or
    degr-wfc-timeout, the one replicad says applies; replica.startup). On timeout print
    `RES: VERB: timed_out(status, timeout, option)` and count timeout_rc; a verdict done but
    not ok prints its why and counts EXIT_ERROR."""
    from replica.startup import wfc_timeout_s
    if daemon_missing(ctl, name):
        return EXIT_NO_RESOURCE
    rc = 0
    for res in ctl.resource_names(name):
        startup = ctl.config.resource(res).startup
        option = (ctl.status_of(res) or [{}])[0].get("wfc_option", "wfc-timeout")
        timeout = wfc_timeout_s(startup, option)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            st = (ctl.status_of(res) or [{}])[0]
            verdict = verdict_of(st, startup)
            if verdict.done:
                if not verdict.ok:
                    print(f"{res}: {verb}: {verdict.why}", file=sys.stderr)
                    rc = rc or EXIT_ERROR
                break
            if deadline is not None and time.monotonic() >= deadline:
                print(f"{res}: {verb}: {timed_out(st, timeout, option)}", file=sys.stderr)
                rc = timeout_rc
                break
            time.sleep(0.2)
    return rc


def _verb(verb: str, start_daemon: bool = False, **flags: str) -> Callable:
    """A handler sending `verb` with the boolean options named in `flags` (arg -> request key)."""
    def handler(ctl: Ctl, name: str) -> int:
        if start_daemon:
            ctl.ensure_daemon(name)
        elif daemon_missing(ctl, name):
            return EXIT_NO_RESOURCE
        for res in ctl.resource_names(name):
            ctl.call(verb, resource=res, **{key: bool(getattr(ctl.args, arg, False))
                                            for arg, key in flags.items()})
        return 0
    handler.__name__ = f"cmd_{verb.replace('-', '_')}"
    return handler
