# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl: drbdadm-style control of replicad.

    replicactl [--config F] [--node N] [--run-dir D] COMMAND [RESOURCE|all] [options]

Commands are declared in one table (drbdadm's adm_cmd): name, handler, whether they need a
resource, their options, and a one-line summary for usage. `up` and `attach` start the daemon
when needed; `create-md` and `dump-md` work on the disk directly while the resource is down.
Refused state changes (the reply names the Refusal) print one DRBD sentence on stderr
(`r0: State change failed: Need access to UpToDate data`) and exit with EXIT_REFUSED, as
drbdsetup does; other failures exit 1, unknown/unconfigured resources 10.

Every command parses its --config first (errors name file:line, as drbdadm's do) and names that
file and --node in each request, so replicad acts on the configuration this command was given,
not on the one it was started with. A daemon that this command started and that is left with
nothing in use after a failure exits; we wait for it, so nothing stays behind the run dir.

This module is the table, the argument parser and main(); the handlers live by concept:
replica.cli_ctl (Ctl, exit codes, `_verb`), cli_roles (up/down, roles, connection, fencing,
create-md), cli_observe (status, events, dump, dump-md), cli_runtime (adjust, net-options,
disk-options, resize, wait-sync).
"""
import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from replica import locations
from replica.cli_ctl import EXIT_ERROR, EXIT_NO_RESOURCE, EXIT_REFUSED, Ctl, _verb
from replica.cli_observe import (
    cmd_cstate,
    cmd_dstate,
    cmd_dump,
    cmd_dump_md,
    cmd_events,
    cmd_nbd_uri,
    cmd_role,
    cmd_status,
    format_status,
    render_cstate,
    render_dstate,
    render_role,
    render_status,
)
from replica.cli_roles import (
    cmd_create_md,
    cmd_down,
    cmd_outdate,
    cmd_peer_dead,
    cmd_startup,
    cmd_up,
    cmd_verify,
    cmd_wait_connect,
)
from replica.cli_runtime import _options_command, cmd_adjust, cmd_resize, cmd_wait_sync
from replica.errors import ReplicaError
from replica.states import Refused

# what tests, the OCF agent and the VM guest import from here
__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_NO_RESOURCE", "EXIT_REFUSED", "Command", "Ctl",
           "build_parser", "cmd_verify", "format_status", "main", "render_cstate", "render_dstate",
           "render_role", "render_status"]

@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable
    needs_resource: bool
    summary: str
    # (flag, help): a boolean flag; (flag, help, METAVAR): an option taking a value
    options: tuple[tuple[str, ...], ...] = field(default=())
    takes_settings: bool = False     # --KEYWORD=VALUE... follow the resource (net-options)


COMMANDS = [
    Command("create-md", cmd_create_md, True, "initialise the metadata (UUIDs, bitmap, activity "
            "log) on this node's disk", (("--force", "overwrite valid metadata"),)),
    Command("dump-md", cmd_dump_md, True, "print the metadata: UUIDs, flags, bitmap",
            (("--json", "machine-readable output"),)),
    Command("up", cmd_up, True, "attach the disk and connect to the peer (starts replicad if "
            "needed)"),
    Command("down", cmd_down, True, "disconnect, demote and release the disk",
            (("--force", "even while the device is mounted or open (it goes away when its last "
              "user lets go), or after replicad died"),)),
    Command("wait-connect", cmd_wait_connect, True, "wait until Connected (startup{} wfc-timeout, "
            "degr-wfc-timeout, outdated-wfc-timeout, wait-after-sb)"),
    Command("startup", cmd_startup, True, "boot: up, wait-connect, then primary where "
            "become-primary-on names this node"),
    Command("attach", _verb("attach", start_daemon=True), True, "open the disk and its metadata"),
    Command("detach", _verb("detach"), True, "release the disk (clean metadata shutdown)"),
    Command("connect", _verb("connect", discard_my_data="discard_my_data"), True,
            "connect to the peer", (("--discard-my-data", "split-brain victim: resync from "
                                     "the peer, dropping local changes"),)),
    Command("disconnect", _verb("disconnect"), True, "drop the peer connection (StandAlone)"),
    Command("primary", _verb("primary", force="force"), True, "promote to Primary",
            (("--force", "promote even without UpToDate data (initial sync, disaster)"),)),
    Command("secondary", _verb("secondary"), True, "demote to Secondary"),
    Command("outdate", cmd_outdate, True, "mark this node's data Outdated (disconnected "
            "Secondary only): what a fence-peer handler asks of the peer"),
    Command("resume-io", _verb("resume-io"), True, "resume I/O suspended by fencing "
            "(resource-and-stonith) after a failed fence-peer handler"),
    Command("peer-dead", cmd_peer_dead, True, "the cluster manager declares the peer node "
            "dead: drop the link now, count its disk as Outdated",
            (("--fenced", "STONITH has reset the peer node"),)),
    Command("invalidate", _verb("invalidate"), True, "resync the local disk fully from the peer"),
    Command("invalidate-remote", _verb("invalidate-remote"), True,
            "resync the peer's disk fully from this node"),
    Command("pause-sync", _verb("pause-sync"), True, "pause the running resync (PausedSyncS/T)"),
    Command("resume-sync", _verb("resume-sync"), True, "resume a resync paused by pause-sync"),
    Command("verify", cmd_verify, True, "online verify: compare this node's blocks with the "
            "peer's by digest (verify-alg); differing blocks are marked out of sync",
            (("--start", "first sector (or a size with a unit: 1G...), default 0", "SECTOR"),
             ("--stop", "stop before this sector (or size), default the end", "SECTOR"))),
    Command("new-current-uuid", _verb("new-current-uuid", clear_bitmap="clear_bitmap"), True,
            "start a new data generation",
            (("--clear-bitmap", "both disks are identical (e.g. blank): skip the initial "
              "sync"),)),
    Command("status", cmd_status, False, "show roles, disk and peer states, drbdadm-style",
            (("--json", "machine-readable output, with resync rate and ETA"),
             ("--verbose", "add drbdsetup's statistics to the peer line"),
             ("--statistics", "counters as drbdadm status --statistics: size, read, written, "
              "al-writes, bm-writes, pending; received, sent, out-of-sync, ack latency p50/p99"),
             ("--watch", "a live view, redrawn on every state change and resync step "
              "(Ctrl-C leaves it)"))),
    Command("role", cmd_role, True, "print local/peer role, e.g. Primary/Secondary"),
    Command("cstate", cmd_cstate, True, "print the connection state"),
    Command("dstate", cmd_dstate, True, "print local/peer disk state, e.g. UpToDate/UpToDate"),
    Command("nbd-uri", cmd_nbd_uri, True, "print the NBD URI of the resource's export"),
    Command("events", cmd_events, False, "print state changes as they happen, in the line "
            "format of drbdsetup events2 (exists lines first, then `exists -`)",
            (("--now", "print the current state and exit"),
             ("--statistics", "add counters (size, read, written, sent, received, "
              "out-of-sync...) and resync progress"),
             ("--timestamps", "prefix each line with its time (ISO 8601)"))),
    Command("dump", cmd_dump, False, "print the parsed configuration, normalised",
            (("--running", "the resources as replicad runs them now (net-options, "
              "disk-options included), as drbdsetup show"),)),
    Command("adjust", cmd_adjust, True, "apply the configuration file's changes to the "
            "running resource, only what differs (up if it is not up)",
            (("-d", "print the plan (replicasetup lines) and change nothing", "dry_run"),)),
    Command("net-options", _options_command("net"), True, "change net options of a running "
            "resource: --KEYWORD=VALUE... (--set-defaults: the others back to defaults)",
            takes_settings=True),
    Command("disk-options", _options_command("disk"), True, "change disk options of a running "
            "resource: --KEYWORD=VALUE... (--set-defaults: the others back to defaults)",
            takes_settings=True),
    Command("resize", cmd_resize, True, "grow (or with --size shrink) the device online after "
            "both backing disks grew: the nodes agree on the size, the new area is resynced",
            (("--size", "the new size (K, M, G suffix; bare numbers in 512-byte sectors); "
              "default: the largest both disks hold", "SIZE"),
             ("--assume-clean", "the new area is identical on both nodes (e.g. zeros): no "
              "resync"))),
    Command("wait-sync", cmd_wait_sync, True, "wait until Connected and no resync runs "
            "(startup{} wfc-timeout, degr-wfc-timeout); exit 5 on timeout"),
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
        for flag, text, *metavar in command.options:
            if metavar and metavar[0] == "dry_run":
                p.add_argument(flag, "--dry-run", dest="dry_run", action="store_true", help=text)
            elif metavar:
                p.add_argument(flag, metavar=metavar[0], default=None, help=text)
            else:
                p.add_argument(flag, action="store_true", help=text)
        if command.takes_settings:
            p.add_argument("settings", nargs=argparse.REMAINDER, metavar="--KEYWORD=VALUE",
                           help="options in drbdsetup's syntax, e.g. --ping-timeout=10")
        p.set_defaults(handler=command.handler)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    where = locations.resolve(args.config, args.node, args.run_dir)
    ctl = Ctl(where, args)
    try:
        return args.handler(ctl, args.resource)
    except BrokenPipeError:
        # The reader went away (`replicactl status | head`): stop quietly, as ls or cat do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Refused as exc:
        ctl.reap_started_daemon()
        detail = f" ({exc.detail})" if exc.detail else ""
        print(f"{exc.context}: State change failed: {exc.refusal.sentence}{detail}", file=sys.stderr)
        return EXIT_REFUSED
    except (ReplicaError, OSError) as exc:
        ctl.reap_started_daemon()
        print(f"replicactl: {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
