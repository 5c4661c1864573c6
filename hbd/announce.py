# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's address takeover in the daemon: IPaddr/IPaddr2 in-process, and gratuitous ARP.

The IPaddr and IPaddr2 resources of haresources run inside hbd (hbd.ipaddr,
through the runner's ``inprocess`` table) so the failover path pays no
interpreter start-up; their gratuitous ARP frames, and the re-announce after a
partition heal (GroupManager's ``Reannounce``: the peer just dropped its copy
of the address), go out from a daemon thread so heartbeat sending never waits
on them.  The counts come from ha.cf's ``gratuitous_arp_count`` and
``gratuitous_arp_interval``, read at each use (``garp``: a reload changes them).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hacommon.errors import HaError
from hbd import ipaddr
from hbd.haresources import ResourceGroup
from hbd.resources import InProcessScript

log = logging.getLogger("hbd")

IPADDR_PROGRAMS = ("IPaddr", "IPaddr2")

Garp = Callable[[], tuple[int, int]]     # -> (gratuitous_arp_count, gratuitous_arp_interval_ms)


def ipaddr_handlers(garp: Garp) -> dict[str, InProcessScript]:
    """The runner's in-process IPaddr and IPaddr2 (hbd.resources.ResourceRunner ``inprocess``)."""
    return {prog: _ipaddr_handler(prog, garp) for prog in IPADDR_PROGRAMS}


def _ipaddr_handler(prog: str, garp: Garp) -> InProcessScript:
    def handler(args: tuple[str, ...], action: str) -> tuple[int, str]:
        if len(args) != 1:
            return 2, f"{prog}: expected one argument ip[/nbits[/dev[:label]][/bcast]], got {len(args)}"
        count, interval_ms = garp()
        return ipaddr.perform(args[0], action, prog=prog, garp_count=count, garp_interval_ms=interval_ms,
                              start_garp=start_garp)
    return handler


def start_garp(ifname: str, address: str, count: int, interval_ms: int) -> None:
    """Send the frames from a daemon thread (hbd.ipaddr.perform's ``start_garp``)."""
    def send() -> None:
        try:
            n = ipaddr.send_gratuitous_arp(ifname, address, count, interval_ms)
            log.debug("gratuitous arp: %s on %s: %d frames sent", address, ifname, n)
        except (HaError, OSError) as e:
            log.warning("gratuitous arp: %s on %s: %s", address, ifname, e)
    threading.Thread(target=send, name=f"garp-{address}", daemon=True).start()


def reannounce(group: ResourceGroup, garp: Garp) -> None:
    """Gratuitous ARP again for the group's addresses (where they are configured now)."""
    def send() -> None:
        for res in group.resources:
            if res.name not in IPADDR_PROGRAMS or len(res.args) != 1:
                continue
            try:
                addr = ipaddr.parse_ip_spec(res.args[0]).address
                for ifname, a, _plen in ipaddr.interface_addresses():
                    if a == addr:
                        log.info("gratuitous arp: re-announcing %s on %s", addr, ifname)
                        count, interval_ms = garp()
                        ipaddr.send_gratuitous_arp(ifname, addr, count, interval_ms)
            except (HaError, OSError) as e:
                log.warning("gratuitous arp: re-announce %s: %s", res, e)
    threading.Thread(target=send, name=f"reannounce-{group.name}", daemon=True).start()
