# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's heartbeat media: the UDP sockets of ha.cf's bcast, ucast and mcast lines.

Owns socket set-up (one socket per device, bound to ``udpport`` and the device,
IPTOS_LOWDELAY as heartbeat), multicast membership, and fan-out: every datagram
membership produces goes out on every medium.  Receiving is hbd.media_link's (it
adds each socket to the daemon's loop).  Send errors are logged at most every 30 s per
target so a dead link does not flood the log.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time

from hacommon.errors import ConfigError
from hbd import ipaddr
from hbd.config import HaConfig

log = logging.getLogger("hbd")


class Media:
    """UDP sockets for bcast / ucast (udpport) and mcast lines; send() goes out on all of them."""

    def __init__(self, cfg: HaConfig) -> None:
        self.cfg = cfg
        self.socks: list[socket.socket] = []
        self.targets: list[tuple[socket.socket, tuple[str, int]]] = []
        self._errors_logged: dict[str, float] = {}

    def open(self) -> None:
        try:
            self._open()
        except OSError as e:
            self.close()
            raise ConfigError(f"{self.cfg.path}: cannot open heartbeat media on udpport {self.cfg.udpport}: "
                              f"{e.strerror or e}") from e

    def _open(self) -> None:
        by_dev: dict[str, socket.socket] = {}
        local = {a for _n, a, _p in ipaddr.interface_addresses()}

        def dev_socket(dev: str) -> socket.socket:
            if dev not in by_dev:
                if not os.path.exists(f"/sys/class/net/{dev}"):
                    raise ConfigError(f"{self.cfg.path}: heartbeat medium on {dev!r}: no such interface")
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode() + b"\0")
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)  # IPTOS_LOWDELAY, as heartbeat
                s.bind(("", self.cfg.udpport))
                s.setblocking(False)
                by_dev[dev] = s
                self.socks.append(s)
            return by_dev[dev]

        for dev in self.cfg.bcast:
            self.targets.append((dev_socket(dev), ("255.255.255.255", self.cfg.udpport)))
        for u in self.cfg.ucast:
            if u.addr in local:
                continue          # heartbeat ignores ucast lines naming this host
            self.targets.append((dev_socket(u.dev), (u.addr, self.cfg.udpport)))
        for m in self.cfg.mcast:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, m.dev.encode() + b"\0")
            s.bind((m.group, m.port))
            mreqn = struct.pack("4s4si", socket.inet_aton(m.group), socket.inet_aton("0.0.0.0"),
                                ipaddr.interface_index(m.dev))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, m.ttl)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, m.loop)
            s.setblocking(False)
            self.socks.append(s)
            self.targets.append((s, (m.group, m.port)))
        if not self.targets:
            raise ConfigError(f"{self.cfg.path}: no usable heartbeat medium (serial is not supported; "
                              f"ucast lines name only this host)")

    def send(self, datagram: bytes) -> None:
        for s, target in self.targets:
            try:
                s.sendto(datagram, target)
            except OSError as e:
                key = f"{target[0]}:{e.errno}"
                now = time.monotonic()
                if now - self._errors_logged.get(key, -1e9) > 30:
                    self._errors_logged[key] = now
                    log.warning("media: send to %s:%d failed: %s", target[0], target[1], e.strerror)

    def close(self) -> None:
        for s in self.socks:
            s.close()
