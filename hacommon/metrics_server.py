# SPDX-License-Identifier: GPL-2.0-or-later
"""The Prometheus endpoint shared by replicad and hbd: `--metrics ADDR:PORT` parsing and a server
thread that sleeps until a scrape arrives.

prometheus_client's own start_http_server() runs `serve_forever()`, which polls every 0.5 s;
issue 10 removed every idle wake-up from the daemons, so this server blocks in select() on the
listening socket and a wake-up pipe, with no timeout, and serves one request at a time (a
scrape is small; a client that stalls is cut off after REQUEST_TIMEOUT_S). Metrics are
collected at scrape time by the daemon's own Collector, never by a periodic thread.

A port still held (typically by the previous daemon, still releasing its resources after a
restart) is retried every BIND_RETRY_INTERVAL_S for up to BIND_RETRY_S, then refused with an
error naming the address; any other bind error is refused at once.

    MetricsServer(parse_listen_address("127.0.0.1:9942"), registry).start() ... .close()
"""
from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from hacommon.errors import ConfigError

REQUEST_TIMEOUT_S = 10.0
# A restart (systemctl restart, or stop then start) may begin while the old daemon still holds
# the port: hbd releases its resource groups before it exits, which takes as long as their
# stop scripts. 10 s covers a group stop here (~0.1 s) with a wide margin, and is still short
# enough that a real clash (another program on the port) is reported promptly.
BIND_RETRY_S = 10.0
BIND_RETRY_INTERVAL_S = 0.2


def parse_listen_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `:PORT` (all addresses) -> (host, port).

    The address must be a literal IP (a name could resolve to an address of another namespace).
    Raises ConfigError naming the text and what is wrong."""
    where = f"metrics address {text!r}"
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{where}: expected ADDR:PORT, [ADDR]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(f"{where}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise ConfigError(f"{where}: an IPv6 address goes in brackets: [ADDR]:PORT")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: port {port_text!r} is not a number in 1..65535")
    if host == "":
        host = "::"
    else:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IP address") from None
    return host, int(port_text)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (a scrape every 15 s would flood the daemon's log)."""
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(WSGIServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, *, family: int) -> None:
        self.address_family = family
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # ":PORT" means every address, IPv4 included
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class MetricsServer:
    """`GET /metrics` (any path) answers the registry's exposition; start() binds (errors raise
    OSError with the address), the thread then waits for scrapes until close()."""

    def __init__(self, address: tuple[str, int], registry: Any, *, name: str,
                 bind_retry_s: float | None = None) -> None:
        host, port = address
        if bind_retry_s is None:
            bind_retry_s = BIND_RETRY_S
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.name = name
        give_up_at = time.monotonic() + bind_retry_s
        while True:
            try:
                self._httpd = make_server(host, port, make_wsgi_app(registry), server_class=_factory(family),
                                          handler_class=_QuietHandler)
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() < give_up_at:
                    time.sleep(BIND_RETRY_INTERVAL_S)
                    continue
                detail = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    detail += (f" (still in use after {bind_retry_s:g} s: another process listens "
                               f"there; if it is an old {name} still stopping, wait for it, else "
                               f"choose another --metrics address)")
                raise OSError(exc.errno, f"{name}: metrics: cannot listen on {_show(host, port)}: "
                                         f"{detail}") from None
        self.address = self._httpd.server_address[:2]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"{name}-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._httpd.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}     # no timeout: no idle wake-up
                if self._wake_r in ready:
                    return
                self._httpd._handle_request_noblock()

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        self._httpd.server_close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def url(self) -> str:
        host, port = self.address
        return f"http://{_show(host, port)}/metrics"


def _factory(family: int) -> Any:
    def build(address: tuple[str, int], handler: type) -> _Server:
        return _Server(address, handler, family=family)
    return build


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
