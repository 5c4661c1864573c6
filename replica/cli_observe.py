# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl's observation commands: status (drbdadm's layout, --json, --statistics,
--watch), role/cstate/dstate, nbd-uri, events, dump, dump-md. They read; none changes state.
"""
import argparse
import json
import sys
from collections.abc import Callable

from replica.cli_ctl import EXIT_NO_RESOURCE, Ctl, print_config_warnings


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
