# SPDX-License-Identifier: GPL-2.0-or-later
"""This host's addresses, as the kernel sees them: the only module of replica importing pyroute2.

`is_local_address(ip)` answers what bind() will: an IP is local when the `local` routing table
(255) of the current network namespace has a `local` route covering it. That table holds one
route per address configured on an interface (`ip addr`), and 127.0.0.0/8 on lo, which is why
127.0.0.2 is local although no interface lists it. Asked per command, never cached: addresses
come and go (hbd moves service IPs, an administrator adds one and retries `up`).
"""
import ipaddress
import socket

RT_TABLE_LOCAL = 255
RTN_LOCAL = 2


def is_local_address(ip: str) -> bool:
    """Is `ip` one of this network namespace's own addresses (bind() would not fail with
    EADDRNOTAVAIL)? A wildcard (0.0.0.0, ::) is always local."""
    from pyroute2 import IPRoute  # here only: the config and CLI work without netlink
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=family, table=RT_TABLE_LOCAL):
            dst = route.get_attr("RTA_DST")
            if route["type"] == RTN_LOCAL and dst is not None and \
                    addr in ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False):
                return True
    return False
