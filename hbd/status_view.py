# SPDX-License-Identifier: GPL-2.0-or-later
"""`hbctl status --watch`: hbd's state as a rich view, redrawn on each journal record.

hbd journals every transition (nodes up/dead/late, groups started/stopped/failed, what the
peer holds, STONITH, standby/takeover requests: hbd.journal); its `watch` command streams each
record as it is written (hbd.control), and on each hbctl asks `status` again and redraws::

    Nodes        node  status  generation  last heard
    Resource groups   group  preferred  state here  runs on
    packets: received / accepted / sent / dropped...      (heartbeat traffic, this node)
    recent events (the journal's last lines)

hacommon.live_view does the drawing loop (no timer; Ctrl-C leaves; plain text without a tty).
"""
from __future__ import annotations

from typing import Any

from hbd.journal import format_record


def runs_on(group: dict, grp: dict, node: str) -> str:
    """Where a group runs as this node sees it: here while started, the peer while it holds
    it (what its hbd announced), else nowhere."""
    if group["state"] == "started":
        return node
    if group["key"] in (grp.get("peer_hold") or []):
        return str(grp.get("peer") or "peer")
    return "-"


def render(st: dict) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    mem, grp = st["membership"], st["groups"]
    nodes = Table(title=f"heartbeat on {mem['node']} (pid {st['pid']})", title_justify="left")
    for col in ("node", "status", "generation", "last heard"):
        nodes.add_column(col)
    nodes.add_row(f"{mem['node']} (this node)", mem["status"], str(mem["generation"]), "-")
    for name, p in sorted(mem["peers"].items()):
        heard = "-" if p.get("silent_s") is None else f"{p['silent_s']:.1f} s ago"
        nodes.add_row(name, p["status"], str(p.get("generation") or "-"), heard)
    groups = Table(title=f"resource groups: {grp['rscstatus']} here (auto_failback "
                   f"{grp['auto_failback']})", title_justify="left")
    for col in ("group", "preferred", "state here", "runs on"):
        groups.add_column(col)
    for g in grp["groups"]:
        groups.add_row(g["key"], g["node"], g["state"], runs_on(g, grp, mem["node"]))
    c = mem["counters"]
    dropped = " ".join(f"{k[8:]}={v}" for k, v in c.items() if k.startswith("dropped_") and v)
    lines = [f"packets: received {c.get('received', 0)} accepted {c.get('accepted', 0)} "
             f"sent {c.get('sent', 0)}" + (f" dropped {dropped}" if dropped else "")]
    if grp.get("standby"):
        lines.append(f"standby in progress: {grp['standby']}")
    if grp.get("fencing"):
        lines.append(f"fencing in progress: {grp['fencing']}")
    lines += ["recent events:"] + ["  " + format_record(r) for r in (st.get("journal") or [])[-8:]]
    return Group(nodes, groups, Text("\n".join(lines)))
