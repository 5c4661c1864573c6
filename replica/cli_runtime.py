# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's runtime changes: adjust (the file's differences applied to the running
resource, up if it is not; -d prints the plan), net-options and disk-options, resize, and
wait-sync (the wait that follows a resize or an initial sync).
"""
import sys
from collections.abc import Callable

from replica.cli_ctl import (
    EXIT_NO_RESOURCE,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Ctl,
    daemon_missing,
    print_config_warnings,
    wait_each,
)
from replica.errors import ReplicaError


def _running(ctl: Ctl, res: str):
    from replica.adjust import Running
    if not ctl.daemon_running:
        return Running(up=False)
    return Running.from_reply(ctl.call("show", resource=res))


def cmd_adjust(ctl: Ctl, name: str) -> int:
    """drbdadm adjust [-d]: compare the file with the running resource and apply only the
    difference (replica.adjust says what each difference takes). -d prints the plan, one
    `replicasetup VERB RES [--KEY=VALUE...]` line per request, and changes nothing; a
    resource that already matches prints nothing."""
    from replica.adjust import notes_for, plan_adjust, settings_of
    ctl.check_hosts(name)
    if not ctl.args.dry_run:
        print_config_warnings(ctl)
    for res in ctl.resource_names(name):
        desired = settings_of(ctl.config.resource(res), ctl.where.node)
        running = _running(ctl, res)
        for note in notes_for(res, desired, running):
            print(f"replicactl: adjust: {note}", file=sys.stderr)
        for action in plan_adjust(res, desired, running):
            if ctl.args.dry_run:
                print(action.text())
            else:
                run_action(ctl, action)
    return 0


def run_action(ctl: Ctl, action) -> None:
    """One step of an adjust plan, as a replicad request."""
    res = action.resource
    if action.verb in ("up", "attach"):
        ctl.ensure_daemon(res)
    if action.verb in ("net-options", "disk-options", "handlers"):
        ctl.call(action.verb, resource=res, values=action.values,
                 set_defaults=action.set_defaults)
    elif action.verb == "down":
        ctl.call("down", resource=res, force=False)
    elif action.verb == "connect":
        ctl.call("connect", resource=res, discard_my_data=False)
    else:
        ctl.call(action.verb, resource=res)


def _options_command(section: str) -> Callable:
    """net-options / disk-options RES --KEY=VALUE...: checked here with the config's parsers
    (the same words as a config error), applied live by replicad, which checks them again
    against the running values (timeout < ping-int...)."""
    verb = f"{section}-options"

    def handler(ctl: Ctl, name: str) -> int:
        from replica.adjust import parse_option_args
        try:
            values, set_defaults, warnings = parse_option_args(section, ctl.args.settings)
        except ReplicaError as exc:
            print(f"replicactl: {verb}: {name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for warning in warnings:
            print(f"replicactl: warning: {verb}: {name}: {warning}", file=sys.stderr)
        if not values and not set_defaults:
            print(f"replicactl: {verb}: {name}: no option given (--KEYWORD=VALUE...)",
                  file=sys.stderr)
            return EXIT_USAGE
        if daemon_missing(ctl, name):
            return EXIT_NO_RESOURCE
        for res in ctl.resource_names(name):
            reply = ctl.call(verb, resource=res, values=values, set_defaults=set_defaults)
            for change in reply.get("changes", []):
                print(f"{res}: {section}: {change}")
        return 0
    handler.__name__ = f"cmd_{section}_options"
    return handler


def cmd_resize(ctl: Ctl, name: str) -> int:
    """drbdadm resize RES [--size=S] [--assume-clean]: after both backing disks grew, the
    device grows online to the smaller of the two (replica.resize); --size as drbdsetup takes
    it (K/M/G/T suffixes, a bare number in 512-byte sectors)."""
    from replica.config import DISK_KEYWORDS
    from replica.config_values import BadValue
    size = None
    if ctl.args.size is not None:
        try:
            size = DISK_KEYWORDS["size"][1].parse([ctl.args.size])
        except BadValue as exc:
            print(f"replicactl: resize: {name}: --size: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if daemon_missing(ctl, name):
        return EXIT_NO_RESOURCE
    for res in ctl.resource_names(name):
        before = (ctl.status_of(res) or [{}])[0].get("size")
        # replicad waits for the peer a little less than we wait for replicad
        st = ctl.call("resize", resource=res, size=size, assume_clean=bool(ctl.args.assume_clean),
                      wait_s=max(1.0, ctl.cmd_timeout("resize") - 5))["status"]
        print(f"{res}: size {before} -> {st['size']} bytes"
              + ("" if st["size"] == before else " (resync of the new area)"
                 if not ctl.args.assume_clean and st["size"] > (before or 0) else ""))
    return 0


def cmd_wait_sync(ctl: Ctl, name: str) -> int:
    """drbdadm wait-sync: wait-connect, then until no resync runs (replication Established,
    both disks UpToDate), all within the same startup{} timeout (wfc-timeout or
    degr-wfc-timeout, as wait-connect picks it). Exit 0 when synced, 5 on timeout
    (drbdsetup's wait-sync/wait-connect code), 1 when it cannot happen (StandAlone...)."""
    from replica.startup import sync_verdict, wait_verdict

    def verdict_of(st: dict, startup: dict):
        verdict = wait_verdict(st, wait_after_sb=startup.get("wait-after-sb", "no") != "no")
        return sync_verdict(st) if verdict.done and verdict.ok else verdict

    def timed_out(st: dict, timeout: float, option: str) -> str:
        return (f"not in sync after {timeout} s ({option}; now "
                f"{st.get('cstate', st.get('connection', 'unknown'))} "
                f"{st.get('disk_state', '?')}/{st.get('peer_disk_state', '?')})")

    return wait_each(ctl, name, "wait-sync", verdict_of, timed_out, EXIT_TIMEOUT)
