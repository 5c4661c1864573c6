# SPDX-License-Identifier: GPL-2.0-or-later
"""Where things live: config file, node name and run directory, from flags, environment, defaults.

Every command takes --config/--node/--run-dir, falling back to REPLICA_CONFIG, REPLICA_NODE and
REPLICA_RUN_DIR, then to /etc/replica/replica.conf, `uname -n` and /run/replica, so that several
nodes can share one machine (one network namespace and run directory each).
"""
import os
from dataclasses import dataclass

DEFAULT_CONFIG = "/etc/replica/replica.conf"
DEFAULT_RUN_DIR = "/run/replica"


@dataclass(frozen=True)
class Locations:
    config: str
    node: str
    run_dir: str

    @property
    def control_socket(self) -> str:
        return os.path.join(self.run_dir, "replicad.sock")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "replicad.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "replicad.log")

    def default_export_path(self, resource: str) -> str:
        return os.path.join(self.run_dir, f"{resource}.nbd")


def resolve(config: str | None, node: str | None, run_dir: str | None) -> Locations:
    return Locations(
        config=os.path.abspath(config or os.environ.get("REPLICA_CONFIG") or DEFAULT_CONFIG),
        node=node or os.environ.get("REPLICA_NODE") or os.uname().nodename,
        run_dir=os.path.abspath(run_dir or os.environ.get("REPLICA_RUN_DIR") or DEFAULT_RUN_DIR),
    )


def add_arguments(parser) -> None:
    parser.add_argument("-c", "--config", help=f"replica.conf (default: $REPLICA_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--node", help="this node's name in 'on NAME' sections (default: $REPLICA_NODE or uname -n)")
    parser.add_argument("--run-dir", help=f"sockets, pid file, state (default: $REPLICA_RUN_DIR or {DEFAULT_RUN_DIR})")
