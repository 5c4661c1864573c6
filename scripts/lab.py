# SPDX-License-Identifier: GPL-2.0-or-later
"""The network-namespace lab: nodes of one machine as namespaces, joined by veth pairs and bridges.

Every multi-node test, lab and demo builds its network here: the replica pair
(tests/integration/netns.py), the hbd lab (scripts/hbd_lab.py), the real-heartbeat tests
(tests/real_heartbeat_ns.py) and the shell demos (scripts/lib/demo_lan.sh calls the command line
below). The lab owns three things and undoes all three in close(), even after a failure halfway
through setup:

- namespaces, all named PREFIX-NAME (PREFIX unique per lab), each with `lo` up; deleting them
  removes every veth, bridge and address inside, so those need no bookkeeping of their own;
- the processes it started (`popen`), killed by PID;
- every other process still inside its namespaces: something we ran there left it behind (a
  daemon that forked, a gratuitous-ARP sender); namespaces are ours, so their processes are too.

Two topologies are built in:

    veth_pair:     PFX-a [ifa addr_a] <--veth--> [ifb addr_b] PFX-b
    switched_lan:  PFX-h1 [eth0 addr] --veth--+
                   PFX-h2 [eth0 addr] --veth--+-- br0 in PFX-sw (ports p0, p1, ...)

Command line, for the shell demos (same topology, cleanup by namespace name):

    python -m scripts.lab up PFX ha1=10.0.17.1/24 ha2=10.0.17.2/24 cli=10.0.17.100/24
    python -m scripts.lab down PFX     # kill every process in PFX-*, delete the namespaces

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests using it carry the `root` marker.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from scripts.waiting import WaitTimeout, wait_for


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGV`; on failure raise with ip's own message."""
    res = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise RuntimeError(f"lab: ip {' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes inside network namespace `ns` (none if it does not exist)."""
    out = ip("netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def kill_namespace_processes(ns: str, timeout_s: float = 5.0) -> None:
    """SIGKILL every process in `ns` (only for namespaces we made) and wait until none is left."""
    def gone() -> bool:
        pids = namespace_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids
    try:
        wait_for(gone, f"the processes of namespace {ns} to exit", timeout_s)
    except WaitTimeout as e:
        print(f"lab: {e}: {namespace_pids(ns)}", file=sys.stderr)


class NetLab:
    """Namespaces PREFIX-NAME, the links between them, and the processes run inside them."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.namespaces: list[str] = []          # full names, in creation order
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    # --- building --------------------------------------------------------------------------

    def add_namespace(self, name: str) -> str:
        ns = self.ns(name)
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def add_veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair created directly inside the two namespaces (full names)."""
        ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)

    def add_bridge(self, ns: str, name: str = "br0") -> None:
        ip("-n", ns, "link", "add", name, "type", "bridge")
        ip("-n", ns, "link", "set", name, "up")

    def add_address(self, ns: str, ifname: str, cidr: str, broadcast: bool = False) -> None:
        """Address `cidr` on `ifname`; broadcast=True also sets the subnet's broadcast address
        (heartbeat's bcast needs x.y.z.255)."""
        ip("-n", ns, "addr", "add", cidr, *(("brd", "+") if broadcast else ()), "dev", ifname)

    def set_link(self, ns: str, ifname: str, up: bool) -> None:
        ip("-n", ns, "link", "set", ifname, "up" if up else "down")

    def veth_pair(self, a: str, b: str, addr_a: str, addr_b: str, if_a: str = "eth0",
                  if_b: str = "eth0", broadcast: bool = False) -> tuple[str, str]:
        """Namespaces a and b joined by one veth pair; returns their full names."""
        ns_a, ns_b = self.add_namespace(a), self.add_namespace(b)
        self.add_veth(ns_a, if_a, ns_b, if_b)
        for ns, ifname, cidr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            self.add_address(ns, ifname, cidr, broadcast)
            self.set_link(ns, ifname, True)
        return ns_a, ns_b

    def switched_lan(self, hosts: dict[str, str], switch: str = "sw") -> None:
        """One namespace per host (eth0 with the given CIDR), all plugged into bridge br0 in
        namespace `switch`, in the order given (ports p0, p1, ...)."""
        sw = self.add_namespace(switch)
        self.add_bridge(sw)
        for i, (name, cidr) in enumerate(hosts.items()):
            ns = self.add_namespace(name)
            self.add_veth(sw, f"p{i}", ns, "eth0")
            ip("-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            self.add_address(ns, "eth0", cidr)
            self.set_link(ns, "eth0", True)

    # --- running -------------------------------------------------------------------------------

    def run(self, ns: str, *argv: str, check: bool = False,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside `ns` (full name), output captured."""
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside `ns`; close() kills it by PID. `ip netns exec` execs the
        command, so the Popen's pid is the command's own."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.procs.append(p)
        return p

    # --- cleanup --------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what we started, then whatever is left in our namespaces, then delete them.
        Idempotent; every step runs even if an earlier one failed."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired) as e:
                    print(f"lab: pid {p.pid}: {e}", file=sys.stderr)
        self.procs = []
        for ns in self.namespaces:
            kill_namespace_processes(ns)
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces = []


def remove_by_prefix(prefix: str) -> list[str]:
    """For a lab built by another process (the shell demos): every namespace named PREFIX-*,
    its processes killed and the namespace deleted. Returns the names removed."""
    names = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    ours = [n for n in names if n.startswith(prefix + "-")]
    for ns in ours:
        kill_namespace_processes(ns)
        ip("netns", "del", ns, check=False)
    return ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a switched LAN: PFX-sw with a bridge, one namespace per host")
    up.add_argument("prefix")
    up.add_argument("hosts", nargs="+", metavar="NAME=CIDR")
    down = sub.add_parser("down", help="kill every process in PFX-* and delete those namespaces")
    down.add_argument("prefix")
    args = parser.parse_args(argv)
    if args.cmd == "down":
        remove_by_prefix(args.prefix)
        return 0
    hosts = dict(h.split("=", 1) for h in args.hosts)
    lab = NetLab(args.prefix)
    try:
        lab.switched_lan(hosts)
    except BaseException:
        lab.close()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
