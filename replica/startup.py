# SPDX-License-Identifier: GPL-2.0-or-later
"""What DRBD's init script does at boot, as decisions: how long `wait-connect` waits, when it
gives up early, and which resources `startup` promotes (`startup {}` in drbd.conf).

    replicactl startup RES|all  =  up  ->  wait-connect  ->  primary where become-primary-on
                                       (drbd.service / the 8.4 init script's start)

Which timeout applies is DRBD 8.4's choice at attach, from the metadata flags:

    connected when last shut down (MDF_CONNECTED_IND)  -> wfc-timeout           (default 0: forever)
    degraded, and the peer known Outdated              -> outdated-wfc-timeout  (default 0: forever)
    degraded otherwise                                 -> degr-wfc-timeout      (default 60 s)

`wait-connect` ends when the resource is Connected. A resource that went StandAlone will not
connect by itself: after a split brain it stops at once unless `wait-after-sb` is set (then it
waits on, for an administrator to resolve it, until the timeout); for any other reason it stops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replica.roles import AttachInfo

DEFAULTS_S = {"wfc-timeout": 0, "degr-wfc-timeout": 60, "outdated-wfc-timeout": 0}


def wfc_option(info: AttachInfo) -> str:
    if info.was_connected:
        return "wfc-timeout"
    return "outdated-wfc-timeout" if info.peer_outdated else "degr-wfc-timeout"


def wfc_timeout_s(startup: dict[str, str], option: str) -> int:
    """The timeout `option` gives, in seconds (0: wait forever), from the resource's startup{}
    options (raw strings as the config keeps them) or DRBD's default."""
    raw = startup.get(option)
    if raw is None:
        return DEFAULTS_S[option]
    return int(str(raw).split()[0])


@dataclass(frozen=True)
class Verdict:
    done: bool
    ok: bool = False
    why: str = ""


def wait_verdict(st: dict[str, Any], wait_after_sb: bool) -> Verdict:
    """Whether `wait-connect` is done with one resource, from its `status --json` entry."""
    if not st.get("up"):
        return Verdict(True, False, "not up (run `replicactl up` first)")
    if st.get("standalone"):
        return Verdict(True, True, "standalone resource: no peer to wait for")
    if st.get("connection") == "Connected":
        return Verdict(True, True)
    if st.get("connection") == "StandAlone":
        why = st.get("link_error") or "no peer link"
        split_brain = "split-brain" in why.lower().replace(" ", "-")
        if split_brain and wait_after_sb:
            return Verdict(False)
        return Verdict(True, False, f"StandAlone ({why}): it will not connect by itself" +
                       ("; set `wait-after-sb` to wait for it to be resolved" if split_brain else ""))
    return Verdict(False)


def becomes_primary(startup: dict[str, str], node: str) -> bool:
    """`become-primary-on NODE|both`: whether `startup` promotes this resource on `node`."""
    who = startup.get("become-primary-on")
    return who is not None and str(who) in (node, "both")


def sync_verdict(st: dict[str, Any]) -> Verdict:
    """Whether `wait-sync` is done with a Connected resource: when no resync (or verify) runs
    any more, replication back to Established (drbdsetup's w_synced_state: connection state
    Connected again, whatever the disks)."""
    if st.get("standalone"):
        return Verdict(True, True)
    if st.get("replication") == "Established" and "resync" not in st and "verify" not in st:
        return Verdict(True, True)
    return Verdict(False)
