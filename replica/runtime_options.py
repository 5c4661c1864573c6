# SPDX-License-Identifier: GPL-2.0-or-later
"""A running resource's options, changed live: net-options, disk-options, handlers, adjust.

Owns `RuntimeOptions` (one per ResourceRuntime): it replaces the runtime's frozen `resource`
with one carrying the new options and hands the new values to the parts that copied theirs at
start (the PeerLink's net section, fencing's policy, C's on-io-error, a running resync's
controller, the monitor's ping deadlines); everything else reads `rt.resource` when it acts.
Which options need a new link (replica.adjust.RECONNECT_NET) is adjust's table: they are
refused here while a link exists. Called under the runtime's `lock`.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from replica.adjust import RECONNECT_NET, changed_keywords, settings_of
from replica.config import DISK_KEYWORDS, NET_KEYWORDS, Config, DiskOptions, NetOptions, Resource
from replica.config_dump import dump_config
from replica.disk import engine_io_error_mode
from replica.errors import ReplicaError

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")


def _option_text(section: str, keyword: str, options: object) -> str:
    fname, parser = (NET_KEYWORDS if section == "net" else DISK_KEYWORDS)[keyword]
    value = getattr(options, fname)
    return "unset" if value is None else parser.format(value)


class RuntimeOptions:
    def __init__(self, rt: ResourceRuntime):
        self.rt = rt

    def adopt_link_config(self, config: Resource) -> None:
        """A new link takes `config`'s net section and addresses (connect, up)."""
        rt = self.rt
        peer = config.peer(rt.host.name)
        mine = config.host(rt.host.name)
        if peer is not None and rt.peer_host is not None and peer.name == rt.peer_host.name:
            moved = {n: replace(rt.resource.hosts[n], address=h.address,
                                address_family=h.address_family, address_line=h.address_line)
                     for n, h in ((mine.name, mine), (peer.name, peer))}
            if (moved[mine.name].address, moved[peer.name].address) != (
                    rt.host.address, rt.peer_host.address):
                log.info("%s: addresses: %s %s -> %s %s", rt.name, rt.host.address_text,
                         rt.peer_host.address_text, moved[mine.name].address_text,
                         moved[peer.name].address_text)
            rt.resource = replace(rt.resource, hosts={**rt.resource.hosts, **moved})
            rt.host, rt.peer_host = moved[mine.name], moved[peer.name]
        self.set(net=config.net, why="connect")

    def set(self, net: NetOptions | None = None, disk: DiskOptions | None = None,
            handlers: dict[str, str] | None = None, why: str = "") -> list[str]:
        """Change options live (net-options, disk-options, adjust): the new values reach the
        parts that copied them (PeerLink, fencing, C's on-io-error, a running resync); the rest
        read `resource` when they act. Net options the peer checks in the handshake or C takes
        at attach (adjust.RECONNECT_NET) are refused while a link exists. Returns the changes
        as `keyword old -> new`."""
        rt = self.rt
        old = rt.resource
        new = replace(old, net=net or old.net, disk=disk or old.disk,
                      handlers=old.handlers if handlers is None else dict(handlers))
        net_changed = changed_keywords("net", old.net, new.net)
        disk_changed = changed_keywords("disk", old.disk, new.disk)
        stuck = [k for k in net_changed if k in RECONNECT_NET]
        if stuck and rt.conn.link is not None:
            raise ReplicaError(f"{rt.name}: net-options: {', '.join(stuck)}: cannot change "
                               "while a peer link exists (disconnect first; adjust does both)")
        changes = [f"{kw} {_option_text('net', kw, old.net)} -> {_option_text('net', kw, new.net)}"
                   for kw in net_changed]
        changes += [f"{kw} {_option_text('disk', kw, old.disk)} -> "
                    f"{_option_text('disk', kw, new.disk)}" for kw in disk_changed]
        changes += [f"handler {h}" for h in sorted(set(old.handlers) | set(new.handlers))
                    if old.handlers.get(h) != new.handlers.get(h)]
        if not changes:
            return []
        rt.resource = new
        rt.disk.resource = new
        rt.fencing.policy = new.disk.fencing
        if rt.conn.link is not None:
            rt.conn.link.net = new.net
        if rt.disk.engine is not None and "on-io-error" in disk_changed:
            rt.disk.engine.set_on_io_error(engine_io_error_mode(new.disk.on_io_error))
        rt.set_state(replace(rt.state, allow_two_primaries=new.net.allow_two_primaries,
                               fencing=new.disk.fencing != "dont-care"), why)
        rt.sync.apply_settings()
        rt.monitor.wake()                  # ping-int, ping-timeout, ko-count deadlines
        log.info("%s: options changed%s: %s", rt.name, f" ({why})" if why else "",
                 ", ".join(changes))
        return changes

    def show(self) -> dict[str, Any]:
        """The running resource for adjust and `dump --running` (drbdsetup show): its
        settings as replica.adjust compares them, and as drbd.conf text."""
        rt = self.rt
        text = dump_config(Config(path=f"running on {rt.host.name}",
                                  resources={rt.name: rt.resource}))
        return {"up": rt.is_up, "attached": rt.disk.has_md, "link": rt.has_link,
                "standalone": rt.resource.standalone,
                "settings": settings_of(rt.resource, rt.host.name), "text": text}
