#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Two C engines joined by a real TCP peer link on loopback, the Primary served over NBD.

Used by `make bench` to measure the replicated data path on its own (no handshake, no
daemon): `mirror_pair.py PRIMARY_FILE SECONDARY_FILE SOCKET PROTOCOL` serves until stdin closes.
The Secondary runs in a child process, as it would on the other node.
"""
import os
import socket
import sys

from replica.mirror import Engine
from replica.nbd_server import ExportServer
from replica.protocol.nbd import ExportInfo, transmission_flags_for


class UnixEndpoint:
    kind = "unix"
    host = port = None

    def __init__(self, path):
        self.path = path


def open_engine(path: str, read_only: bool) -> tuple[Engine, int]:
    fd = os.open(path, os.O_RDWR)
    return Engine(fd, os.fstat(fd).st_size, read_only=read_only), fd


def main() -> int:
    primary_file, secondary_file, sock_path, protocol = sys.argv[1:5]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # the Secondary
        listener.close()
        engine, _ = open_engine(secondary_file, read_only=True)
        link = socket.create_connection(("127.0.0.1", port))
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine.peer_attach(link.fileno(), protocol)
        sys.stdin.read()
        os._exit(0)
    link, _ = listener.accept()
    link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    engine, _ = open_engine(primary_file, read_only=False)
    engine.peer_attach(link.fileno(), protocol)
    flags = transmission_flags_for(read_only=False, can_multi_conn=True)
    server = ExportServer("r0", UnixEndpoint(sock_path), engine, ExportInfo("r0", engine.size, flags))
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()
    engine.peer_detach()
    os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
