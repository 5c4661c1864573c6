# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl: drbdadm-style control of replicad.

    replicactl [--config F] [--node N] [--run-dir D] COMMAND [RESOURCE|all] [options]

Commands are declared in one table (drbdadm's adm_cmd): name, handler, whether they need a
resource, and a one-line summary for usage. Commands that need the daemon start it when needed
(`up`), or say plainly that it is not running.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from replica import locations
from replica.config import load_config
from replica.control import ControlError, is_daemon_running, request
from replica.errors import ReplicaError

DAEMON_START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable
    needs_resource: bool
    summary: str


class Ctl:
    def __init__(self, where: locations.Locations, args):
        self.where = where
        self.args = args
        self._config = None

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
        return request(self.where.control_socket, cmd, **fields)

    def ensure_daemon(self) -> None:
        if is_daemon_running(self.where.control_socket):
            return
        self.config  # a broken config is reported here, not by a daemon in the background
        cmd = [sys.executable, "-m", "replica.daemon", "--config", self.where.config,
               "--node", self.where.node, "--run-dir", self.where.run_dir, "--exit-when-idle"]
        started = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if started.returncode != 0:
            raise ReplicaError(started.stderr.strip() or f"replicad exited with status {started.returncode}")
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if is_daemon_running(self.where.control_socket):
                return
            time.sleep(0.05)
        raise ReplicaError(f"replicad did not answer on {self.where.control_socket} within "
                           f"{DAEMON_START_TIMEOUT_S:.0f} s (see {self.where.log_file})")

    def status_of(self, name: str | None) -> list[dict]:
        try:
            return self.call("status", resource=name)["resources"]
        except ControlError:
            if is_daemon_running(self.where.control_socket):
                raise
            return []


def cmd_up(ctl: Ctl, name: str) -> int:
    ctl.ensure_daemon()
    for res in ctl.resource_names(name):
        ctl.call("up", resource=res)
    return 0


def cmd_down(ctl: Ctl, name: str) -> int:
    if not is_daemon_running(ctl.where.control_socket):
        return 0  # nothing is up: down is already true
    for res in ctl.resource_names(name):
        ctl.call("down", resource=res)
    return 0


def format_status(st: dict) -> str:
    """drbdadm status layout (drbd-reference.md 1.12) for one resource."""
    lines = [f"{st['name']} role:{st['role']}", f"  disk:{st['disk_state']}"]
    return "\n".join(lines)


def cmd_status(ctl: Ctl, name: str) -> int:
    names = ctl.resource_names(name or "all")
    by_name = {st["name"]: st for st in ctl.status_of(None)}
    up = [by_name[n] for n in names if by_name.get(n, {}).get("up")]
    if ctl.args.json:
        print(json.dumps(up, indent=2))
        return 0
    rc = 0
    for n in names:
        if n in {st["name"] for st in up}:
            print(format_status(by_name[n]))
            print()
        else:
            print(f"{n}: No such resource", file=sys.stderr)
            rc = 10  # drbdsetup's exit code for an unknown/unconfigured resource
    return rc


def _field(ctl: Ctl, name: str, render: Callable[[dict], str]) -> int:
    rc = 0
    for res in ctl.resource_names(name):
        sts = [st for st in ctl.status_of(res) if st.get("up")]
        if not sts:
            print(f"{res}: No such resource", file=sys.stderr)
            rc = 10
            continue
        print(render(sts[0]))
    return rc


def cmd_role(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, lambda st: f"{st['role']}/{st.get('peer_role', 'Unknown')}")


def cmd_cstate(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, lambda st: st["connection"])


def cmd_dstate(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, lambda st: f"{st['disk_state']}/{st.get('peer_disk_state', 'DUnknown')}")


def cmd_nbd_uri(ctl: Ctl, name: str) -> int:
    for res in ctl.resource_names(name):
        resource = ctl.config.resource(res)
        host = resource.host(ctl.where.node)
        if host.export is not None:
            print(host.export.nbd_uri(res))
        else:
            print(f"nbd+unix:///{res}?socket={ctl.where.default_export_path(res)}")
    return 0


def cmd_dump(ctl: Ctl, name: str) -> int:
    from replica.config import dump_config
    print(dump_config(ctl.config), end="")
    return 0


COMMANDS = [
    Command("up", cmd_up, True, "attach the disk and start serving the resource (starts replicad if needed)"),
    Command("down", cmd_down, True, "stop serving the resource and release its disk"),
    Command("status", cmd_status, False, "show roles and disk states, drbdadm-style"),
    Command("role", cmd_role, True, "print local/peer role, e.g. Primary/Secondary"),
    Command("cstate", cmd_cstate, True, "print the connection state"),
    Command("dstate", cmd_dstate, True, "print local/peer disk state, e.g. UpToDate/UpToDate"),
    Command("nbd-uri", cmd_nbd_uri, True, "print the NBD URI of the resource's export"),
    Command("dump", cmd_dump, False, "print the parsed configuration, normalised"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replicactl", description="control replica-ha resources (drbdadm-style)")
    locations.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.summary, description=command.summary)
        if command.needs_resource:
            p.add_argument("resource", metavar="RESOURCE", help="resource name, or 'all'")
        else:
            p.add_argument("resource", metavar="RESOURCE", nargs="?", default=None,
                           help="resource name, or 'all' (default)")
        if command.name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=command.handler)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    where = locations.resolve(args.config, args.node, args.run_dir)
    ctl = Ctl(where, args)
    try:
        return args.handler(ctl, args.resource)
    except (ReplicaError, OSError) as exc:
        print(f"replicactl: {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
