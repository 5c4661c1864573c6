# SPDX-License-Identifier: GPL-2.0-or-later
"""IP takeover: virtual addresses via pyroute2 netlink, plus gratuitous ARP.

The ONLY module of hbd that imports pyroute2.  Owns:

* ``parse_ip_spec`` - Heartbeat's IPaddr/IPaddr2 argument ``ip[/nbits[/dev[:label]][/bcast]]``
  (a third part that is an IPv4 address is the broadcast, as IPaddr reads it);
* ``add_address(ifname|None, cidr, broadcast=None)`` - idempotent: an address
  already on the interface is never added twice; without a device the
  interface whose configured subnet contains the address is chosen (IPaddr's
  "we key off of it"), and without a prefix length that subnet's length is used;
* ``remove_address``, ``has_address``;
* ``send_gratuitous_arp`` - ARP *request* and ARP *reply* forms, ``count`` of
  each, ``interval_ms`` apart, over a raw AF_PACKET socket (some switches honour
  only one form, heartbeat-reference.md section 6 item 4);
* a small CLI used by scripts/resource.d/IPaddr and IPaddr2::

      python -m hbd.ipaddr SPEC start|stop|status|monitor
      python -m hbd.ipaddr garp IFNAME IP COUNT INTERVAL_MS

  ``start`` adds the address and forks the ARP sender into the background (the
  takeover is not delayed by count x interval); the sender stops early once the
  address is gone.  Exit codes are LSB (status: 0 running, 3 stopped).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError

from hacommon.errors import ConfigError, HaError

ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6


class IpAddrError(HaError):
    """Adding/removing an address failed (message: `ipaddr: <what>: <details>`)."""


@dataclass(frozen=True, slots=True)
class IpSpec:
    address: str
    prefixlen: int | None = None
    dev: str | None = None
    label: str | None = None
    broadcast: str | None = None


def parse_ip_spec(spec: str) -> IpSpec:
    """IPaddr/IPaddr2 argument -> IpSpec; ConfigError on anything else."""
    parts = spec.split("/")
    bad = f"ipaddr: bad address spec {spec!r}: expected ip[/nbits[/dev[:label]][/bcast]]"
    if len(parts) > 4 or any(p == "" for p in parts[1:]):
        raise ConfigError(bad)
    try:
        address = str(ipaddress.IPv4Address(parts[0]))
    except ValueError:
        raise ConfigError(f"{bad}: {parts[0]!r} is not an IPv4 address") from None
    prefixlen = dev = label = broadcast = None
    if len(parts) > 1:
        if not parts[1].isdigit() or int(parts[1]) > 32:
            raise ConfigError(f"{bad}: prefix length {parts[1]!r} is not 0..32")
        prefixlen = int(parts[1])
    rest = parts[2:]
    if rest and _is_ipv4(rest[-1]):
        broadcast = rest.pop()
    if len(rest) > 1:
        raise ConfigError(f"{bad}: {rest[-1]!r} is not a broadcast address")
    if rest:
        dev, _, label = rest[0].partition(":")
        if not dev or len(dev) > 15 or "/" in dev:
            raise ConfigError(f"{bad}: {rest[0]!r} is not an interface name")
        label = rest[0] if label else None
    return IpSpec(address, prefixlen, dev, label, broadcast)


def _is_ipv4(word: str) -> bool:
    try:
        ipaddress.IPv4Address(word)
        return True
    except ValueError:
        return False


def _split_cidr(cidr: str) -> tuple[str, int | None]:
    addr, _, plen = cidr.partition("/")
    return str(ipaddress.IPv4Address(addr)), (int(plen) if plen else None)


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise IpAddrError(f"ipaddr: no such interface: {ifname!r}")
    return found[0]


def _ipv4_addrs(ipr: IPRoute):
    """(ifname, index, address, prefixlen) of every IPv4 address."""
    names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
    for a in ipr.get_addr(family=socket.AF_INET):
        yield names.get(a["index"]), a["index"], a.get("IFA_ADDRESS") or a.get("IFA_LOCAL"), a["prefixlen"]


def find_interface(address: str) -> tuple[str, int]:
    """The interface (and its prefix length) whose configured subnet contains `address`."""
    ip = ipaddress.IPv4Address(address)
    best = None
    with IPRoute() as ipr:
        for ifname, _idx, addr, plen in _ipv4_addrs(ipr):
            if addr is None or plen == 32 or ifname == "lo":
                continue
            net = ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
            if ip in net and (best is None or plen > best[1]):
                best = (ifname, plen)
    if best is None:
        raise IpAddrError(f"ipaddr: no interface for {address}: no configured subnet contains it; "
                          f"give the device explicitly (ip/nbits/dev)")
    return best


def interface_addresses(ifname: str | None = None) -> list[tuple[str, str, int]]:
    """(ifname, address, prefixlen) of every IPv4 address (of one interface when given)."""
    with IPRoute() as ipr:
        return [(n, a, p) for n, _i, a, p in _ipv4_addrs(ipr) if a and (ifname is None or n == ifname)]


def interface_index(ifname: str) -> int:
    with IPRoute() as ipr:
        return _index(ipr, ifname)


def has_address(ifname: str | None, cidr: str) -> bool:
    """Is the address (prefix ignored) configured on `ifname` (any interface when None)?"""
    addr, _ = _split_cidr(cidr)
    with IPRoute() as ipr:
        for name, _idx, a, _plen in _ipv4_addrs(ipr):
            if a == addr and (ifname is None or name == ifname):
                return True
    return False


def add_address(ifname: str | None, cidr: str, broadcast: str | None = None,
                label: str | None = None) -> tuple[str, bool]:
    """Add the address; returns (ifname, added).  added=False when it was already there."""
    addr, plen = _split_cidr(cidr)
    if ifname is None:
        ifname, found_plen = find_interface(addr)
        plen = found_plen if plen is None else plen
    elif plen is None:
        try:
            found, found_plen = find_interface(addr)
            plen = found_plen if found == ifname else 32
        except IpAddrError:
            plen = 32
    if broadcast is None and plen < 31:
        broadcast = str(ipaddress.IPv4Network(f"{addr}/{plen}", strict=False).broadcast_address)
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        for name, _i, a, _p in _ipv4_addrs(ipr):
            if a == addr and name == ifname:
                return ifname, False
        kwargs = {"index": idx, "address": addr, "prefixlen": plen}
        if broadcast:
            kwargs["broadcast"] = broadcast
        if label:
            kwargs["label"] = label
        try:
            ipr.addr("add", **kwargs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return ifname, False
            raise IpAddrError(f"ipaddr: add {addr}/{plen} on {ifname}: {os.strerror(e.code)}") from e
    return ifname, True


def remove_address(ifname: str | None, cidr: str) -> bool:
    """Remove the address from `ifname` (or wherever it is); returns whether it was there."""
    addr, _ = _split_cidr(cidr)
    removed = False
    with IPRoute() as ipr:
        for name, idx, a, plen in list(_ipv4_addrs(ipr)):
            if a != addr or (ifname is not None and name != ifname):
                continue
            try:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)
                removed = True
            except NetlinkError as e:
                if e.code != errno.EADDRNOTAVAIL:
                    raise IpAddrError(f"ipaddr: delete {addr}/{plen} from {name}: {os.strerror(e.code)}") from e
    return removed


def interface_mac(ifname: str) -> bytes:
    with IPRoute() as ipr:
        link = ipr.get_links(_index(ipr, ifname))[0]
        mac = link.get("IFLA_ADDRESS")
    if not mac:
        raise IpAddrError(f"ipaddr: interface {ifname!r} has no hardware address")
    return bytes.fromhex(mac.replace(":", ""))


def build_garp(mac: bytes, address: str, op: int) -> bytes:
    """Ethernet frame of a gratuitous ARP (RFC 5227 s3 / RFC 826): sender = target = address."""
    ip = socket.inet_aton(address)
    target_mac = b"\x00" * 6 if op == ARPOP_REQUEST else BROADCAST_MAC
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip, target_mac, ip)
    return eth + arp


def send_gratuitous_arp(ifname: str, address: str, count: int = 10, interval_ms: int = 250,
                        stop_when_gone: bool = True) -> int:
    """Send `count` rounds of (request, reply) gratuitous ARP; returns frames sent."""
    mac = interface_mac(ifname)
    frames = [build_garp(mac, address, ARPOP_REQUEST), build_garp(mac, address, ARPOP_REPLY)]
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        for i in range(count):
            if i and stop_when_gone and not has_address(ifname, address):
                break
            for frame in frames:
                s.send(frame)
                sent += 1
            if i + 1 < count:
                time.sleep(interval_ms / 1000.0)
    return sent


def spawn_garp_sender(ifname: str, address: str, count: int, interval_ms: int) -> int:
    """Fork `python -m hbd.ipaddr garp ...` detached; returns its pid."""
    proc = subprocess.Popen([sys.executable, "-m", "hbd.ipaddr", "garp", ifname, address, str(count),
                             str(interval_ms)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return proc.pid


# --- resource-script CLI -------------------------------------------------------------------

def perform(spec_text: str, action: str, *, garp_count: int = 10, garp_interval_ms: int = 250,
            prog: str = "IPaddr", start_garp=None) -> tuple[int, str]:
    """One IPaddr/IPaddr2 action -> (LSB exit code, output line).

    `start_garp(ifname, address, count, interval_ms)` sends the ARPs in the background
    (default: a detached `python -m hbd.ipaddr garp` process).
    """
    try:
        spec = parse_ip_spec(spec_text)
    except ConfigError as e:
        return (0 if action == "stop" else 6), f"{prog}: {e}"
    cidr = spec.address if spec.prefixlen is None else f"{spec.address}/{spec.prefixlen}"
    try:
        if action == "start":
            ifname, added = add_address(spec.dev, cidr, spec.broadcast, spec.label)
            if garp_count > 0:
                (start_garp or spawn_garp_sender)(ifname, spec.address, garp_count, garp_interval_ms)
            return 0, f"{prog}: {spec.address} {'added to' if added else 'already on'} {ifname}"
        if action == "stop":
            removed = remove_address(spec.dev, spec.address)
            return 0, f"{prog}: {spec.address} {'removed' if removed else 'was not configured'}"
        if action in ("status", "monitor"):
            if has_address(spec.dev, spec.address):
                return 0, "running"
            return (3 if action == "status" else 7), "stopped"
    except (IpAddrError, OSError) as e:
        return 1, f"{prog}: {action}: {e}"
    return 3, f"{prog}: unknown action {action!r}: expected start, stop, status or monitor"


def _script(argv: list[str]) -> int:
    prog = os.environ.get("HBD_SCRIPT_NAME", "IPaddr")
    if len(argv) != 2:
        print(f"usage: {prog} ip[/nbits[/dev[:label]][/bcast]] start|stop|status|monitor", file=sys.stderr)
        return 2
    rc, text = perform(argv[0], argv[1], prog=prog,
                       garp_count=int(os.environ.get("HBD_GARP_COUNT", "10")),
                       garp_interval_ms=int(os.environ.get("HBD_GARP_INTERVAL_MS", "250")))
    print(text, file=sys.stdout if rc in (0, 3, 7) else sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "garp":
        if len(argv) != 5:
            print("usage: python -m hbd.ipaddr garp IFNAME IP COUNT INTERVAL_MS", file=sys.stderr)
            return 2
        try:
            send_gratuitous_arp(argv[1], argv[2], int(argv[3]), int(argv[4]))
        except (IpAddrError, OSError, ValueError) as e:
            print(f"ipaddr: gratuitous arp: {argv[1]} {argv[2]}: {e}", file=sys.stderr)
            return 1
        return 0
    return _script(argv)


if __name__ == "__main__":
    sys.exit(main())
