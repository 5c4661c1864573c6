# SPDX-License-Identifier: GPL-2.0-or-later
"""`replicactl status`'s facts about one resource: the dict the control socket returns.

Built by reading the runtime and its parts (state, disk, connection, sync, device, resizer);
nothing here changes state. replica.cli_observe and replica.status_view render it; the key
names are the control protocol (`status --json` prints them as they are).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from replica.states import Role

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime


def status_of(rt: ResourceRuntime) -> dict[str, Any]:
    """Roles, states, sizes, counters and progress of `rt` (ResourceRuntime.status)."""
    s = rt.state
    engine = rt.disk.engine
    out: dict[str, Any] = {
        "name": rt.name,
        "node": rt.host.name,
        "up": rt.is_up,
        "standalone": rt.resource.standalone,
        "role": rt.role,
        "peer_role": str(s.peer_role),
        "disk": rt.host.disk,
        "disk_state": str(s.disk) if rt.is_up else "Diskless",
        "peer_disk_state": str(s.peer_disk),
        "connection": "StandAlone" if rt.resource.standalone else str(s.conn),
        "replication": str(s.repl),
        "cstate": s.cstate_text() if not rt.resource.standalone else "StandAlone",
        "peer": rt.peer_host.name if rt.peer_host else None,
        "protocol": rt.resource.net.protocol,
        "size": rt.disk.size,
        "read_only": rt.is_up and not rt.resource.standalone
        and s.role is not Role.Primary,
        "nbd_uri": rt.frontend.uri,
        "device": rt.device.status() if rt.device is not None else None,
        "device_path": rt.device.path if rt.device is not None else None,
        "stats": engine.stats() if engine else None,
        "last_resync": rt.sync.last_resync,
        "last_verify": rt.sync.verify.last_verify,
        "wfc_option": rt.wfc_option,
        "link_error": rt.conn.last_error,
        "io_suspended": rt.fencing.suspended,
        "al_writes": rt.disk.al_writes,
        "bm_writes": rt.disk.bm_writes,
        "tls": rt.conn.tls_text or None,
        "tls_error": rt.conn.tls_error or None,
    }
    resize = rt.resizer.status()
    if resize is not None:
        out["resize"] = resize
    if rt.disk.has_md:
        out["uuids"] = rt.disk.uuids.text()
        out["out_of_sync_bytes"] = rt.disk.out_of_sync_bytes()
    resync = rt.sync.status(time.monotonic())
    if resync is not None:
        out["resync"] = resync
    verify = rt.sync.verify.status(time.monotonic())
    if verify is not None:
        out["verify"] = verify
    return out
