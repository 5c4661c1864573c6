# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's heartbeat media on the event loop: receive, send, and swap them on a reload.

hbd.media opens the UDP sockets of ha.cf's bcast, ucast and mcast lines and
fans each datagram out on all of them; this module serves those sockets on
the daemon's asyncio loop.  ``MediaLink`` owns which ``Media`` is current:

    attach(loop)    add a reader for every socket (the daemon, once its loop runs)
    readable socket -> recvfrom, up to 64 datagrams -> receive(data, addr, now)
                    -> received()   (the daemon pumps membership and groups once)
    send(datagram)  on every medium (hbd.media.Media.send: errors rate-limited there)
    swap(media)     a reload's new media, already opened: readers for them first,
                    then the old sockets leave the loop and close, so no heartbeat
                    is missed in between
    close()         the sockets leave the loop and close (daemon stop)

A receive error is logged at debug level and ends that burst: a datagram
socket has nothing to repair, and the next readable event tries again.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from hbd.media import Media

log = logging.getLogger("hbd")

RECV_BURST = 64         # datagrams read per readable event before the loop runs others
RECV_SIZE = 65536


class MediaLink:
    """The current heartbeat media on one asyncio loop (see the module docstring)."""

    def __init__(self, media: Media, receive: Callable[[bytes, Any, float], None],
                 received: Callable[[], None]) -> None:
        self.media = media
        self._receive = receive
        self._received = received
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for s in self.media.socks:
            loop.add_reader(s.fileno(), self._on_readable, s)

    def send(self, datagram: bytes) -> None:
        self.media.send(datagram)

    def swap(self, media: Media) -> None:
        """Serve the new (opened) media, then close the old ones."""
        loop = self._loop or asyncio.get_running_loop()
        old, self.media = self.media, media
        for s in media.socks:
            loop.add_reader(s.fileno(), self._on_readable, s)
        for s in old.socks:
            loop.remove_reader(s.fileno())
        old.close()

    def close(self) -> None:
        if self._loop is not None:
            for s in self.media.socks:
                self._loop.remove_reader(s.fileno())
        self.media.close()

    def _on_readable(self, s: socket.socket) -> None:
        for _ in range(RECV_BURST):
            try:
                data, addr = s.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.debug("media: receive failed: %s", e.strerror)
                break
            self._receive(data, addr, time.monotonic())
        self._received()
