# SPDX-License-Identifier: GPL-2.0-or-later
"""What `replicactl status --statistics` adds, and `replicactl status --watch`: a live view.

--statistics follows `drbdadm status --statistics` (DRBD 9): a counters line under the disk
line and one under the peer-device line, sizes in KiB::

    r0 role:Primary
      disk:UpToDate
          size:1048508 read:1024 written:40960 al-writes:3 bm-writes:2 upper-pending:0 lower-pending:0
      beta role:Secondary
        peer-disk:UpToDate
            received:0 sent:40960 out-of-sync:0 pending:0 unacked:0 ack-p50:180us ack-p99:2.1ms

`ack-p50`/`ack-p99` are ours: quantiles of the peer ack latency histogram C keeps
(replica.ack_latency).

--watch subscribes to replicad's event stream (replica.events, with statistics, so a resync
reports about once a second) and redraws a rich Live table on each event: role, disk,
connection, replication, peer, and a progress bar with rate and ETA while a resync or verify
runs. Nothing polls: between events the view sleeps in recv(). Ctrl-C leaves it (exit 0);
when stdout is not a terminal each change prints a plain `status` snapshot instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hacommon.control import NotListening, open_stream
from hacommon.live_view import watch
from replica.ack_latency import format_duration, quantile_s
from replica.control import ControlError


def _kib(n: Any) -> str:
    return str(int(n or 0) // 1024)


def device_statistics(st: dict) -> str:
    stats = st.get("stats") or {}
    return " ".join([f"size:{_kib(st.get('size'))}", f"read:{_kib(stats.get('bytes_read'))}",
                     f"written:{_kib(stats.get('bytes_written'))}",
                     f"al-writes:{int(st.get('al_writes') or 0)}",
                     f"bm-writes:{int(st.get('bm_writes') or 0)}",
                     f"upper-pending:{int(stats.get('upper_pending', 0))}",
                     f"lower-pending:{int(stats.get('lower_pending', 0))}"])


def peer_statistics(st: dict) -> str:
    stats = st.get("stats") or {}
    words = [f"received:{_kib(stats.get('peer_bytes_received'))}",
             f"sent:{_kib(stats.get('peer_bytes_sent'))}",
             f"out-of-sync:{_kib(st.get('out_of_sync_bytes'))}",
             f"pending:{int(stats.get('peer_pending', 0))}",
             f"unacked:{int(stats.get('peer_unacked', 0))}"]
    buckets = stats.get("peer_ack_us_log2")
    if buckets:
        words += [f"ack-p50:{format_duration(quantile_s(buckets, 0.5))}",
                  f"ack-p99:{format_duration(quantile_s(buckets, 0.99))}"]
    return " ".join(words)


def add_statistics(text: str, st: dict) -> str:
    """Insert the counters lines into format_status's text: after the disk line, and after
    the peer-device line (the last one) when the peer is connected."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i == 1 and line.startswith("  disk:"):
            out.append("      " + device_statistics(st))
    if not st.get("standalone", True) and st.get("peer") and st.get("connection") == "Connected":
        out.append("        " + peer_statistics(st))
    return "\n".join(out)


# --- the live view --------------------------------------------------------------------------

def _progress(st: dict) -> tuple[str, dict] | None:
    if st.get("resync"):
        return ("resync", st["resync"])
    if st.get("verify") and "percent" in st["verify"]:
        return ("verify", st["verify"])
    return None


def _rate(bps: Any) -> str:
    return f"{float(bps or 0) / (1 << 20):.1f} MiB/s"


def _eta(eta_s: Any) -> str:
    if eta_s is None:
        return "ETA -"
    s = int(eta_s)
    return f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def render(statuses: Iterable[dict], title: str) -> Any:
    """One rich renderable for every resource that is up: a table and a bar per resync."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for col in ("resource", "role", "disk", "peer", "connection", "replication", "peer role",
                "peer disk", "out of sync"):
        table.add_column(col)
    bars = []
    for st in statuses:
        connected = st.get("connection") == "Connected"
        table.add_row(st["name"], st["role"], st["disk_state"], st.get("peer") or "-",
                      st.get("cstate", st["connection"]),
                      st["replication"] if connected else "-",
                      st["peer_role"] if connected else "-",
                      st["peer_disk_state"] if connected else "-",
                      f"{int(st.get('out_of_sync_bytes') or 0) // 1024} KiB")
        prog = _progress(st)
        if prog is not None:
            what, p = prog
            line = Table.grid(padding=(0, 1))
            line.add_row(Text(f"{st['name']} {what}"),
                         ProgressBar(total=100.0, completed=float(p["percent"]), width=40),
                         Text(f"{float(p['percent']):5.1f}% {_rate(p.get('rate_bps'))} "
                              f"{_eta(p.get('eta_s'))}"))
            bars.append(line)
    return Group(table, *bars)


# --- the commands (replica.cli's table names them) ----------------------------------------

def print_events(ctl: Any, name: str | None) -> int:
    """drbdsetup events2: the state as `exists` lines, `exists -`, then every change as it
    happens (replica.events), streamed by replicad over the control socket; --now stops after
    `exists -`. The stream ends when replicad exits."""
    if name and name != "all":
        ctl.resource_names(name)
    req = {"cmd": "events", "resource": name, "now": bool(ctl.args.now),
           "statistics": bool(ctl.args.statistics), "timestamps": bool(ctl.args.timestamps),
           "config": ctl.where.config, "node": ctl.where.node}
    try:
        for msg in open_stream(ctl.where.control_socket, req, timeout_s=ctl.cmd_timeout("status")):
            if "event" in msg:
                print(msg["event"], flush=True)
            elif not msg.get("ok"):
                raise ControlError(str(msg.get("error") or "replicad refused the command"))
    except NotListening:
        # nothing runs: nothing exists (drbdsetup events2 --now on a node without resources)
        if ctl.args.now:
            print("exists -")
            return 0
        raise ControlError(f"replicad is not running (no answer on {ctl.where.control_socket})") from None
    except KeyboardInterrupt:
        return 130
    return 0


def watch_status(ctl: Any, name: str | None, names: list[str],
                 render_status: Callable[[dict, Any], str]) -> int:
    """status --watch: redrawn on each event of replicad's stream (replica.status_view)."""
    req = {"cmd": "events", "resource": name if name and name != "all" else None,
           "statistics": True, "config": ctl.where.config, "node": ctl.where.node}

    def changes():
        for msg in open_stream(ctl.where.control_socket, req, timeout_s=ctl.cmd_timeout("status")):
            if not msg.get("ok", True):
                raise ControlError(str(msg.get("error")))
            line = msg.get("event", "")
            if line and not line.startswith("exists ") or line == "exists -":
                yield line

    def snapshot() -> list[dict]:
        by_name = {st["name"]: st for st in ctl.status_of(None)}
        return [by_name[n] for n in names if by_name.get(n, {}).get("up")]

    def plain() -> str:
        return "\n\n".join(render_status(st, ctl.args) for st in snapshot()) or "no resource is up"
    if not ctl.daemon_running:
        raise ControlError(f"replicad is not running (no answer on {ctl.where.control_socket})")
    title = f"replica-ha on {ctl.where.node}"
    return watch(changes(), lambda: render(snapshot(), title), plain)
