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
"""
import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from replica import locations
from replica.config import load_config
from replica.control import ControlError, is_daemon_running, request
from replica.errors import ReplicaError
from replica.states import Refusal, Refused

DAEMON_START_TIMEOUT_S = 15.0
EXIT_ERROR = 1
EXIT_NO_RESOURCE = 10
EXIT_REFUSED = 17        # drbdsetup's exit code for a refused state change (SS_* error)
EXIT_TIMEOUT = 5         # drbdsetup wait-connect / wait-sync: the timeout expired
EXIT_USAGE = 20          # drbdsetup: an option or value it cannot parse
DEFAULT_CMD_TIMEOUT_S = 60.0
QUICK_COMMANDS = frozenset({"ping", "status", "dump-md"})
LONG_COMMANDS = frozenset({"down", "detach", "disconnect"})   # they wait for in-flight I/O


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable
    needs_resource: bool
    summary: str
    # (flag, help): a boolean flag; (flag, help, METAVAR): an option taking a value
    options: tuple[tuple[str, ...], ...] = field(default=())
    takes_settings: bool = False     # --KEYWORD=VALUE... follow the resource (net-options)


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


def cmd_up(ctl: Ctl, name: str) -> int:
    print_config_warnings(ctl)
    ctl.ensure_daemon(name)
    for res in ctl.resource_names(name):
        ctl.call("up", resource=res)
    return 0


def cmd_wait_connect(ctl: Ctl, name: str) -> int:
    """drbdadm wait-connect: block until each resource is Connected, for as long as its
    startup{} timeout allows (replica.startup says which and when to give up early)."""
    from replica.startup import wait_verdict, wfc_timeout_s
    if not ctl.daemon_running:
        for res in ctl.resource_names(name):
            print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
        return EXIT_NO_RESOURCE
    rc = 0
    for res in ctl.resource_names(name):
        startup = ctl.config.resource(res).startup
        first = (ctl.status_of(res) or [{}])[0]
        option = first.get("wfc_option", "wfc-timeout")
        timeout = wfc_timeout_s(startup, option)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            st = (ctl.status_of(res) or [{}])[0]
            verdict = wait_verdict(st, wait_after_sb=startup.get("wait-after-sb", "no") != "no")
            if verdict.done:
                if not verdict.ok:
                    print(f"{res}: wait-connect: {verdict.why}", file=sys.stderr)
                    rc = EXIT_ERROR
                break
            if deadline is not None and time.monotonic() >= deadline:
                print(f"{res}: wait-connect: not Connected after {timeout} s ({option}; now "
                      f"{st.get('connection', 'unknown')})", file=sys.stderr)
                rc = EXIT_ERROR
                break
            time.sleep(0.2)
    return rc


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


def _verb(verb: str, start_daemon: bool = False, **flags: str) -> Callable:
    """A handler sending `verb` with the boolean options named in `flags` (arg -> request key)."""
    def handler(ctl: Ctl, name: str) -> int:
        if start_daemon:
            ctl.ensure_daemon(name)
        elif not ctl.daemon_running:
            for res in ctl.resource_names(name):
                print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
            return EXIT_NO_RESOURCE
        for res in ctl.resource_names(name):
            ctl.call(verb, resource=res, **{key: bool(getattr(ctl.args, arg, False))
                                            for arg, key in flags.items()})
        return 0
    handler.__name__ = f"cmd_{verb.replace('-', '_')}"
    return handler


def cmd_verify(ctl: Ctl, name: str) -> int:
    """drbdadm verify RES [--start S] [--stop S]: sectors, or a size with a unit (drbdsetup)."""
    from replica.verify import parse_sectors
    start = parse_sectors(ctl.args.start) if ctl.args.start else 0
    stop = parse_sectors(ctl.args.stop) if ctl.args.stop else None
    if not ctl.daemon_running:
        for res in ctl.resource_names(name):
            print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
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


def cmd_dump_md(ctl: Ctl, name: str) -> int:
    from replica import metadata
    from replica.metadata_dump import dump_md, format_dump_md
    for res in ctl.resource_names(name):
        resource = ctl.config.resource(res)
        reply = ctl.call("dump-md", resource=res) if ctl.daemon_running else {"attached": False}
        if reply.get("attached"):
            text, data = reply["text"], reply["json"]
        else:
            host = resource.host(ctl.where.node)
            with metadata.open_md(host.disk, host.meta_disk, apply_al=False) as md:
                text, data = format_dump_md(md), dump_md(md)
        if ctl.args.json:
            print(json.dumps(data, indent=2))
        else:
            print(text, end="")
    return 0


def _size_kib(n: int) -> str:
    return f"{n // 1024}"


def format_status(st: dict, verbose: bool = False) -> str:
    """drbdadm status layout (drbd-reference.md 1.12) for one resource.

    A Primary's block device gets a line: its name, the kernel device behind it, and who holds
    it (mounts, processes). Peer lines appear for replicated resources: `  <peer> connection:<C>` while not Connected,
    else `  <peer> role:<R>[ tls:<protocol>/<cipher>]` and `    [replication:<S> ]peer-disk:<D>[ done:<pct>]`
    (replication only beyond Established, as drbdsetup prints it). DRBD 9.2 prints `tls:yes`; we
    name what was negotiated. A refused TLS handshake shows as `    tls-error:<reason>` under
    the connection line.
    """
    lines = [f"{st['name']} role:{st['role']}", f"  disk:{st['disk_state']}"]
    dev = st.get("device")
    if dev:
        held = "; ".join(dev.get("holders") or []) or "not open"
        lines.append(f"  device:{dev['path']} kernel:{dev['kernel']} ({dev['kind']}) {held}")
    if st.get("standalone", True) or not st.get("peer"):
        return "\n".join(lines)
    if st["connection"] != "Connected":
        lines.append(f"  {st['peer']} connection:{st['connection']}")
        if st.get("tls_error"):
            lines.append(f"    tls-error:{st['tls_error']}")
        return "\n".join(lines)
    tls = st.get("tls")
    lines.append(f"  {st['peer']} role:{st['peer_role']}" + (" tls:" + "/".join(tls.split()[:2]) if tls else ""))
    words = []
    if st["replication"] != "Established":
        words.append(f"replication:{st['replication']}")
    words.append(f"peer-disk:{st['peer_disk_state']}")
    rs = st.get("resync") or st.get("verify")
    if rs is not None:
        words.append(f"done:{rs['percent']:.2f}")
    if verbose:
        stats = st.get("stats") or {}
        words += [f"received:{_size_kib(stats.get('resync_bytes_received', 0))}",
                  f"sent:{_size_kib(stats.get('peer_bytes_sent', 0))}",
                  f"out-of-sync:{_size_kib(st.get('out_of_sync_bytes', 0))}",
                  f"pending:{stats.get('peer_pending', 0)}"]
        if rs is not None:
            words.append(f"dbdt1:{rs['rate_bps'] / (1 << 20):.2f}")
            if rs["eta_s"] is not None:
                words.append(f"eta:{rs['eta_s']:.0f}")
    lines.append("    " + " ".join(words))
    return "\n".join(lines)


def render_status(st: dict, args: argparse.Namespace) -> str:
    text = format_status(st, verbose=args.verbose)
    if args.statistics:
        from replica.status_view import add_statistics
        text = add_statistics(text, st)
    return text


def cmd_status(ctl: Ctl, name: str) -> int:
    names = ctl.resource_names(name or "all")
    if ctl.args.watch:
        from replica.status_view import watch_status
        return watch_status(ctl, name, names, render_status)
    by_name = {st["name"]: st for st in ctl.status_of(None)}
    up = [by_name[n] for n in names if by_name.get(n, {}).get("up")]
    if ctl.args.json:
        print(json.dumps(up, indent=2))
        return 0
    rc = 0
    for n in names:
        if n in {st["name"] for st in up}:
            print(render_status(by_name[n], ctl.args))
            print()
        else:
            print(f"{n}: No such resource", file=sys.stderr)
            rc = EXIT_NO_RESOURCE  # drbdsetup's exit code for an unknown/unconfigured resource
    return rc


def _field(ctl: Ctl, name: str, render: Callable[[dict], str]) -> int:
    rc = 0
    for res in ctl.resource_names(name):
        sts = [st for st in ctl.status_of(res) if st.get("up")]
        if not sts:
            print(f"{res}: No such resource", file=sys.stderr)
            rc = EXIT_NO_RESOURCE
            continue
        print(render(sts[0]))
    return rc


def render_role(st: dict) -> str:
    return f"{st['role']}/{st.get('peer_role', 'Unknown')}"


def render_cstate(st: dict) -> str:
    return st.get("cstate", st["connection"])


def render_dstate(st: dict) -> str:
    return f"{st['disk_state']}/{st.get('peer_disk_state', 'DUnknown')}"


def cmd_role(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, render_role)


def cmd_cstate(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, render_cstate)


def cmd_dstate(ctl: Ctl, name: str) -> int:
    return _field(ctl, name, render_dstate)


def cmd_nbd_uri(ctl: Ctl, name: str) -> int:
    for res in ctl.resource_names(name):
        resource = ctl.config.resource(res)
        host = resource.host(ctl.where.node)
        if host.export is not None:
            print(host.export.nbd_uri(res, tls=host.export_tls.enabled))
        else:
            scheme = "nbds" if host.export_tls.enabled else "nbd"
            print(f"{scheme}+unix:///{res}?socket={ctl.where.default_export_path(res)}")
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


def cmd_events(ctl: Ctl, name: str | None) -> int:
    from replica.status_view import print_events
    return print_events(ctl, name)


def cmd_dump(ctl: Ctl, name: str) -> int:
    """drbdadm dump; --running: the resources as replicad runs them now (drbdsetup show),
    net-options and disk-options included."""
    from replica.config_dump import dump_config
    if ctl.args.running:
        rc = 0
        for res in ctl.resource_names(name or "all"):
            reply = ctl.call("show", resource=res) if ctl.daemon_running else {"up": False}
            if not reply.get("up"):
                print(f"{res}: No such resource (not up)", file=sys.stderr)
                rc = EXIT_NO_RESOURCE
                continue
            print(reply["text"], end="")
        return rc
    print_config_warnings(ctl)
    print(dump_config(ctl.config), end="")
    return 0


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
        if not ctl.daemon_running:
            for res in ctl.resource_names(name):
                print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
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
    if not ctl.daemon_running:
        for res in ctl.resource_names(name):
            print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
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
    from replica.startup import sync_verdict, wait_verdict, wfc_timeout_s
    if not ctl.daemon_running:
        for res in ctl.resource_names(name):
            print(f"{res}: No such resource (replicad is not running)", file=sys.stderr)
        return EXIT_NO_RESOURCE
    rc = 0
    for res in ctl.resource_names(name):
        startup = ctl.config.resource(res).startup
        first = (ctl.status_of(res) or [{}])[0]
        option = first.get("wfc_option", "wfc-timeout")
        timeout = wfc_timeout_s(startup, option)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            st = (ctl.status_of(res) or [{}])[0]
            verdict = wait_verdict(st, wait_after_sb=startup.get("wait-after-sb", "no") != "no")
            if verdict.done and verdict.ok:
                verdict = sync_verdict(st)
            if verdict.done:
                if not verdict.ok:
                    print(f"{res}: wait-sync: {verdict.why}", file=sys.stderr)
                    rc = rc or EXIT_ERROR
                break
            if deadline is not None and time.monotonic() >= deadline:
                print(f"{res}: wait-sync: not in sync after {timeout} s ({option}; now "
                      f"{st.get('cstate', st.get('connection', 'unknown'))} "
                      f"{st.get('disk_state', '?')}/{st.get('peer_disk_state', '?')})",
                      file=sys.stderr)
                rc = EXIT_TIMEOUT
                break
            time.sleep(0.2)
    return rc


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
