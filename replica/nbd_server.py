# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD server driver: listen, accept, run the sans-I/O handshake, hand the socket to C.

    accept ──► handshake thread (Python: replica.protocol.nbd, bounded by a timeout)
                 └─ EnterTransmission ──► engine.serve_nbd(fd)  (C, GIL released, until the client leaves)

One thread per connection: the C loop blocks in recv/send without the GIL, so Python threads
cost nothing per request. A misbehaving client only ever ends its own connection.
"""
import logging
import os
import socket
import threading

from replica.errors import RemoteProtocolError
from replica.mirror import Engine
from replica.protocol.nbd import (NEED_DATA, ClientAborted, ClientDisconnected, EnterTransmission,
                                  ExportInfo, NbdServerConnection, OptionRefused)

HANDSHAKE_TIMEOUT_S = 30.0
RECV_CHUNK = 65536
SOCKET_BUFFER = 4 * 1024 * 1024

log = logging.getLogger("replicad.nbd")


def open_listener(endpoint) -> socket.socket:
    """Bind the export endpoint (config.Endpoint: unix path or TCP host:port)."""
    if endpoint.kind == "unix":
        path = endpoint.path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket from a previous run
            else:
                raise OSError(f"nbd: export socket {path} is already served by another process")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.host, endpoint.port))
    sock.listen(64)
    return sock


class ExportServer:
    """Serves one resource's export on one endpoint until stop()."""

    def __init__(self, name: str, endpoint, engine: Engine, export: ExportInfo):
        self.name = name
        self.endpoint = endpoint
        self.engine = engine
        self.export = export
        self.listener = open_listener(endpoint)
        self._stopping = False
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"nbd-accept[{name}]",
                                               daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, end every connection, and wait for their threads."""
        self._stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.engine.shutdown()
        self._accept_thread.join(timeout=5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        if self.endpoint.kind == "unix":
            try:
                os.unlink(self.endpoint.path)
            except FileNotFoundError:
                pass

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, addr = self.listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            peer = addr if addr else "unix"
            thread = threading.Thread(target=self._serve_client, args=(client, peer),
                                      name=f"nbd[{self.name}]", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve_client(self, client: socket.socket, peer) -> None:
        try:
            initial = self._handshake(client, peer)
            if initial is None:
                return
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Room for a few 1 MiB replies in the socket, so the C loop is not woken per 200 KiB.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            client.settimeout(None)
            result = self.engine.serve_nbd(client.fileno(), initial)
            detail = f": {os.strerror(result.errno)}" if result.errno else ""
            level = logging.INFO if result.clean else logging.WARNING
            log.log(level, "nbd: %s: client %s: %s%s", self.name, peer, result.reason, detail)
        except (OSError, RemoteProtocolError) as exc:
            log.warning("nbd: %s: client %s: %s", self.name, peer, exc)
        finally:
            client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handshake(self, client: socket.socket, peer) -> bytes | None:
        """Run the option haggling; return bytes read past its end, or None if the client left."""
        client.settimeout(HANDSHAKE_TIMEOUT_S)
        conn = NbdServerConnection({self.export.name: self.export}, default_export=self.export.name)
        while True:
            event = conn.next_event()
            # Replies queued while producing this event go out before we wait or hand over.
            out = conn.data_to_send()
            if out:
                client.sendall(out)
            if event is NEED_DATA:
                conn.receive_data(client.recv(RECV_CHUNK))
            elif isinstance(event, EnterTransmission):
                log.info("nbd: %s: client %s: connected", self.name, peer)
                return conn.trailing_data
            elif isinstance(event, OptionRefused):
                log.debug("nbd: %s: client %s: option refused: %s", self.name, peer, event.reason)
            elif isinstance(event, (ClientAborted, ClientDisconnected)):
                return None
