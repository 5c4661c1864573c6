# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's role and connection commands: up, down, startup, wait-connect, outdate,
peer-dead, verify, create-md (the plain verbs, `_verb` in replica.cli_ctl, are built in the
table). Each handler takes (ctl, name) and returns the exit code.
"""
import os
import sys

from replica.cli_ctl import EXIT_ERROR, EXIT_NO_RESOURCE, Ctl, _verb, daemon_missing, print_config_warnings, wait_each
from replica.errors import ReplicaError
from replica.states import Refusal, Refused


def cmd_up(ctl: Ctl, name: str) -> int:
    print_config_warnings(ctl)
    ctl.ensure_daemon(name)
    for res in ctl.resource_names(name):
        ctl.call("up", resource=res)
    return 0


def cmd_wait_connect(ctl: Ctl, name: str) -> int:
    """drbdadm wait-connect: block until each resource is Connected, for as long as its
    startup{} timeout allows (replica.startup says which and when to give up early)."""
    from replica.startup import wait_verdict

    def verdict_of(st: dict, startup: dict):
        return wait_verdict(st, wait_after_sb=startup.get("wait-after-sb", "no") != "no")

    def timed_out(st: dict, timeout: float, option: str) -> str:
        return f"not Connected after {timeout} s ({option}; now {st.get('connection', 'unknown')})"

    return wait_each(ctl, name, "wait-connect", verdict_of, timed_out, EXIT_ERROR)


def cmd_startup(ctl: Ctl, name: str) -> int:
    """What drbd.service (DRBD 8.4's init script) does at boot: `up`, `wait-connect` with the
    startup{} timeouts, then `primary` where `become-primary-on` names this node (or both)."""
    from replica.startup import becomes_primary
    cmd_up(ctl, name)
    rc = cmd_wait_connect(ctl, name)
    for res in ctl.resource_names(name):
        if becomes_primary(ctl.config.resource(res).startup, ctl.where.node):
            ctl.call("primary", resource=res, force=False)
            print(f"{res}: Primary (become-primary-on)")
    return rc


def cmd_down(ctl: Ctl, name: str) -> int:
    force = bool(ctl.args.force)
    if not ctl.daemon_running:
        # nothing is up: down is already true, but a replicad that died may have left its
        # block device (mounted loop device, dead FUSE mount): --force releases it
        from replica.blockdev import cleanup_after_crash, record_path
        for res in ctl.resource_names(name):
            if not force:
                if os.path.exists(record_path(ctl.where.run_dir, res)):
                    print(f"{res}: replicad is not running but left its block device: "
                          f"`replicactl down --force {res}` releases it", file=sys.stderr)
                continue
            for line in cleanup_after_crash(ctl.where.run_dir, res):
                print(f"{res}: {line}")
        return 0
    for res in ctl.resource_names(name):
        ctl.call("down", resource=res, force=force)
    return 0


def cmd_verify(ctl: Ctl, name: str) -> int:
    """drbdadm verify RES [--start S] [--stop S]: sectors, or a size with a unit (drbdsetup)."""
    from replica.verify import parse_sectors
    start = parse_sectors(ctl.args.start) if ctl.args.start else 0
    stop = parse_sectors(ctl.args.stop) if ctl.args.stop else None
    if daemon_missing(ctl, name):
        return EXIT_NO_RESOURCE
    for res in ctl.resource_names(name):
        ctl.call("verify", resource=res, start=start, stop=stop)
    return 0


def cmd_create_md(ctl: Ctl, name: str) -> int:
    from replica import metadata
    for res in ctl.resource_names(name):
        resource = ctl.config.resource(res)
        if resource.standalone:
            raise ReplicaError(f"{res}: create-md: a standalone resource (one 'on' section) has "
                               "no metadata")
        if ctl.is_attached(res):
            raise Refusal.DISK_CONFIGURED.error(res)
        host = resource.host(ctl.where.node)
        try:
            md = metadata.create_md(host.disk, host.meta_disk, al_extents=resource.disk.al_extents,
                                    force=ctl.args.force)
        except metadata.MetadataExists as exc:
            raise ReplicaError(f"{exc} (replicactl create-md --force {res})") from None
        with md:
            print(f"{res}: writing meta data on {host.disk} (meta-disk {host.meta_disk}): "
                  f"{md.sb.data_size} data bytes, {md.sb.md_size} metadata bytes")
        print("New replica meta data block successfully created.")
    return 0


EXIT_LOWER_THAN_OUTDATED = 5   # drbdsetup outdate: the disk is Inconsistent or worse


def cmd_outdate(ctl: Ctl, name: str) -> int:
    """drbdadm outdate; exit 5 when the disk is already Inconsistent (drbdsetup's code, which
    fence-peer helpers turn into their own exit 3), 17 for other refusals."""
    try:
        return _verb("outdate")(ctl, name)
    except Refused as exc:
        if exc.refusal is not Refusal.LOWER_THAN_OUTDATED:
            raise
        print(f"{exc.context}: State change failed: {exc.refusal.sentence}", file=sys.stderr)
        return EXIT_LOWER_THAN_OUTDATED


def cmd_peer_dead(ctl: Ctl, name: str) -> int:
    """What the cluster manager tells replicad: the peer node is dead (--fenced: STONITH
    reset it). No replicad running: nothing to tell, success."""
    if not ctl.daemon_running:
        return 0
    if name != "all":
        ctl.resource_names(name)
    reply = ctl.call("peer-dead", resource=name, fenced=bool(ctl.args.fenced))
    for res in reply.get("resources", []):
        print(f"{res}: peer dead{' (fenced)' if ctl.args.fenced else ''}: connection dropped")
    return 0
